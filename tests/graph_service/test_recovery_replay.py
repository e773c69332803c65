"""replay_log against a real PostgreSQL log: order, chunks, gaps, stale epochs."""

from __future__ import annotations

import asyncio
import pickle

import asyncpg
import orjson
import pytest

from graph_service import recovery
from graph_service.log_replay import ReplayGap
from graph_service.processor import Processor
from graph_service.recovery import RecoveryReport, replay_log
from tests.graph_service.snapshot_helpers import build_processor, event


def live_log(n: int) -> tuple[Processor, Processor, list[tuple[int, int, float, str, bytes]]]:
    """A processor's state before ``n`` events, the same processor after them, and
    the log rows those events wrote (seq 1..n, epoch 1)."""
    start = build_processor(instances=20)
    live = Processor(recent_capacity=start.recent.capacity)
    live.import_state(pickle.loads(pickle.dumps(start.export_state(), protocol=5)))
    rows = []
    for i in range(n):
        e = event("nova.instance", f"vm-{i % 25}", 10_000 + i, host=f"host-{i % 3}", state="ACTIVE")
        out = live.process(e)
        body = orjson.dumps({"event": e.to_wire(), "changes": out.changes})
        rows.append((i + 1, 1, 0.0, e.event_id, body))
    return start, live, rows


async def write(conn: asyncpg.Connection, rows: list[tuple[int, int, float, str, bytes]]) -> None:
    await conn.copy_records_to_table(
        "events", records=rows, columns=["seq", "epoch", "processed_at", "event_id", "record"]
    )


async def test_replay_across_many_chunks_rebuilds_the_live_state(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 7)  # many chunks, each prefetched
    start, live, rows = live_log(100)
    await write(conn, rows)
    seen: list[int] = []
    report = RecoveryReport()
    last = await replay_log(
        conn, start, 0, 100, 1, report, on_record=lambda seq, *_: seen.append(seq)
    )
    assert last == 100 and report.replayed == 100
    assert seen == list(range(1, 101))  # in order, each once
    assert start.export_state() == live.export_state()  # content (a restored copy interns less)


async def test_replay_stops_at_upto_and_starts_after_after(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 4)
    start, _, rows = live_log(30)
    await write(conn, rows)
    seen: list[int] = []
    for _seq, _, _, _, body in rows[:10]:
        data = orjson.loads(body)
        start.replay_wire(data["event"], data["changes"])
    last = await replay_log(
        conn, start, 10, 21, 1, RecoveryReport(), on_record=lambda seq, *_: seen.append(seq)
    )
    assert last == 21 and seen == list(range(11, 22))


async def test_a_hole_in_the_log_is_a_gap_and_leaves_the_connection_usable(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 5)
    start, _, rows = live_log(40)
    await write(conn, [r for r in rows if r[0] != 23])
    with pytest.raises(ReplayGap, match="expected seq 23, found 24"):
        await replay_log(conn, start, 0, 40, 1, RecoveryReport())
    # the prefetched chunk was cancelled or finished: no query is left running
    assert await asyncio.wait_for(conn.fetchval("SELECT count(*) FROM events"), 5) == 39


async def test_records_of_an_epoch_older_than_the_snapshot_are_skipped(
    conn: asyncpg.Connection,
) -> None:
    start, live, rows = live_log(12)
    rows = [(seq, 3, at, eid, body) for seq, _, at, eid, body in rows]
    stale = [(13, 2, 0.0, "zombie", orjson.dumps({"event": {}, "changes": [["V", "x"]]}))]
    await write(conn, rows + stale)
    report = RecoveryReport()
    last = await replay_log(conn, start, 0, 13, 3, report)
    assert report.replay_skipped_stale == 1 and report.replayed == 12 and last == 12
    assert start.export_state() == live.export_state()  # content (a restored copy interns less)


async def test_a_hole_wider_than_a_chunk_is_a_gap_too(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks are ranges of seqs: a range with no row at all must not end the replay
    # as if the log ended there.
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 5)
    start, _, rows = live_log(40)
    await write(conn, [r for r in rows if not 11 <= r[0] <= 25])
    with pytest.raises(ReplayGap, match="expected seq 11, found 26"):
        await replay_log(conn, start, 0, 40, 1, RecoveryReport())


