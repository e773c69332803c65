"""A hot standby: a replica of the active's graph, kept current from the committed log.

DESIGN section 10. A standby seeds a processor from the newest usable snapshot
and then applies every record the persistor commits, as the persistor announces
each batch (NOTIFY on the log channel; a slow poll covers a lost notice). A
takeover then has only the barrier to wait for and the few records committed
since the replica's last read to replay, whatever the size of the graph and
however much the evaluator wrote.

The replica follows the log in PostgreSQL rather than a queue of its own on the
fanout: the persistor has already decided the order, the fencing of stale
epochs and the gaps, so the replica applies exactly the history a cold takeover
would replay, and needs nothing verified at takeover but what can change that
history afterwards:

* a leader that started fresh (its records rebuild the graph from nothing, and
  may overwrite seqs of the leader before it): a replica seeded before that
  epoch is dropped and seeded again from a snapshot of that epoch or later;
* a hole in the log (a lost record, or records pruned while the replica was
  behind): dropped and seeded again.

The replica also keeps, like a takeover's replay, the set of vertices no
evaluator has seen (:class:`ReplayDirt`), learning the enabling passes of the
leaders as it goes, so that enabling after the takeover evaluates only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from graph_service.evaluation import ReplayDirt
from graph_service.gc_policy import freeze_heap
from graph_service.log_replay import ReplayGap
from graph_service.processor import Processor
from graph_service.recovery import (
    RecoveryReport,
    evaluators_enabled,
    last_fresh_epoch,
    log_end,
    replay_log,
)
from graph_service.snapshots import SnapshotStore
from rca_common import db
from rca_common.logging import get_logger

log = get_logger(__name__)

# At most one read of the log per this many seconds: under load the persistor commits
# far more often, and a read per commit would cost PostgreSQL more than the records.
FOLLOW_SPACING = 0.05
CLOSE_TIMEOUT = 5.0  # seconds a takeover waits for the standby's task to stop


@dataclass(frozen=True, slots=True)
class StandbyConfig:
    dsn: str
    schema: str
    hmac_key: bytes | None
    max_snapshot_age_s: float  # SNAPSHOT_INTERVAL: what a takeover would accept
    poll_interval: float  # longest wait between reads of the log
    retry_interval: float  # between tries at seeding (each may decode a whole snapshot)
    min_time_to_delete: float
    recent_capacity: int


class HotStandby:
    """The replica and the task that keeps it current; handed over once, to a takeover."""

    STATUS_KEY = "hot_standby"  # in /status while standing by

    def __init__(self, pool: asyncpg.Pool, config: StandbyConfig) -> None:
        self.pool = pool
        self.config = config
        self.processor: Processor | None = None
        self.state = "starting"
        self.reason: str | None = None  # why the replica was last dropped, or is not seeded
        self.seed_id: int | None = None
        self.seed_epoch = 0  # records of older epochs are skipped (see replay_log)
        self.seed_seq = 0
        self.last_seq = 0  # the last record applied
        self.last_epoch: int | None = None  # its epoch (None: none since the seed)
        self.applied = 0
        self.seeds = 0
        self.dirty: dict[str, None] = {}
        self.dirt = ReplayDirt(self.dirty, {})
        self.followed_at: float | None = None  # wall clock of the last read of the log
        self.log_seq = 0  # the last seq the persistor announced (or the replica read)
        self._dropped_seed: int | None = None  # the snapshot of the replica last dropped
        self._seed_aged = (0.0, 0.0)  # the seed snapshot's age when loaded, and when that was
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="hot-standby")

    async def close(self, for_takeover: bool = True) -> None:
        """Stop following. Safe at any await: the replica's counters advance record by
        record (:meth:`_applied`), and a seed is installed in one step. For a takeover,
        a seed in progress is finished first (a shutdown does not wait for it).

        A cancellation can be turned into another error on its way out (asyncpg
        releasing a connection whose query was cancelled raises its own): the task
        then sees a database error, not a cancellation. So the loop also checks a
        flag, and the task is cancelled again until it is done."""
        self._closing = True
        task, self._task = self._task, None
        if for_takeover and task is not None and not task.done() and self.state == "seeding":
            # The seed decodes the snapshot the takeover would load next: let it finish
            # and hand over a replica. Cancelled, its decode thread would run on beside
            # the takeover's own decode of the same snapshot, taking turns at the GIL.
            log.info("hot standby: letting the seed in progress finish")
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while task is not None and not task.done():
            if time.monotonic() > deadline:
                # Stuck in an await that ignores cancellation: it may still touch the
                # replica, so the takeover must not use it (it takes the snapshot path).
                log.error("hot standby: did not stop; its replica is not used")
                self.processor = None
                self.reason = f"the standby did not stop within {CLOSE_TIMEOUT:g}s"
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        await self._close_listener()
        if self.state != "handed over":
            self.state = "stopped"

    async def run(self) -> None:
        while not self._closing:
            self._wake.clear()  # before reading: a notice during the read is not lost
            began = time.monotonic()
            await self._ensure_listener()
            try:
                if self.processor is None:
                    await self.seed()
                    if self._closing:  # a takeover is waiting for the seed (see close)
                        return
                if self.processor is not None:
                    await self.follow()
            except asyncpg.UndefinedTableError:  # a new deployment: nothing created yet
                if self._closing:
                    return
                self.state = "waiting for the schema"
                log.info("hot standby: no tables yet (the first active creates them), will retry")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._closing:  # a cancellation in disguise (see close)
                    return
                log.warning("hot standby: database unreachable, will retry", error=repr(exc))
                await self._close_listener()
            except Exception as exc:  # a bug: the replica may be half-way through a record
                if self._closing:  # cancelled at an await: between records, not inside one
                    return
                log.error("hot standby: failed", exc_info=exc)
                if self.processor is not None:
                    self.drop(f"failed: {exc!r}")
            if self._closing:
                return
            if self.processor is None or self._listener is None:
                # Not following, or no notices: try again after a while, not on every
                # commit notice (a seed may cost a whole snapshot's decode).
                await asyncio.sleep(self.config.retry_interval)
                continue
            with contextlib.suppress(TimeoutError):  # a notice wakes us; the poll is a backstop
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
            spacing = FOLLOW_SPACING - (time.monotonic() - began)
            if spacing > 0:
                await asyncio.sleep(spacing)  # commit notices coalesce meanwhile

    async def _ensure_listener(self) -> None:
        """LISTEN for the persistor's commit notices; without them, poll."""
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = None
        conn: asyncpg.Connection | None = None
        try:
            conn = await db.connect(self.config.dsn, self.config.schema, timeout=10)
            await conn.add_listener(db.log_channel(self.config.schema), self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("hot standby: no commit notices, polling", error=repr(exc))
            if conn is not None:
                conn.terminate()
            return
        self._listener = conn

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # closing is best effort: never let it hide the cause
                conn.terminate()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.log_seq = max(self.log_seq, int(payload))
        self._wake.set()

    # ------------------------------------------------------------ the replica
    async def seed(self) -> bool:
        """Load the newest snapshot a takeover could use now, into a new replica.

        Unlike a takeover it does not hold the snapshot to the log's end: the active
        stores a snapshot once the broker has confirmed its records, often before
        the persistor has committed them. A replica ahead of the log at takeover
        time is refused then (:meth:`usable`)."""
        self.state = "seeding"
        async with self.pool.acquire() as conn:
            fresh = await last_fresh_epoch(conn)
            snap = await SnapshotStore(conn).load_newest(
                self.config.hmac_key,
                self.config.max_snapshot_age_s,
                min_epoch=fresh,
                exclude=self._dropped_seed,
                quiet=True,
            )
            enabled = await evaluators_enabled(conn) if snap is not None else {}
        if snap is None:
            self.state = (
                "waiting for a newer snapshot" if self._dropped_seed else "waiting for a snapshot"
            )
            self.reason = self.reason or "no usable snapshot"
            return False
        processor = Processor(
            min_time_to_delete=self.config.min_time_to_delete,
            recent_capacity=self.config.recent_capacity,
        )
        try:
            processor.import_state(snap.state["processor"])
        except Exception as exc:  # signed and allow-listed, yet not a processor's state
            log.error("hot standby: snapshot not usable", snapshot_id=snap.id, exc_info=exc)
            self._dropped_seed = snap.id
            self.reason = f"snapshot {snap.id}: {exc!r}"
            self.state = "waiting for a newer snapshot"
            return False
        freeze_heap("hot standby: replica seeded")
        self.processor = processor
        self.seed_id, self.seed_epoch, self.seed_seq = snap.id, snap.epoch, snap.snapshot_seq
        self._seed_aged = (snap.age_s, time.monotonic())
        self.last_seq, self.last_epoch = snap.snapshot_seq, None
        self.log_seq = max(self.log_seq, snap.snapshot_seq)
        self.dirty = {}
        self.dirt = ReplayDirt(self.dirty, enabled)
        self.seeds += 1
        self.state = "following"
        self.reason = None
        log.info(
            "hot standby: replica seeded",
            snapshot_id=snap.id,
            snapshot_epoch=snap.epoch,
            snapshot_seq=snap.snapshot_seq,
            vertices=len(processor.graph),
        )
        return True

    async def follow(self) -> None:
        """Apply what the persistor committed since the last read."""
        assert self.processor is not None
        async with self.pool.acquire() as conn:
            self.dirt.advance(await evaluators_enabled(conn))
            try:
                await replay_log(
                    conn,
                    self.processor,
                    self.last_seq,
                    await log_end(conn),
                    self.seed_epoch,
                    RecoveryReport(),
                    on_record=self._applied,
                    takeover=False,
                )
            except ReplayGap as exc:
                self.drop(f"the log has a hole: {exc}")
                return
            fresh = await last_fresh_epoch(conn)
        if fresh is not None and fresh > self.seed_epoch:
            self.drop(f"epoch {fresh} started fresh after the replica's snapshot")
            return
        self.followed_at = time.time()

    def _applied(self, seq: int, epoch: int, event: dict[str, Any], changes: list[Any]) -> None:
        self.last_seq = seq
        if seq > self.log_seq:
            self.log_seq = seq
        self.last_epoch = epoch
        self.applied += 1
        self.dirt(seq, epoch, event, changes)

    def drop(self, reason: str) -> None:
        """Forget the replica; a later round seeds a new one from another snapshot."""
        log.warning("hot standby: replica dropped", reason=reason, snapshot_id=self.seed_id)
        self.processor = None
        self.dirty.clear()
        self.reason = reason
        self.state = "dropped"
        self._dropped_seed = self.seed_id

    def discard(self, reason: str) -> None:
        """A takeover does not use the replica: free its graph before loading another."""
        self.processor = None
        self.dirty.clear()
        self.reason = reason
        self.state = "not used"

    # ------------------------------------------------------------ the takeover
    async def usable(self, conn: asyncpg.Connection, epoch: int, max_seq: int) -> str | None:
        """Why the replica cannot be the new leader's graph after ``barrier(epoch)``
        answered ``max_seq``, or None if it can (called after :meth:`close`)."""
        if self.processor is None:
            return self.reason or "not seeded"
        fresh = await last_fresh_epoch(conn, epoch)
        if fresh is not None and fresh > self.seed_epoch:
            return f"epoch {fresh} started fresh after the replica's snapshot"
        if self.last_seq > max_seq:
            return f"replica at seq {self.last_seq}, past the log's end {max_seq}"
        if self.last_epoch is not None:
            logged = await conn.fetchval("SELECT epoch FROM events WHERE seq = $1", self.last_seq)
            if logged != self.last_epoch:
                return (
                    f"seq {self.last_seq} is epoch {logged} in the log, the replica applied"
                    f" epoch {self.last_epoch}"
                )
        return None

    def hand_over(self) -> Processor:
        """The replica, for the new leader (not kept here)."""
        assert self.processor is not None
        processor, self.processor = self.processor, None
        self.state = "handed over"
        return processor

    def seed_age_s(self) -> float:
        """How old the snapshot the replica was seeded from is now."""
        age, at = self._seed_aged
        return age + time.monotonic() - at

    def lag(self) -> int | None:
        """Records committed (as announced) that the replica has not applied; None
        without a replica."""
        if self.processor is None:
            return None
        return max(0, self.log_seq - self.last_seq)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "snapshot_id": self.seed_id,
            "snapshot_seq": self.seed_seq,
            "last_seq": self.last_seq,
            "lag_records": self.lag(),
            "applied": self.applied,
            "seeds": self.seeds,
            "dirty_vertices": len(self.dirty),
            "followed_at": self.followed_at,
        }
