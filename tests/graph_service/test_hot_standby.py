"""The hot standby's replica against a real PostgreSQL log (no broker): seeded from a
snapshot, kept current by the persistor's commit notices, dropped when the log's
history changes under it, and judged at takeover."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from graph_service import hot_standby, snapshots
from graph_service.evaluation import Evaluation
from graph_service.hot_standby import HotStandby, StandbyConfig
from graph_service.processor import Processor
from graph_service.recovery import RecoveryReport, record_fresh_start
from graph_service.snapshot_codec import encode
from graph_service.snapshots import SnapshotStore
from graph_service.takeover import Takeover
from rca_common import db
from rca_common.settings import Settings
from tests.conftest import wait_for
from tests.graph_service.snapshot_helpers import build_processor, event

pytestmark = pytest.mark.integration

Row = tuple[int, int, float, str, bytes]


@pytest.fixture
async def pool(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    schema = await conn.fetchval("SELECT current_schema()")
    p = await db.create_pool(Settings().database_url, schema, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def standby(conn: asyncpg.Connection, pool: asyncpg.Pool) -> AsyncIterator[HotStandby]:
    config = StandbyConfig(
        dsn=Settings().database_url,
        schema=await conn.fetchval("SELECT current_schema()"),
        hmac_key=None,
        max_snapshot_age_s=600,
        poll_interval=30,  # longer than any test: only the commit notices wake it
        retry_interval=0.05,
        min_time_to_delete=600,
        recent_capacity=10_000,  # as build_processor's
    )
    hot = HotStandby(pool, config)
    try:
        yield hot
    finally:
        await hot.close()


class Leader:
    """Plays an active and its persistor: processes events and writes their records."""

    def __init__(self, conn: asyncpg.Connection, processor: Processor, seq: int = 0) -> None:
        self.conn = conn
        self.processor = processor
        self.seq = seq
        self.n = 0

    async def epoch(self) -> int:
        return int(
            await self.conn.fetchval(
                "INSERT INTO leader_epochs (holder) VALUES ('test') RETURNING epoch"
            )
        )

    async def snapshot(self, epoch: int) -> int:
        enc = encode({"processor": self.processor.export_state()}, None)
        return await SnapshotStore(self.conn).insert(enc, epoch, self.seq)

    def rows(self, n: int, epoch: int) -> list[Row]:
        out = []
        for _ in range(n):
            self.n += 1
            i = self.n
            e = event(
                "nova.instance", f"vm-{i % 25}", 50_000 + i, host=f"host-{i % 3}", state="ACTIVE"
            )
            outcome = self.processor.process(e)
            self.seq += 1
            body = orjson.dumps({"event": e.to_wire(), "changes": outcome.changes})
            out.append((self.seq, epoch, 0.0, e.event_id, body))
        return out

    async def commit(self, rows: list[Row], notify: bool = True) -> None:
        """What the persistor does with a batch: write it, announce it at commit."""
        schema = await self.conn.fetchval("SELECT current_schema()")
        async with self.conn.transaction():
            await self.conn.copy_records_to_table(
                "events",
                records=rows,
                columns=["seq", "epoch", "processed_at", "event_id", "record"],
            )
            if notify:
                await self.conn.execute(
                    "SELECT pg_notify($1, $2)", db.log_channel(schema), str(rows[-1][0])
                )


def same_graph(a: Processor, b: Processor) -> bool:
    return a.export_state() == b.export_state()


async def started_leader(conn: asyncpg.Connection) -> tuple[Leader, int]:
    leader = Leader(conn, build_processor(instances=20))
    epoch = await leader.epoch()
    await record_fresh_start(conn, epoch, 0)  # the first leader always starts fresh
    await leader.commit(leader.rows(30, epoch))
    await leader.snapshot(epoch)
    return leader, epoch


async def following(conn: asyncpg.Connection, standby: HotStandby) -> tuple[Leader, int]:
    """A leader with a snapshot at seq 30, and the standby's replica seeded from it."""
    leader, epoch = await started_leader(conn)
    standby.start()
    await wait_for(lambda: standby.state == "following", what="the replica seeded")
    return leader, epoch


async def stopped_at_40(conn: asyncpg.Connection, standby: HotStandby) -> tuple[Leader, int]:
    """A replica that followed the log to seq 40 and was stopped, as a takeover stops it."""
    leader, epoch = await started_leader(conn)
    standby.start()
    await leader.commit(leader.rows(10, epoch))
    await wait_for(lambda: standby.last_seq == 40, what="the replica at seq 40")
    await standby.close()
    return leader, epoch


