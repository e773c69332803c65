"""Recovery: from the snapshot and the log when possible, from the collectors when not.

The order is the design's invariant 6: barrier → newest usable snapshot →
replay ``seq > snapshot_seq`` in order → (the service then drains the live
queue and enables evaluators). Every step that can fail says why, in the log
and in ``/status``, and falls back to the fresh start (``get_all``) rather than
hang or serve a graph it cannot vouch for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import asyncpg
import orjson

from graph_service import crashpoints
from graph_service.log_replay import OnRecord, replay_rows
from graph_service.processor import Processor
from rca_common import db
from rca_common.logging import get_logger

log = get_logger(__name__)

REPLAY_CHUNK = 5000  # seqs a chunk of the log covers at most
REPLAY_FIRST_CHUNK = 500  # the first chunk: nothing is applied until it is in
# Records applied between two turns of the event loop while the next chunk streams in
REPLAY_SLICE = 250
# Bytes of records a chunk is sized for, from the sizes of the last one: a chunk is one
# PostgreSQL array, which must stay far below its 1 GB limit, and it is held whole in
# memory while applied (5000 records are 3.5 MB without templates, 17 MB with them).
REPLAY_CHUNK_BYTES = 32 << 20
# a chunk of the log: its seqs, epochs and records, in seq order
Chunk = tuple[list[int], list[int], list[bytes]]
PROGRESS_EVERY = 2.0


def chunk_span(records: list[bytes]) -> int:
    """Seqs the next chunk covers, given the records of the last one."""
    size = sum(map(len, records))
    if not size:
        return REPLAY_CHUNK
    return max(1, min(REPLAY_CHUNK, REPLAY_CHUNK_BYTES * len(records) // size))


@dataclass
class RecoveryReport:
    """What recovery did, for ``/status`` and the failover drill."""

    mode: str = "fresh"  # "snapshot" or "fresh"
    reason: str | None = None  # why fresh, when it is
    barrier_max_seq: int | None = None
    barrier_wait_s: float | None = None
    snapshot_id: int | None = None
    snapshot_seq: int | None = None
    snapshot_epoch: int | None = None
    snapshot_age_s: float | None = None
    snapshot_load_s: float | None = None
    replayed: int = 0
    replay_skipped_stale: int = 0
    replay_s: float | None = None
    replay_rate: float | None = None
    drained_events: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra" and v is not None}
        out.update(self.extra)
        return out


async def wait_for_barrier(
    conn: asyncpg.Connection,
    schema: str,
    epoch: int,
    publish: Callable[[], Awaitable[None]],
    timeout: float,
) -> int | None:
    """Publish ``barrier(epoch)`` and wait for the persistor's NOTIFY that it committed.

    Returns the log's last seq at the barrier, or None when the persistor did not
    answer within ``timeout``. LISTEN comes first and the barriers table is read
    once after publishing, so a NOTIFY sent before we listened is not missed.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    channel = db.barrier_channel(schema)

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        data = orjson.loads(payload)
        if data.get("epoch") == epoch and not fut.done():
            fut.set_result(int(data["max_seq"]))

    await conn.add_listener(channel, on_notify)
    try:
        await publish()
        row = await conn.fetchrow("SELECT max_seq FROM barriers WHERE epoch = $1", epoch)
        if row is not None:
            return int(row["max_seq"])
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
    finally:
        await conn.remove_listener(channel, on_notify)


