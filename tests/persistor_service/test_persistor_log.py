"""The persistor in-process against the real RabbitMQ and PostgreSQL: the log itself."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from persistor_service.plan import LogState, plan_batch
from persistor_service.store import LogStore
from rca_common.broker import REASON_HEADER
from rca_common.db import barrier_channel
from rca_common.settings import Settings
from tests.conftest import wait_for
from tests.persistor_service.conftest import DSN, Stream, barrier, rec, recs, rows, sample

pytestmark = pytest.mark.integration


async def test_records_land_in_order_and_are_acked_after_commit(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    persistor = await start_persistor()
    sent = recs(1, 1200)
    await stream.publish(*(sent[i : i + 100] for i in range(0, len(sent), 100)))
    await persistor.wait_until(lambda: persistor.state.last_seq == 1200, timeout=30)

    got = await rows(db)
    assert [r["seq"] for r in got] == list(range(1, 1201))
    for row, record in zip(got, sent, strict=True):
        assert row["epoch"] == 1
        assert row["event_id"] == record.event["event_id"]
        assert orjson.loads(row["record"]) == {"event": record.event, "changes": record.changes}
    processed_at = await db.fetchval("SELECT processed_at FROM events WHERE seq = 7")
    assert processed_at == pytest.approx(sent[6].processed_at)

    await persistor.stop()  # anything unacked would now be ready again
    assert await stream.ready(settings.persistor_queue) == 0
    assert sample(persistor, "records_written") == 1200


async def test_nothing_is_acked_while_the_transaction_cannot_commit(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    persistor = await start_persistor(shutdown_timeout=0.5)
    blocker = await asyncpg.connect(DSN)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f'LOCK TABLE "{settings.db_schema}".events IN ACCESS EXCLUSIVE MODE')
        await stream.publish(recs(1, 10), recs(11, 20))
        await wait_for(lambda: persistor.busy, timeout=30, what="a batch in flight")
        await persistor.stop()  # the write is blocked: cancelled after the bound, not acked
        await tx.rollback()
    finally:
        await blocker.close()
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert await stream.ready(settings.persistor_queue) == 2

    again = await start_persistor()
    await again.wait_until(lambda: again.state.last_seq == 20, timeout=30)
    assert [r["seq"] for r in await rows(db)] == list(range(1, 21))


async def test_sigterm_lets_the_batch_in_flight_commit_and_ack(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    persistor = await start_persistor(shutdown_timeout=30)
    blocker = await asyncpg.connect(DSN)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f'LOCK TABLE "{settings.db_schema}".events IN ACCESS EXCLUSIVE MODE')
        await stream.publish(recs(1, 10))
        await wait_for(lambda: persistor.busy, timeout=30, what="a batch in flight")
        stopping = asyncio.create_task(persistor.stop())
        await wait_for(lambda: persistor.finishing_inflight, what="stage two of the stop")
        await tx.rollback()  # the database answers again: the shielded batch commits
        await asyncio.wait_for(stopping, 30)
    finally:
        await blocker.close()
    assert [r["seq"] for r in await rows(db)] == list(range(1, 11))
    assert await stream.ready(settings.persistor_queue) == 0


async def test_idempotent_on_seq_and_newer_epoch_wins(
    start_persistor, stream: Stream, db: asyncpg.Connection
) -> None:
    persistor = await start_persistor()
    await stream.publish(recs(1, 5), recs(1, 5))  # a redelivery: same records twice
    await stream.publish([rec(3, epoch=2, event_id="newer")])  # a fresh-start leader reusing 3
    await persistor.wait_until(lambda: persistor.state.last_epoch == 2, timeout=30)

    got = {r["seq"]: r for r in await rows(db)}
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert (got[3]["epoch"], got[3]["event_id"]) == (2, "newer")
    assert got[4]["epoch"] == 1
    assert sample(persistor, "redeliveries") == 5
    assert sample(persistor, "gaps") == 1  # 3 after 5: a restart, reported


async def test_older_epoch_never_overwrites_a_newer_row(db: asyncpg.Connection, settings) -> None:
    store = LogStore(DSN, settings.db_schema)
    try:
        await store.write(plan_batch(LogState(), [rec(1, epoch=3, event_id="new")]))
        # Below the fence the upsert itself must refuse: plan from an unfenced state.
        await store.write(plan_batch(LogState(), [rec(1, epoch=2, event_id="old")]))
        await store.write(plan_batch(LogState(), [rec(1, epoch=3, event_id="same-epoch")]))
    finally:
        await store.close()
    row = (await rows(db))[0]
    assert (row["epoch"], row["event_id"]) == (3, "new")


async def test_barrier_is_committed_and_announced(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    listener = await asyncpg.connect(DSN)
    notes: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(
        barrier_channel(settings.db_schema), lambda *args: notes.put_nowait(args[3])
    )
    try:
        persistor = await start_persistor()
        await stream.publish(recs(1, 7), [rec(8), barrier(2, seq=99)])
        note = orjson.loads(await asyncio.wait_for(notes.get(), 30))
    finally:
        await listener.close()
    assert note == {"epoch": 2, "max_seq": 8}
    row = await db.fetchrow("SELECT epoch, max_seq FROM barriers")
    assert dict(row) == {"epoch": 2, "max_seq": 8}
    # NOTIFY arrives at COMMIT, possibly before the persistor adopts its new state.
    await persistor.wait_until(lambda: persistor.state.current_epoch == 2, timeout=30)
    assert sample(persistor, "barriers") == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 8


async def test_zombie_records_after_a_barrier_are_fenced_and_requeued(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    persistor = await start_persistor()
    await stream.publish(
        recs(1, 3),
        [barrier(2)],
        [rec(4, epoch=1), rec(5, epoch=1)],  # the frozen old leader wakes up
        [rec(4, epoch=2)],
    )
    await persistor.wait_until(lambda: persistor.state.last_epoch == 2, timeout=30)

    got = [(r["seq"], r["epoch"]) for r in await rows(db)]
    assert got == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert persistor.zombies_fenced == 2
    assert sample(persistor, "zombies") == 2
    events_queue = await stream.channel.declare_queue(settings.events_queue, passive=True)
    message = await events_queue.get(timeout=5, fail=True)
    assert message is not None
    await message.ack()
    assert [e["event_id"] for e in orjson.loads(message.body)] == ["ev-1-4", "ev-1-5"]
    assert message.delivery_mode == 2


async def test_redelivered_records_before_the_barrier_are_not_zombies(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    """After a crash between commit and ack, the pre-barrier records come again."""
    persistor = await start_persistor()
    await stream.publish(recs(1, 3), [barrier(2)])
    await persistor.wait_until(lambda: persistor.state.current_epoch == 2, timeout=30)
    await stream.publish(recs(1, 3), [rec(4, epoch=2)])
    await persistor.wait_until(lambda: persistor.state.last_seq == 4, timeout=30)
    assert persistor.zombies_fenced == 0
    assert sample(persistor, "redeliveries") == 3
    assert await stream.ready(settings.events_queue) == 0


async def test_fence_survives_a_restart(
    start_persistor, stream: Stream, db: asyncpg.Connection
) -> None:
    first = await start_persistor()
    await stream.publish(recs(1, 3), [barrier(5)])
    await first.wait_until(lambda: first.state.current_epoch == 5, timeout=30)
    await first.stop()
    second = await start_persistor()
    assert second.state.current_epoch == 5
    await stream.publish([rec(4, epoch=4)], [rec(4, epoch=5)])
    await second.wait_until(lambda: second.state.last_epoch == 5, timeout=30)
    assert second.zombies_fenced == 1
    assert [(r["seq"], r["epoch"]) for r in await rows(db)][-1] == (4, 5)


async def test_malformed_messages_are_dead_lettered_and_the_log_goes_on(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    persistor = await start_persistor()
    await stream.publish(recs(1, 2))
    await stream.publish_raw(b"this is not json")
    await stream.publish_raw(orjson.dumps([{"kind": "event", "seq": "x", "epoch": 1}]))
    await stream.publish(recs(3, 4))
    await persistor.wait_until(lambda: persistor.state.last_seq == 4, timeout=30)

    dlq = await stream.channel.declare_queue(settings.dead_letter_queue, passive=True)
    reasons = []
    for _ in range(2):
        message = await dlq.get(timeout=5, fail=True)
        assert message is not None
        reasons.append(str(message.headers[REASON_HEADER]))
        await message.ack()
    assert reasons[0].startswith("not JSON")
    assert "seq must be an integer" in reasons[1]
    assert [r["seq"] for r in await rows(db)] == [1, 2, 3, 4]
    assert sample(persistor, "dead_lettered") == 2
    await persistor.stop()
    assert await stream.ready(settings.persistor_queue) == 0