async def test_seeds_from_the_snapshot_and_follows_each_commit(
    conn: asyncpg.Connection, standby: HotStandby
) -> None:
    leader, epoch = await following(conn, standby)
    assert standby.seed_seq == 30 and standby.seed_epoch == epoch
    for target in (70, 110, 150):
        await leader.commit(leader.rows(40, epoch))
        assert leader.seq == target
        await wait_for(lambda t=target: standby.last_seq == t, what=f"the replica at seq {target}")
    assert standby.applied == 120 and standby.last_epoch == epoch
    assert standby.log_seq == 150 and standby.lag() == 0  # from the commit notices
    schema = await conn.fetchval("SELECT current_schema()")
    await conn.execute("SELECT pg_notify($1, '175')", db.log_channel(schema))  # ahead of us
    await wait_for(lambda: standby.status()["lag_records"] == 25, what="a lag of 25 records")
    assert standby.processor is not None and same_graph(standby.processor, leader.processor)
    # No evaluator was ever enabled: every record since the snapshot is dirty.
    assert standby.dirty and standby.status()["dirty_vertices"] == len(standby.dirty)
    await conn.execute("UPDATE leader_epochs SET evaluators_enabled_seq = $1", leader.seq)
    await leader.commit(leader.rows(1, epoch))
    target = leader.seq
    await wait_for(lambda: standby.last_seq == target, what="one more record")
    assert standby.dirty == {}  # covered by the enabling pass the leader recorded


async def test_takeover_judges_the_replica(conn: asyncpg.Connection, standby: HotStandby) -> None:
    leader, epoch = await stopped_at_40(conn, standby)
    assert standby.state == "stopped"
    me = await leader.epoch()
    assert await standby.usable(conn, me, 40) is None
    assert await standby.usable(conn, me, 39) == "replica at seq 40, past the log's end 39"
    # The row the replica applied last is another epoch's in the log now: not usable.
    await conn.execute("UPDATE events SET epoch = $1 WHERE seq = 40", me)
    assert "seq 40 is epoch" in (await standby.usable(conn, me, 40) or "")
    await conn.execute("UPDATE events SET epoch = $1 WHERE seq = 40", epoch)
    # A leader between the replica's snapshot and us started fresh: not usable.
    fresh = me
    await record_fresh_start(conn, fresh, 40)
    later = await leader.epoch()
    assert await standby.usable(conn, later, 40) == (
        f"epoch {fresh} started fresh after the replica's snapshot"
    )
    processor = standby.hand_over()
    assert same_graph(processor, leader.processor) and standby.state == "handed over"


async def test_a_fresh_start_after_the_seed_drops_the_replica(
    conn: asyncpg.Connection, standby: HotStandby
) -> None:
    leader, _ = await following(conn, standby)
    # A new leader starts fresh (its barrier timed out, say) and logs from seq 30 on.
    fresh = Leader(conn, Processor(recent_capacity=10_000), seq=leader.seq)
    fresh_epoch = await fresh.epoch()
    await record_fresh_start(conn, fresh_epoch, fresh.seq)
    await fresh.commit(fresh.rows(5, fresh_epoch))
    await wait_for(lambda: standby.processor is None, what="the replica dropped")
    assert standby.reason == f"epoch {fresh_epoch} started fresh after the replica's snapshot"
    await fresh.commit(fresh.rows(1, fresh_epoch))  # a commit notice: it tries to seed again
    await wait_for(lambda: standby.state == "waiting for a newer snapshot", what="waiting")
    assert standby.seeds == 1
    # Once the fresh leader has a snapshot, the replica is seeded from it.
    await fresh.snapshot(fresh_epoch)
    await fresh.commit(fresh.rows(5, fresh_epoch))
    await wait_for(lambda: standby.last_seq == fresh.seq, what="seeded again and following")
    assert standby.seeds == 2 and standby.seed_epoch == fresh_epoch
    assert standby.processor is not None and same_graph(standby.processor, fresh.processor)


async def test_a_hole_in_the_log_drops_the_replica(
    conn: asyncpg.Connection, standby: HotStandby
) -> None:
    leader, epoch = await following(conn, standby)
    rows = leader.rows(10, epoch)
    await leader.commit(rows[:4] + rows[5:])  # seq 35 never reached the log
    await wait_for(lambda: standby.processor is None, what="the replica dropped")
    assert standby.reason is not None and "expected seq 35, found 36" in standby.reason
    await leader.commit([rows[4]])  # the hole is filled, but too late for this replica...
    await wait_for(lambda: standby.state == "waiting for a newer snapshot", what="waiting")
    assert standby.seeds == 1  # ...and its snapshot is not decoded again
    await leader.snapshot(epoch)
    await leader.commit(leader.rows(2, epoch))
    await wait_for(lambda: standby.last_seq == leader.seq, what="seeded from the newer one")
    assert standby.seeds == 2 and standby.seed_seq == 40
    assert standby.processor is not None and same_graph(standby.processor, leader.processor)


