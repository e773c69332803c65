"""The path from standby to active, shared by every start (with or without pacemaker).

standby (wait for the lock) → electing (open an epoch) → recovering (barrier,
snapshot, replay; or fresh get_all) → draining (the live queue) → active.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aio_pika
import asyncpg

from graph_service import crashpoints
from graph_service.evaluation import ReplayDirt
from graph_service.gc_policy import freeze_heap, gc_paused
from graph_service.hot_standby import HotStandby, StandbyConfig
from graph_service.ingest import Ingest
from graph_service.lifecycle import Phase
from graph_service.log_publisher import AmqpLogSink
from graph_service.log_replay import ReplayGap
from graph_service.processor import Processor
from graph_service.recovery import (
    RecoveryReport,
    evaluators_enabled,
    last_fresh_epoch,
    log_end,
    record_fresh_start,
    replay_log,
    wait_for_barrier,
)
from graph_service.snapshot_schedule import SnapshotSchedule
from graph_service.snapshots import SnapshotPreloader, SnapshotStore
from rca_common.logging import get_logger
from rca_common.records import CONTENT_TYPE, KIND_BARRIER, LogRecord, encode_records

if TYPE_CHECKING:
    from graph_service.service import GraphService

log = get_logger(__name__)


class Takeover:
    def __init__(self, service: GraphService) -> None:
        self.svc = service
        self.settings = service.settings

    async def run(self) -> None:
        svc = self.svc
        svc.lifecycle.enter(Phase.STANDBY)
        standby = svc.standby = self._start_standby()
        won = False
        try:
            await self._wait_for_lock()
            won = True
        finally:
            svc.standby = None
            if standby is not None:
                await standby.close(for_takeover=won)
        svc.lifecycle.enter(Phase.ELECTING)
        svc.epoch = await svc.leadership.open_epoch()
        svc.lifecycle.enter(Phase.RECOVERING, epoch=svc.epoch)
        report = svc.report = RecoveryReport()
        if self.settings.enable_persistency:
            last_seq = await self._recover_from_log(report, standby)
            del standby  # a whole graph: not kept by this frame either
            if report.mode == "fresh":
                assert svc.pool is not None
                async with svc.pool.acquire() as conn:
                    await record_fresh_start(conn, svc.epoch, last_seq)
        else:
            report.reason = "persistency disabled"
            last_seq = 0
        ingest = self._start_ingest(last_seq)
        got_all = True
        if report.mode == "fresh":
            got_all = await svc.get_all()
        svc.lifecycle.enter(Phase.DRAINING, mode=report.mode)
        drain_started = ingest.drained_events
        await ingest.drain("draining")
        report.drained_events = ingest.drained_events - drain_started
        svc.evaluation.enable(
            ingest, f"{report.mode}/{svc.epoch}", whole_graph=report.mode == "fresh"
        )
        await self._record_evaluators_enabled(ingest.seq)
        freeze_heap(f"active ({report.mode})")  # the graph is built: see gc_policy
        svc.lifecycle.enter(
            Phase.ACTIVE, mode=report.mode, vertices=len(svc.graph), last_seq=ingest.seq
        )
        svc.metrics.active.set(1)
        self._after_active(report, got_all)

    def _start_standby(self) -> HotStandby | SnapshotPreloader | None:
        """While standing by, keep a replica current from the log (HOT_STANDBY), or else
        keep the newest snapshot decoded (see SnapshotPreloader)."""
        s = self.settings
        interval = s.standby_preload_interval
        pool = self.svc.pool
        if not s.enable_persistency or pool is None:
            return None
        standby: HotStandby | SnapshotPreloader
        if s.hot_standby:
            every = interval if interval > 0 else 2.0
            config = StandbyConfig(
                dsn=s.database_url,
                schema=s.db_schema,
                hmac_key=self._hmac_key(),
                max_snapshot_age_s=s.snapshot_interval,
                poll_interval=every,
                retry_interval=every,
                min_time_to_delete=s.min_time_to_delete,
                recent_capacity=s.recent_event_ids,
            )
            standby = HotStandby(pool, config)
        elif interval > 0:
            standby = SnapshotPreloader(pool, self._hmac_key(), interval)
        else:
            return None
        standby.start()
        return standby

    async def _wait_for_lock(self) -> None:
        """Standby: wait for the lock; a lost database connection is retried, not fatal."""
        delay = 0.5
        while True:
            try:
                await self.svc.leadership.wait_for_lock()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("standby: database unreachable, retrying", error=repr(exc),
                            retry_in_s=delay)  # fmt: skip
                await asyncio.sleep(delay)  # backoff before reconnecting
                delay = min(delay * 2, 10.0)

    def _after_active(self, report: RecoveryReport, got_all: bool) -> None:
        svc = self.svc
        if not got_all:
            svc.spawn(svc.retry_get_all(), "get_all-retry")
        elif report.mode != "fresh" and self.settings.reconcile_after_takeover:
            svc.spawn(svc.get_all(), "reconcile")
        if self.settings.enable_persistency:
            svc.snapshots = SnapshotSchedule(svc)
            svc.spawn(svc.snapshots.run(), "snapshots")

    def _start_ingest(self, last_seq: int) -> Ingest:
        svc = self.svc
        assert svc.consume_channel is not None and svc.declared is not None
        assert svc.epoch is not None and svc.processed_exchange is not None
        assert svc.publish_channel is not None
        ingest = Ingest(
            svc.processor,
            svc.publish_channel,  # markers and dead letters: returns raise
            svc.topology,
            svc.metrics,
            epoch=svc.epoch,
            last_seq=last_seq,
        )
        if self.settings.enable_persistency:
            sink = AmqpLogSink(
                svc.processed_exchange,
                on_confirm=ingest.on_confirm,
                on_failure=lambda exc: svc.fence(f"record log failed: {exc!r}"),
                batch_max=self.settings.log_batch_max,
                batch_delay=self.settings.log_batch_delay,
                max_unconfirmed=self.settings.log_max_unconfirmed,
            )
            sink.start_at(last_seq)
            ingest.sink = sink
        if svc.evaluation.templates:
            # Without templates there is nothing to evaluate nor to mark dirty: the hook
            # would cost every event a call for nothing.
            ingest.on_outcome = lambda outcome: svc.evaluation.on_outcome(ingest, outcome)
        svc.ingest = ingest
        ingest.start(svc.declared.queues[svc.topology.events_queue.name])
        return ingest

    # ------------------------------------------------------------ from the log
    async def _recover_from_log(
        self, report: RecoveryReport, standby: HotStandby | SnapshotPreloader | None
    ) -> int:
        """Barrier, then the hot standby's replica and the log after it, or else a
        snapshot and the log after it. Returns the seq the new epoch continues from.
        A preloader's snapshot is used if it is the snapshot chosen."""
        svc = self.svc
        assert svc.pool is not None and svc.epoch is not None
        async with svc.pool.acquire() as conn:
            started = time.monotonic()
            max_seq = await wait_for_barrier(
                conn,
                self.settings.db_schema,
                svc.epoch,
                self._publish_barrier,
                self.settings.barrier_timeout,
            )
            report.barrier_wait_s = round(time.monotonic() - started, 6)
            if max_seq is None:
                report.reason = (
                    f"persistor did not commit barrier({svc.epoch}) within "
                    f"{self.settings.barrier_timeout}s"
                )
                log.error("barrier timeout: fresh start", reason=report.reason)
                return await log_end(conn)
            report.barrier_max_seq = max_seq
            preloaded = None
            if isinstance(standby, HotStandby):
                unusable = await standby.usable(conn, svc.epoch, max_seq)
                if unusable is None:
                    try:
                        return await self._recover_from_replica(conn, report, standby, max_seq)
                    except ReplayGap as exc:  # after the replica: a snapshot after it may do
                        unusable = f"replay after the replica failed: {exc}"
                        self._forget_recovery(report)
                standby.discard(unusable)  # its graph is freed before a snapshot is loaded
                report.extra["hot_standby_unused"] = unusable
                log.info("hot standby replica not used", reason=unusable)
            elif standby is not None:
                preloaded = standby.take()
            del standby
            store = SnapshotStore(conn)
            snap = await store.load_newest(
                self._hmac_key(),
                self.settings.snapshot_interval,
                max_seq=max_seq,
                preloaded=preloaded,
                min_epoch=await last_fresh_epoch(conn, svc.epoch),
            )
            del preloaded  # not kept past the choice: it is a whole graph
            if snap is None:
                report.reason = "no usable snapshot"
                log.info("fresh start", reason=report.reason)
                return max_seq
            report.snapshot_id = snap.id
            report.snapshot_seq = snap.snapshot_seq
            report.snapshot_epoch = snap.epoch
            report.snapshot_age_s = round(snap.age_s, 3)
            report.snapshot_load_s = round(snap.decode_s, 6)
            report.extra["snapshot_preloaded"] = snap.preloaded
            dirt = ReplayDirt(svc.evaluation.dirty, await evaluators_enabled(conn))
            # without templates no vertex is ever evaluated: nothing to mark dirty
            mark = dirt if svc.evaluation.templates else None
            crashpoints.hit("replay")  # the drill's kill in recovery
            try:
                # The collector paused from the restore to the end of the replay. The
                # snapshot was unpickled with it paused (its millions of objects are all
                # "young"), and the replay builds long-lived, acyclic containers: it
                # would walk them again and again, freeing nothing (measured: half of
                # the replay time without the freeze below; with the shipped templates,
                # 47 collections, 0.2 of 1.9 s). All of it is frozen before the
                # collector is back. The registry is indexed once, at the replay's end:
                # nothing reads it before the evaluators are enabled.
                with gc_paused():
                    with svc.processor.registry_indexed_after():
                        svc.processor.import_state(snap.state["processor"])
                        last = await replay_log(conn, svc.processor, snap.snapshot_seq,
                                                max_seq, snap.epoch, report,
                                                on_record=mark)  # fmt: skip
                    freeze_heap("snapshot restored, log replayed")
            except ReplayGap as exc:
                report.reason = f"replay failed: {exc}"
                log.error("replay failed: fresh start", reason=report.reason)
                self._forget_recovery(report)
                return max_seq
            if mark is not None:
                mark.finish()
            report.mode = "snapshot"
            return last

    async def _recover_from_replica(
        self, conn: asyncpg.Connection, report: RecoveryReport, standby: HotStandby, max_seq: int
    ) -> int:
        """The hot standby's replica becomes the graph; only the log after its last read
        is replayed (what the persistor committed since, up to the barrier)."""
        svc = self.svc
        report.snapshot_id = standby.seed_id
        report.snapshot_seq = standby.seed_seq
        report.snapshot_epoch = standby.seed_epoch
        report.snapshot_age_s = round(standby.seed_age_s(), 3)  # no limit: the replica is current
        report.extra["hot_standby"] = {"applied": standby.applied, "last_seq": standby.last_seq}
        after = standby.last_seq
        svc.processor = standby.hand_over()
        dirt = standby.dirt
        mark = dirt if svc.evaluation.templates else None  # as after a snapshot
        if mark is not None:
            dirt.advance(await evaluators_enabled(conn))
            svc.evaluation.dirty.update(standby.dirty)
            dirt.dirty = svc.evaluation.dirty
        crashpoints.hit("replay")  # the drill's kill in recovery, even with nothing to replay
        last = await replay_log(conn, svc.processor, after, max_seq, standby.seed_epoch, report,
                                on_record=mark)  # fmt: skip
        if mark is not None:
            mark.finish()
        report.mode = "hot"
        return last

    def _forget_recovery(self, report: RecoveryReport) -> None:
        """Back to an empty graph and a blank report, to recover another way."""
        svc = self.svc
        svc.processor = Processor(
            min_time_to_delete=self.settings.min_time_to_delete,
            recent_capacity=self.settings.recent_event_ids,
        )
        svc.evaluation.dirty.clear()
        for name in ("snapshot_id", "snapshot_seq", "snapshot_epoch", "snapshot_age_s"):
            setattr(report, name, None)
        report.replay_s = report.replay_rate = None
        report.replayed = report.replay_skipped_stale = 0
        report.extra.pop("hot_standby", None)

    async def _record_evaluators_enabled(self, seq: int) -> None:
        """Tell the next leader from which seq on our records were evaluated live."""
        svc = self.svc
        assert svc.pool is not None
        await svc.pool.execute(
            "UPDATE leader_epochs SET evaluators_enabled_seq = $1 WHERE epoch = $2",
            seq,
            svc.epoch,
        )

    async def _publish_barrier(self) -> None:
        svc = self.svc
        assert svc.processed_exchange is not None and svc.epoch is not None
        barrier = LogRecord(0, svc.epoch, time.time(), {}, [], kind=KIND_BARRIER)
        await svc.processed_exchange.publish(
            aio_pika.Message(
                encode_records([barrier]),
                content_type=CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            "",
            mandatory=True,
        )
        log.info("barrier published", epoch=svc.epoch)

    def _hmac_key(self) -> bytes | None:
        key = self.settings.snapshot_hmac_key
        return key.encode() if key else None
