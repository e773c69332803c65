"""When the active takes snapshots: often enough that one younger than SNAPSHOT_INTERVAL
is always stored, and after every get_all.

A takeover uses no snapshot older than SNAPSHOT_INTERVAL. Waiting the full interval
after each snapshot was stored would leave a window, every cycle, in which the
newest one is just too old (the interval plus the time to take the next one), and
after a takeover the snapshot it loaded may already be nearly that old. So the
active takes one as soon as it is active, then each time the last one it stored
reaches ``DUE_AT`` of the interval (earlier if taking one takes longer than that
margin allows), and retries a failed one after ``RETRY_AT``.

The snapshot is the state at one record boundary (``snapshot_seq``): the fork
happens synchronously between two messages. It is stored only once every record
up to that seq is confirmed by the broker, and only while our epoch is still
the newest (checked in the insert's transaction); a stale epoch fences us.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from graph_service import crashpoints
from graph_service.snapshots import SnapshotError, SnapshotStore, StaleEpoch, take_snapshot
from rca_common.logging import get_logger

if TYPE_CHECKING:
    from graph_service.service import GraphService

log = get_logger(__name__)

DUE_AT = 0.9  # of SNAPSHOT_INTERVAL: the margin covers taking and storing the next one
RETRY_AT = 0.1  # of SNAPSHOT_INTERVAL, after a failed snapshot


def next_wait(interval: float, stored: int | None, took_s: float = 0.0) -> float:
    """Seconds until the next snapshot, after one was stored (its id) or failed (None);
    ``took_s``: how long the last one took, from start to stored (the next one should
    be stored before the last is ``interval`` old, with room to spare)."""
    if stored is None:
        return interval * RETRY_AT
    return max(0.0, interval - max(interval * (1 - DUE_AT), 2 * took_s))


class SnapshotSchedule:
    def __init__(self, service: GraphService) -> None:
        self.svc = service
        self._now = asyncio.Event()
        self.taken = 0

    def request(self) -> None:
        """Take one as soon as possible (after a get_all)."""
        self._now.set()

    async def run(self) -> None:
        """From going active until stopped: one now, then periodically (see above)."""
        self._now.set()
        interval = self.svc.settings.snapshot_interval
        wait = 0.0
        while not self.svc.stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), wait)
            self._now.clear()
            if self.svc.stopped.is_set():
                return
            started = time.monotonic()
            stored = await self.take_one()
            wait = next_wait(interval, stored, time.monotonic() - started)

    async def take_one(self) -> int | None:
        """Take, wait for the records it covers to be confirmed, store. Returns the id."""
        svc = self.svc
        ingest, epoch, pool = svc.ingest, svc.epoch, svc.pool
        assert ingest is not None and epoch is not None and pool is not None
        processor = svc.processor
        seq = ingest.seq  # no await between this and the fork: the state is at this seq
        key = svc.settings.snapshot_hmac_key
        log.info("snapshot started", snapshot_seq=seq, vertices=len(processor.graph))
        try:
            taken = await take_snapshot(
                lambda: {"processor": processor.export_state()},
                key.encode() if key else None,
                fork=svc.settings.snapshot_in_child,
                meta={"epoch": epoch, "snapshot_seq": seq, "created_at": time.time()},
            )
            crashpoints.hit("snapshot")
            await ingest.wait_confirmed(seq)
            snapshot_id = await SnapshotStore(pool).insert(taken.encoded, epoch, seq)
        except StaleEpoch as exc:
            svc.fence(f"snapshot refused: {exc}")
            return None
        except (SnapshotError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("snapshot failed", error=repr(exc), snapshot_seq=seq)
            svc.snapshot_state = {"state": "failed", "error": repr(exc), "at": time.time()}
            return None
        self.taken += 1
        svc.snapshot_state = _taken_state(snapshot_id, seq, taken)
        svc.metrics.snapshot_pause.observe(taken.pause_s)
        log.info("snapshot done", **svc.snapshot_state)
        return snapshot_id


def _taken_state(snapshot_id: int, seq: int, taken: Any) -> dict[str, Any]:
    return {
        "state": "stored",
        "snapshot_id": snapshot_id,
        "snapshot_seq": seq,
        "mode": taken.mode,
        "pause_ms": round(taken.pause_s * 1000, 3),
        "duration_s": round(taken.duration_s, 3),
        "size_bytes": taken.encoded.size,
        "raw_size_bytes": taken.encoded.raw_size,
        "at": time.time(),
    }