def test_the_replica_is_a_copy_not_the_leaders_object() -> None:
    """Guard for the tests above: a snapshot round trip gives an equal, separate state."""
    p = build_processor(instances=5)
    q = Processor(recent_capacity=p.recent.capacity)
    q.import_state(pickle.loads(pickle.dumps(p.export_state(), protocol=5)))
    assert same_graph(p, q) and q.graph is not p.graph


async def test_a_failure_while_applying_drops_the_replica(
    conn: asyncpg.Connection, standby: HotStandby
) -> None:
    """A replica half-way through a record is not a graph to take over with."""
    leader, epoch = await following(conn, standby)
    assert standby.processor is not None
    rows = leader.rows(3, epoch)
    seq, epoch_, at, event_id, body = rows[1]
    data = orjson.loads(body)
    data["changes"].append(["?", "what"])  # applied after the record's good changes
    rows[1] = (seq, epoch_, at, event_id, orjson.dumps(data))
    await leader.commit(rows)
    await wait_for(lambda: standby.processor is None, what="the replica dropped")
    why = "failed: ValueError(\"unknown change op '?'\")"
    assert standby.reason == why
    assert standby.state in ("dropped", "waiting for a newer snapshot")
    me = await leader.epoch()
    assert await standby.usable(conn, me, leader.seq) == why


async def test_a_fresh_leaders_snapshot_seeds_even_below_an_older_epochs_seq(
    conn: asyncpg.Connection, standby: HotStandby
) -> None:
    """After a fresh start that reuses seqs, the old epoch's snapshot has the highest
    seq but is not usable: the replica is seeded from the fresh leader's."""
    leader, epoch = await started_leader(conn)
    await leader.commit(leader.rows(70, epoch))
    await leader.snapshot(epoch)  # epoch 1 at seq 100
    standby.start()
    await wait_for(lambda: standby.seed_seq == 100, what="the replica seeded at seq 100")
    fresh = Leader(conn, Processor(recent_capacity=10_000), seq=50)
    fresh_epoch = await fresh.epoch()
    await record_fresh_start(conn, fresh_epoch, 50)
    rows = fresh.rows(30, fresh_epoch)  # seqs 51..80, as the persistor's upsert leaves them
    await conn.execute("DELETE FROM events WHERE seq BETWEEN 51 AND 80")
    await fresh.commit(rows)
    await wait_for(lambda: standby.processor is None, what="the replica dropped")
    await fresh.snapshot(fresh_epoch)  # at seq 80, below epoch 1's at 100
    await wait_for(lambda: standby.state == "following", what="seeded from the fresh snapshot")
    assert standby.seed_epoch == fresh_epoch and standby.seed_seq == 80
    assert standby.processor is not None and same_graph(standby.processor, fresh.processor)