async def test_a_standby_read_goes_through_a_stale_tail_wider_than_a_chunk(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead leader's seqs beyond the new leader's: a hot standby's read leaves them out
    # in the query, so whole chunks fetch nothing; the read must go on through them to
    # the end it was given, and a later read must find the new leader's records there.
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 4)
    start, live, rows = live_log(20)
    zombie = orjson.dumps({"event": {}, "changes": [["V", "x"]]})
    newer = [(seq, 3, at, eid, body) for seq, _, at, eid, body in rows]
    await write(
        conn, newer[:10] + [(seq, 2, 0.0, f"zombie-{seq}", zombie) for seq in range(11, 43)]
    )
    seen: list[int] = []

    async def read(after: int) -> int:
        return await replay_log(
            conn,
            start,
            after,
            42,
            3,
            RecoveryReport(),
            on_record=lambda seq, *_: seen.append(seq),
            takeover=False,
        )

    assert await read(0) == 10 and seen == list(range(1, 11))
    # the new leader goes on: its records overwrite the dead leader's seqs
    await conn.execute("DELETE FROM events WHERE seq BETWEEN 11 AND 20")
    await write(conn, newer[10:20])
    assert await read(10) == 20 and seen == list(range(1, 21))
    assert start.export_state() == live.export_state()


def test_a_chunk_is_sized_by_the_bytes_of_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 5000)
    monkeypatch.setattr(recovery, "REPLAY_CHUNK_BYTES", 1_000_000)
    assert recovery.chunk_span([b"x" * 100] * 10) == 5000  # small records: the seq cap
    assert recovery.chunk_span([b"x" * 10_000] * 10) == 100  # 1 MB / 10 kB
    assert recovery.chunk_span([b"x" * 5_000_000]) == 1  # one huge record: one at a time
    assert recovery.chunk_span([]) == 5000  # an empty range says nothing


async def test_replay_with_chunks_sized_by_bytes_rebuilds_the_live_state(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, live, rows = live_log(60)
    monkeypatch.setattr(recovery, "REPLAY_FIRST_CHUNK", 3)
    # about two records' worth: the chunks shrink after the first
    monkeypatch.setattr(recovery, "REPLAY_CHUNK_BYTES", 2 * len(rows[0][4]))
    spans: list[int] = []
    sized = recovery.chunk_span
    monkeypatch.setattr(recovery, "chunk_span", lambda r: spans.append(sized(r)) or spans[-1])
    await write(conn, rows)
    seen: list[int] = []
    last = await replay_log(
        conn, start, 0, 60, 1, RecoveryReport(), on_record=lambda seq, *_: seen.append(seq)
    )
    assert last == 60 and seen == list(range(1, 61))
    assert start.export_state() == live.export_state()
    assert spans and max(spans) <= 3  # the chunks followed the bytes, not REPLAY_CHUNK


async def test_the_loop_turns_between_slices_of_a_chunk_while_the_next_one_streams_in(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk is applied a slice at a time, and the event loop runs between slices
    while the next chunk is on its way (so that it is read from the socket meanwhile,
    not after the whole chunk): another task sees the replay part-way through a chunk."""
    monkeypatch.setattr(recovery, "REPLAY_CHUNK", 40)
    monkeypatch.setattr(recovery, "REPLAY_FIRST_CHUNK", 40)
    monkeypatch.setattr(recovery, "REPLAY_SLICE", 7)
    start, live, rows = live_log(120)
    await write(conn, rows)
    seen: list[int] = []
    observed: list[int] = []
    replay = asyncio.create_task(
        replay_log(conn, start, 0, 120, 1, RecoveryReport(), on_record=lambda s, *_: seen.append(s))
    )
    while not replay.done():
        observed.append(len(seen))
        await asyncio.sleep(0)
    assert await replay == 120 and seen == list(range(1, 121))
    # part-way through the first two chunks (the last one has no next chunk to wait for)
    assert {7, 14, 21, 28, 35, 47, 54, 61, 68, 75} <= set(observed)
    assert start.export_state() == live.export_state()
