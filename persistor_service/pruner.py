"""Pruning: keep the newest snapshots and the events they still need.

Replay after snapshot S reads ``seq > S.snapshot_seq``, so the events at or
below the oldest kept snapshot's seq are needed by nobody. The newest event is
always kept, whatever the snapshots say: ``max(seq)`` of the log is what a
barrier reports to the next leader, and an empty table would report 0.

Snapshots older than the N newest are deleted by comparing with the N-th
newest, never by "not in the ids I read": a snapshot the active inserts
meanwhile is newer and must survive.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from rca_common.logging import get_logger

log = get_logger(__name__)

EVENT_CHUNK = 50_000  # rows per DELETE: keeps each statement short


@dataclass(frozen=True, slots=True)
class PruneResult:
    snapshots_deleted: int
    events_deleted: int
    horizon: int | None  # events with seq <= horizon were deletable; None: no snapshots


async def prune(
    conn: asyncpg.Connection, keep: int, chunk: int = EVENT_CHUNK, events: bool = True
) -> PruneResult:
    """Delete snapshots beyond the ``keep`` newest and, when ``events``, the events
    that none of the kept snapshots needs."""
    kept = await conn.fetch(
        "SELECT id, snapshot_seq FROM graph_snapshots ORDER BY snapshot_seq DESC, id DESC LIMIT $1",
        keep,
    )
    if not kept:
        return PruneResult(0, 0, None)
    oldest = kept[-1]
    status = await conn.execute(
        "DELETE FROM graph_snapshots WHERE (snapshot_seq, id) < ($1::bigint, $2::bigint)",
        oldest["snapshot_seq"],
        oldest["id"],
    )
    snapshots_deleted = _count(status)
    horizon = int(oldest["snapshot_seq"])
    bounds = await conn.fetchrow("SELECT min(seq) AS lo, max(seq) AS hi FROM events")
    events_deleted = 0
    if events and bounds["lo"] is not None:
        lo, upto = bounds["lo"], min(horizon, bounds["hi"] - 1)
        while lo <= upto:
            hi = min(lo + chunk - 1, upto)
            status = await conn.execute("DELETE FROM events WHERE seq BETWEEN $1 AND $2", lo, hi)
            events_deleted += _count(status)
            lo = hi + 1
    return PruneResult(snapshots_deleted, events_deleted, horizon)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])