async def test_a_corrupt_newer_snapshot_does_not_bring_back_the_dropped_one(
    conn: asyncpg.Connection, standby: HotStandby, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, epoch = await following(conn, standby)
    rows = leader.rows(10, epoch)
    await leader.commit(rows[:4] + rows[5:])  # a hole at seq 35
    await wait_for(lambda: standby.processor is None, what="the replica dropped")
    # Logs are captured before the corrupt snapshot exists: the standby may try it
    # (and give up on it) before this test would start listening otherwise.
    with capture_logs() as logs:
        monkeypatch.setattr(snapshots, "log", structlog.get_logger(snapshots.__name__))
        async with conn.transaction():  # nobody sees it before it is corrupt
            corrupt = await leader.snapshot(epoch)
            await conn.execute(
                "UPDATE graph_snapshots SET blob = 'garbage'::bytea, size_bytes = 7 WHERE id = $1",
                corrupt,
            )

        def tried_twice() -> bool:
            rejected = [e for e in logs if e["event"] == "snapshot rejected, trying an older one"]
            return len(rejected) >= 2

        await wait_for(tried_twice, what="two tries at seeding")
    assert all(e.get("snapshot_id") == corrupt for e in logs if "snapshot_id" in e)
    assert standby.seeds == 1 and standby.state == "waiting for a newer snapshot"


async def test_a_new_deployment_without_tables_is_waited_for_not_reported_unreachable(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby may start before anyone has created the schema's tables: it waits for
    them quietly, then seeds once they exist."""
    schema = f"gs_{uuid.uuid4().hex[:12]}"
    dsn = Settings().database_url
    p = await db.create_pool(dsn, schema, min_size=1, max_size=2)
    config = StandbyConfig(
        dsn=dsn,
        schema=schema,
        hmac_key=None,
        max_snapshot_age_s=600,
        poll_interval=30,
        retry_interval=0.05,
        min_time_to_delete=600,
        recent_capacity=10_000,
    )
    hot = HotStandby(p, config)
    try:
        with capture_logs() as logs:
            monkeypatch.setattr(hot_standby, "log", structlog.get_logger(hot_standby.__name__))
            hot.start()
            await wait_for(lambda: hot.state == "waiting for the schema", what="the wait")
            assert not [e for e in logs if e["log_level"] in ("warning", "error")]
            await db.migrate(conn, schema)
            await wait_for(lambda: hot.state == "waiting for a snapshot", what="the tables seen")
    finally:
        await hot.close()
        await p.close()
        await db.drop_schema(conn, schema)


# ----------------------------------------------------------------- takeovers
def takeover_of(pool: asyncpg.Pool, schema: str, epoch: int, templates: bool = True) -> Takeover:
    """The recovery half of a Takeover over a stand-in service (no broker): the barrier
    is the persistor's row, written directly. ``templates``: the shipped ones are loaded."""
    settings = SimpleNamespace(
        db_schema=schema,
        barrier_timeout=5,
        snapshot_interval=600,
        snapshot_hmac_key=None,
        min_time_to_delete=600,
        recent_event_ids=10_000,
    )
    svc = SimpleNamespace(
        pool=pool,
        epoch=epoch,
        settings=settings,
        processor=Processor(recent_capacity=10_000),
        evaluation=Evaluation(None),
    )
    if templates:
        svc.evaluation.load()
    takeover = Takeover.__new__(Takeover)
    takeover.svc, takeover.settings = svc, settings  # type: ignore[assignment]

    async def barrier() -> None:
        await pool.execute(
            "INSERT INTO barriers (epoch, max_seq) VALUES ($1, (SELECT max(seq) FROM events))"
            " ON CONFLICT DO NOTHING",
            epoch,
        )

    takeover._publish_barrier = barrier  # type: ignore[method-assign]
    return takeover


@pytest.mark.parametrize("templates", [True, False], ids=["templates", "no-templates"])
async def test_a_hot_takeover_ends_as_a_cold_one_would(
    conn: asyncpg.Connection, pool: asyncpg.Pool, standby: HotStandby, templates: bool
) -> None:
    """Records committed after the replica's last read are replayed onto it: the same
    graph and the same vertices to evaluate as from the snapshot and the whole log
    (none without templates: nothing would ever evaluate them)."""
    schema = await conn.fetchval("SELECT current_schema()")
    leader, epoch = await stopped_at_40(conn, standby)
    await leader.commit(leader.rows(15, epoch), notify=False)  # after its last read
    me = await leader.epoch()
    hot = takeover_of(pool, schema, me, templates)
    cold = takeover_of(pool, schema, me, templates)
    hot_report, cold_report = RecoveryReport(), RecoveryReport()
    assert await hot._recover_from_log(hot_report, standby) == 55
    assert await cold._recover_from_log(cold_report, None) == 55
    assert (hot_report.mode, hot_report.replayed) == ("hot", 15)
    assert hot_report.snapshot_seq == 30 and 0 <= (hot_report.snapshot_age_s or -1) < 60
    assert (cold_report.mode, cold_report.replayed) == ("snapshot", 25)
    assert same_graph(hot.svc.processor, cold.svc.processor)
    assert same_graph(hot.svc.processor, leader.processor)
    assert hot.svc.evaluation.dirty == cold.svc.evaluation.dirty
    assert bool(cold.svc.evaluation.dirty) is templates


async def test_a_hole_after_the_replica_falls_back_to_a_snapshot_not_to_fresh(
    conn: asyncpg.Connection, pool: asyncpg.Pool, standby: HotStandby
) -> None:
    schema = await conn.fetchval("SELECT current_schema()")
    leader, epoch = await stopped_at_40(conn, standby)
    rows = leader.rows(10, epoch)  # 41..50, of which 45 never reaches the log
    await leader.snapshot(epoch)  # at 50: after the hole
    rows += leader.rows(10, epoch)  # 51..60
    await leader.commit([r for r in rows if r[0] != 45], notify=False)
    me = await leader.epoch()
    takeover = takeover_of(pool, schema, me)
    report = RecoveryReport()
    assert await takeover._recover_from_log(report, standby) == 60
    assert report.mode == "snapshot" and report.snapshot_seq == 50 and report.replayed == 10
    assert "expected seq 45, found 46" in report.extra["hot_standby_unused"]
    assert "hot_standby" not in report.extra
    assert standby.processor is None and standby.state == "not used"
    assert same_graph(takeover.svc.processor, leader.processor)


async def test_close_lets_a_seed_in_progress_finish(
    conn: asyncpg.Connection, standby: HotStandby, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A takeover that stops the standby in the middle of its seed gets the replica: the
    seed was decoding the snapshot the takeover would load (cancelled, its decode thread
    ran on beside the takeover's own decode of the same snapshot)."""
    leader, _ = await started_leader(conn)
    loading, release = asyncio.Event(), asyncio.Event()
    load_newest = SnapshotStore.load_newest

    async def slow_load(self: SnapshotStore, *args: object, **kwargs: object) -> object:
        loading.set()
        await release.wait()  # the decode, in flight
        return await load_newest(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SnapshotStore, "load_newest", slow_load)
    standby.start()
    await asyncio.wait_for(loading.wait(), 10)
    assert standby.state == "seeding"
    closing = asyncio.ensure_future(standby.close())
    await wait_for(lambda: standby._closing, what="the takeover stopping the standby")
    release.set()
    await asyncio.wait_for(closing, 10)
    assert standby.state == "stopped" and standby.seed_seq == 30
    assert standby.processor is not None and same_graph(standby.processor, leader.processor)
    assert standby.last_seq == 30  # seeded, then stopped: it did not go on to follow


async def test_a_shutdown_does_not_wait_for_a_seed(
    conn: asyncpg.Connection, standby: HotStandby, monkeypatch: pytest.MonkeyPatch
) -> None:
    await started_leader(conn)
    loading = asyncio.Event()

    async def stuck_load(self: SnapshotStore, *args: object, **kwargs: object) -> object:
        loading.set()
        await asyncio.Event().wait()  # a decode that would take longer than the test

    monkeypatch.setattr(SnapshotStore, "load_newest", stuck_load)
    standby.start()
    await asyncio.wait_for(loading.wait(), 10)
    await asyncio.wait_for(standby.close(for_takeover=False), 2)  # < CLOSE_TIMEOUT
    assert standby.state == "stopped" and standby.processor is None


async def test_close_stops_a_standby_whose_cancellation_turned_into_an_error(
    conn: asyncpg.Connection, standby: HotStandby, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg can raise its own error while unwinding a cancelled query: the takeover
    must not wait forever for a standby that swallowed its cancellation."""
    leader, epoch = await following(conn, standby)
    reading = asyncio.Event()

    async def follow_that_hides_its_cancellation() -> None:
        reading.set()
        try:
            await asyncio.Event().wait()  # a read of the log, in flight
        except asyncio.CancelledError:
            raise asyncpg.InterfaceError("cannot release a connection: it is busy") from None

    monkeypatch.setattr(standby, "follow", follow_that_hides_its_cancellation)
    await leader.commit(leader.rows(1, epoch))  # a commit notice: it reads
    await asyncio.wait_for(reading.wait(), 10)
    await asyncio.wait_for(standby.close(), 10)
    assert standby.state == "stopped" and standby.processor is not None  # still the replica


async def test_a_standby_that_cannot_be_stopped_gives_up_its_replica(
    conn: asyncpg.Connection, standby: HotStandby, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An await that ignores cancellation must not stall the takeover, nor hand it a
    replica that the stuck task could still change."""
    leader, epoch = await following(conn, standby)
    reading = asyncio.Event()

    released = asyncio.Event()

    async def stuck_follow() -> None:
        reading.set()
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    monkeypatch.setattr(hot_standby, "CLOSE_TIMEOUT", 0.5)
    monkeypatch.setattr(standby, "follow", stuck_follow)
    await leader.commit(leader.rows(1, epoch))
    await asyncio.wait_for(reading.wait(), 10)
    await asyncio.wait_for(standby.close(), 10)
    assert standby.processor is None
    assert await standby.usable(conn, epoch + 1, leader.seq) == (
        "the standby did not stop within 0.5s"
    )
    released.set()  # let the stuck task end with the test