async def replay_log(
    conn: asyncpg.Connection,
    processor: Processor,
    after_seq: int,
    upto_seq: int,
    snapshot_epoch: int,
    report: RecoveryReport,
    on_record: OnRecord | None = None,
    *,
    takeover: bool = True,
) -> int:
    """Apply the logged changes of ``after_seq < seq <= upto_seq`` in order.

    ``takeover``: this is a takeover's replay (logged with progress, and the drill's
    ``replay`` crash point counts its records); a hot standby's reads of the log are
    not, and do not fetch stale rows at all.

    Returns the last seq applied: the new leader continues from there. Records of
    an epoch older than the snapshot's are a dead leader's seqs that a newer
    leader reused after a fresh start: they are not part of this history and are
    skipped (the new leader's records will overwrite them). A hole inside the
    history raises :class:`ReplayGap`.
    """
    total = upto_seq - after_seq
    started = last_log = time.monotonic()
    expected = after_seq + 1
    done = 0
    if takeover:
        log.info("replay started", after_seq=after_seq, upto_seq=upto_seq, records=total)

    # A takeover reads the stale rows too, to count them; a hot standby reads the log
    # again and again, and a stale tail would come back every time.
    stale = "" if takeover else " AND epoch >= $3"
    # One row of three arrays per chunk, not a row per record: asyncpg builds a Record
    # per row. Measured on a 50k-record replay in one process: 0.82 → 0.73 CPU-seconds
    # (medians of eight runs each), 59k → 65k records/s.
    query = (
        "SELECT array_agg(seq ORDER BY seq), array_agg(epoch ORDER BY seq),"
        " array_agg(record ORDER BY seq)"
        f" FROM events WHERE seq > $1 AND seq <= $2{stale}"
    )
    fetched_to = after_seq  # the chunks asked for so far cover the seqs up to here
    span = min(REPLAY_FIRST_CHUNK, REPLAY_CHUNK)

    async def fetch(start: int, end: int) -> Chunk:
        seqs, epochs, records = await conn.fetchrow(
            query, start, end, *(() if takeover else (snapshot_epoch,))
        )
        return ([], [], []) if seqs is None else (seqs, epochs, records)

    def fetch_next() -> Awaitable[Chunk]:
        # A bounded range, not ``LIMIT``: without statistics on a freshly filled table
        # the planner answered ``seq > $1 ... LIMIT`` by sorting every row after $1, for
        # every chunk (measured: 50-60 ms a chunk, on disk, at 30k rows to go).
        nonlocal fetched_to
        start, fetched_to = fetched_to, min(fetched_to + span, upto_seq)
        return fetch(start, fetched_to)

    rows = await fetch_next() if fetched_to < upto_seq else None
    while rows is not None:
        # Ask for the next chunk before applying this one: PostgreSQL reads and sends it
        # (on the other core) while this one is applied, instead of after.
        following: asyncio.Future[Chunk] | None = None
        span = chunk_span(rows[2])
        if fetched_to < upto_seq:
            following = asyncio.ensure_future(fetch_next())
        try:
            records = zip(*rows, strict=True)
            for _ in range(0, len(rows[0]), REPLAY_SLICE):
                if following is not None:
                    # The loop reads what has come of the next chunk meanwhile (the
                    # first time: the task sends its query). Without, the next chunk
                    # waits in the socket's buffer until this one is applied.
                    await asyncio.sleep(0)
                expected, applied, skipped = replay_rows(
                    processor,
                    islice(records, REPLAY_SLICE),
                    expected,
                    snapshot_epoch,
                    on_record,
                )
                done += applied
                report.replay_skipped_stale += skipped
        except BaseException:
            if following is not None:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            raise
        if takeover:
            crashpoints.hit("replay", len(rows[0]))
        now = time.monotonic()
        if takeover and now - last_log >= PROGRESS_EVERY:
            rate = done / (now - started)
            remaining = upto_seq - (expected - 1)
            log.info(
                "replay progress",
                replayed=done,
                remaining=remaining,
                rate_per_s=round(rate),
                eta_s=round(remaining / rate, 1) if rate else None,
            )
            last_log = now
        # awaiting the next chunk lets the watchdog and the HTTP API run
        rows = await following if following is not None else None
    elapsed = time.monotonic() - started
    report.replayed = done
    report.replay_s = round(elapsed, 6)
    report.replay_rate = round(done / elapsed) if elapsed > 0 and done else None
    if takeover:
        log.info("replay done", replayed=done, seconds=round(elapsed, 3), rate=report.replay_rate)
    return expected - 1


async def evaluators_enabled(conn: asyncpg.Connection) -> dict[int, int]:
    """epoch -> the seq after which that leader's evaluators ran live (if they did)."""
    rows = await conn.fetch(
        "SELECT epoch, evaluators_enabled_seq FROM leader_epochs"
        " WHERE evaluators_enabled_seq IS NOT NULL"
    )
    return {int(r["epoch"]): int(r["evaluators_enabled_seq"]) for r in rows}


async def record_fresh_start(conn: asyncpg.Connection, epoch: int, seq: int) -> None:
    """Mark ``epoch`` as having started fresh after ``seq``, before it logs anything."""
    await conn.execute("UPDATE leader_epochs SET fresh_from_seq = $1 WHERE epoch = $2", seq, epoch)


async def last_fresh_epoch(conn: asyncpg.Connection, before: int | None = None) -> int | None:
    """The newest epoch (before ``before``) that started fresh: a snapshot of an older
    epoch cannot be replayed across its records (they assume an empty graph)."""
    value = await conn.fetchval(
        "SELECT max(epoch) FROM leader_epochs WHERE fresh_from_seq IS NOT NULL"
        " AND ($1::bigint IS NULL OR epoch < $1)",
        before,
    )
    return None if value is None else int(value)


async def log_end(conn: asyncpg.Connection) -> int:
    """The largest seq in the log (0 when empty): the seq base when no barrier answered."""
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
