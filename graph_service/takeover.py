"""The path from standby to active, shared by every start (with or without pacemaker).

standby (wait for the lock) → electing (open an epoch) → recovering (barrier,
snapshot, replay; or fresh get_all) → draining (the live queue) → active.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import TYPE_CHECKING

import aio_pika
import asyncpg

from graph_service.evaluation import ReplayDirt
from graph_service.ingest import Ingest
from graph_service.lifecycle import Phase
from graph_service.log_publisher import AmqpLogSink
from graph_service.processor import Processor
from graph_service.recovery import (
    RecoveryReport,
    ReplayGap,
    evaluators_enabled,
    last_fresh_epoch,
    log_end,
    record_fresh_start,
    replay_log,
    wait_for_barrier,
)
from graph_service.snapshot_schedule import SnapshotSchedule
from graph_service.snapshots import LoadedSnapshot, SnapshotPreloader, SnapshotStore
from rca_common.logging import get_logger
from rca_common.records import KIND_BARRIER, LogRecord, encode_records

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
        preloader = svc.preloader = self._start_preloader()
        try:
            await self._wait_for_lock()
        finally:
            svc.preloader = None
            if preloader is not None:
                await preloader.close()
        svc.lifecycle.enter(Phase.ELECTING)
        svc.epoch = await svc.leadership.open_epoch()
        svc.lifecycle.enter(Phase.RECOVERING, epoch=svc.epoch)
        report = svc.report = RecoveryReport()
        if self.settings.enable_persistency:
            preloaded = preloader.take() if preloader is not None else None
            last_seq = await self._recover_from_log(report, preloaded)
            del preloaded  # a whole graph: not kept by this frame either
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
        svc.lifecycle.enter(
            Phase.ACTIVE, mode=report.mode, vertices=len(svc.graph), last_seq=ingest.seq
        )
        svc.metrics.active.set(1)
        self._after_active(report, got_all)

    def _start_preloader(self) -> SnapshotPreloader | None:
        """While standing by, keep the newest snapshot decoded (see SnapshotPreloader)."""
        interval = self.settings.standby_preload_interval
        if not self.settings.enable_persistency or interval <= 0 or self.svc.pool is None:
            return None
        preloader = SnapshotPreloader(self.svc.pool, self._hmac_key(), interval)
        preloader.start()
        return preloader

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
        elif report.mode == "snapshot" and self.settings.reconcile_after_takeover:
            svc.spawn(svc.get_all(), "reconcile")
        if self.settings.enable_persistency:
            svc.snapshots = SnapshotSchedule(svc)
            svc.spawn(svc.snapshots.run(first_now=report.mode == "fresh"), "snapshots")

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
        ingest.on_outcome = lambda outcome: svc.evaluation.on_outcome(ingest, outcome)
        svc.ingest = ingest
        ingest.start(svc.declared.queues[svc.topology.events_queue.name])
        return ingest

    # ------------------------------------------------------------ from the log
    async def _recover_from_log(
        self, report: RecoveryReport, preloaded: LoadedSnapshot | None
    ) -> int:
        """Barrier, snapshot, replay. Returns the seq the new epoch continues from.
        ``preloaded``: the standby's decoded copy, used if it is the snapshot chosen."""
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
            svc.processor.import_state(snap.state["processor"])
            # The graph was unpickled with the collector paused: its millions of objects
            # are all "young", and the next collections would walk every one of them in
            # the middle of replay (measured: half of the replay time). It is long-lived
            # data without cycles: move it out of the collector's sight.
            gc.freeze()
            dirt = ReplayDirt(svc.evaluation, await evaluators_enabled(conn), max_seq)
            try:
                last = await replay_log(
                    conn,
                    svc.processor,
                    snap.snapshot_seq,
                    max_seq,
                    snap.epoch,
                    report,
                    on_record=dirt,
                )
                dirt.finish()
            except ReplayGap as exc:
                report.reason = f"replay failed: {exc}"
                log.error("replay failed: fresh start", reason=report.reason)
                svc.processor = Processor(
                    min_time_to_delete=self.settings.min_time_to_delete,
                    recent_capacity=self.settings.recent_event_ids,
                )
                svc.evaluation.dirty.clear()
                return max_seq
            report.mode = "snapshot"
            return last

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
                encode_records([barrier]), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            "",
            mandatory=True,
        )
        log.info("barrier published", epoch=svc.epoch)

    def _hmac_key(self) -> bytes | None:
        key = self.settings.snapshot_hmac_key
        return key.encode() if key else None
