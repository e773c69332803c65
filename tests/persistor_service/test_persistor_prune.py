"""Pruning against the real PostgreSQL: snapshots kept, events no kept snapshot needs."""

from __future__ import annotations

import asyncpg
import pytest

from persistor_service.pruner import prune
from rca_common.settings import Settings
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


async def _events(db: asyncpg.Connection, first: int, last: int) -> None:
    await db.executemany(
        "INSERT INTO events (seq, epoch, processed_at, event_id, record) VALUES ($1, 1, 0, $2, '')",
        [(s, f"ev-{s}") for s in range(first, last + 1)],
    )


async def _snapshot(db: asyncpg.Connection, seq: int) -> int:
    return await db.fetchval(
        "INSERT INTO graph_snapshots (epoch, snapshot_seq, format_version, size_bytes,"
        " raw_size_bytes, blob) VALUES (1, $1, 1, 1, 1, 'x') RETURNING id",
        seq,
    )


async def _seqs(db: asyncpg.Connection) -> list[int]:
    return [r["seq"] for r in await db.fetch("SELECT seq FROM events ORDER BY seq")]


async def test_keeps_the_newest_snapshots_and_the_events_they_need(db: asyncpg.Connection) -> None:
    await _events(db, 1, 100)
    ids = {seq: await _snapshot(db, seq) for seq in (40, 10, 30, 20, 50)}
    tie_newer = await _snapshot(db, 30)  # ties on seq: the larger id is newer

    result = await prune(db, keep=3)

    kept = await db.fetch("SELECT id, snapshot_seq FROM graph_snapshots ORDER BY id")
    assert sorted((r["snapshot_seq"], r["id"]) for r in kept) == sorted(
        [(50, ids[50]), (40, ids[40]), (30, tie_newer)]
    )
    assert (result.snapshots_deleted, result.events_deleted, result.horizon) == (3, 30, 30)
    assert await _seqs(db) == list(range(31, 101))  # replay after seq 30 still works


async def test_nothing_happens_without_snapshots_or_below_the_limit(db: asyncpg.Connection) -> None:
    await _events(db, 1, 20)
    assert (await prune(db, keep=3)).horizon is None
    await _snapshot(db, 5)
    await _snapshot(db, 15)
    result = await prune(db, keep=3)
    assert (result.snapshots_deleted, result.events_deleted) == (0, 5)
    assert await _seqs(db) == list(range(6, 21))


async def test_the_newest_event_survives_so_the_log_keeps_its_max_seq(
    db: asyncpg.Connection,
) -> None:
    await _events(db, 1, 10)
    await _snapshot(db, 10)
    await prune(db, keep=1, chunk=3)  # several chunks
    assert await _seqs(db) == [10]


async def test_the_service_prunes_at_start_and_on_demand(
    start_persistor, db: asyncpg.Connection, settings: Settings
) -> None:
    await _events(db, 1, 50)
    for seq in (10, 20, 30, 40):
        await _snapshot(db, seq)
    persistor = await start_persistor(snapshots_kept=2)

    async def pruned() -> bool:
        snapshots = await db.fetchval("SELECT count(*) FROM graph_snapshots")
        return snapshots == 2 and await _seqs(db) == list(range(31, 51))

    await wait_for(pruned, timeout=30, what="the prune at start")

    await _snapshot(db, 45)
    result = await persistor.prune_now()
    assert result is not None and result.horizon == 40
    assert await _seqs(db) == list(range(41, 51))
    assert persistor.metrics.registry.get_sample_value("rca_persistor_pruned_events_total") == 40
