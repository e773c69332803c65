"""The graph service: wires broker, database, processor, ingest loop and HTTP API.

Start order: connect → declare the whole broker topology → HTTP up (healthz
answers from the first second) → standby until the leader lock is ours →
recovery → drain → active. Stop order is the reverse, in two stages (stop
taking work, then wait for in-flight work with a bound). The phases are the
:class:`Lifecycle` state machine; :mod:`graph_service.takeover` runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiohttp import web

from graph_service.entity_graph import EntityGraph
from graph_service.evaluation import Evaluation
from graph_service.gc_policy import GcTimer
from graph_service.hot_standby import HotStandby
from graph_service.http_api import create_app
from graph_service.ingest import Ingest
from graph_service.leadership import Leadership
from graph_service.lifecycle import Lifecycle, Phase
from graph_service.metrics import Metrics
from graph_service.processor import Processor
from graph_service.recovery import RecoveryReport
from graph_service.rpc_client import GetAllClient, RpcError
from graph_service.snapshot_schedule import SnapshotSchedule
from graph_service.snapshots import SnapshotPreloader
from graph_service.takeover import Takeover
from rca_common import compiled, db
from rca_common.broker import BrokerTopology, DeclaredTopology, declare_topology
from rca_common.logging import get_logger
from rca_common.settings import Settings

log = get_logger(__name__)

GAUGE_INTERVAL = 2.0
EXIT_FENCED = 3  # lost leadership or the record log: the supervisor restarts us as standby


class GraphService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.gc_timer = GcTimer()
        self.compiled = compiled.status()  # which of the pure core runs compiled (setup.py)
        self.processor = Processor(
            min_time_to_delete=settings.min_time_to_delete,
            recent_capacity=settings.recent_event_ids,
        )
        self.topology = BrokerTopology.from_settings(settings)
        self.get_all_state: dict[str, Any] = {"state": "not requested"}
        self.report = RecoveryReport()
        self.evaluation = Evaluation(settings.templates_dir)
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.epoch: int | None = None
        self.connection: AbstractRobustConnection | None = None
        self.consume_channel: AbstractChannel | None = None
        self.publish_channel: AbstractChannel | None = None
        self.processed_exchange: AbstractExchange | None = None
        self.declared: DeclaredTopology | None = None
        self.pool: asyncpg.Pool | None = None
        self.standby: HotStandby | SnapshotPreloader | None = None  # while standing by
        self.leadership = Leadership(settings, on_lost=self.fence)
        self.ingest: Ingest | None = None
        self.rpc: GetAllClient | None = None
        self.snapshot_state: dict[str, Any] = {"state": "none taken"}
        self.snapshots: SnapshotSchedule | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.http_port: int | None = None

    # ------------------------------------------------------------------ views
    @property
    def graph(self) -> EntityGraph:
        return self.processor.graph

    def phase(self) -> str:
        return self.lifecycle.phase.value

    def is_ready(self) -> bool:
        return self.lifecycle.is_active and self.evaluation.enabled

    def request_snapshot(self) -> bool:
        if self.snapshots is None or not self.lifecycle.is_active:
            return False
        self.snapshots.request()
        return True

    def status(self) -> dict[str, Any]:
        ingest = self.ingest
        return {
            **self.lifecycle.as_dict(),
            "role": "active" if self.lifecycle.is_active else self.lifecycle.phase.value,
            "epoch": self.epoch,
            "last_seq": ingest.seq if ingest else None,
            "confirmed_seq": ingest.sink.confirmed_seq if ingest else None,
            "unacked_messages": ingest.tracker.pending if ingest else None,
            "vertices": len(self.graph),
            "edges": self.graph.edge_count,
            "last_event_at": ingest.last_event_at if ingest else None,
            "last_sample_timestamp": ingest.last_sample_ts if ingest else None,
            "recovery": self.report.as_dict(),
            "evaluators": self.evaluation.status(),
            "get_all": self.get_all_state,
            "snapshot": self.snapshot_state,
            "end_snapshots": dict(ingest.end_snapshots) if ingest else {},
            "persistency": self.settings.enable_persistency,
            "gc": self.gc_timer.status(),
            "compiled": self.compiled,
            **({self.standby.STATUS_KEY: self.standby.status()} if self.standby else {}),
        }

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        log.info(
            "starting",
            amqp=s.masked_amqp_url(),
            database=s.masked_database_url(),
            schema=s.db_schema,
            events_queue=s.events_queue,
            persistency=s.enable_persistency,
            compiled=self.compiled["modules"],
        )
        if self.compiled["stale"]:
            log.warning(
                "compiled modules older than their source: run make build",
                stale=self.compiled["stale"],
            )
        self.evaluation.load()
        self.connection = await aio_pika.connect_robust(s.amqp_url)
        self.consume_channel = await self.connection.channel()
        await self.consume_channel.set_qos(prefetch_count=s.prefetch)
        self.declared = await declare_topology(self.consume_channel, self.topology)
        self.publish_channel = await self.connection.channel(on_return_raises=True)
        self.processed_exchange = await self.publish_channel.declare_exchange(
            self.topology.processed_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        self.rpc = GetAllClient(
            await self.connection.channel(), self.topology.collector_rpc_queue.name
        )
        await self.rpc.start()
        self.pool = await db.create_pool(s.database_url, s.db_schema, min_size=1, max_size=4)
        await self._start_http()
        self.spawn(self._gauges(), "gauges")
        self.spawn(Takeover(self).run(), "takeover")

    async def _start_http(self) -> None:
        self._runner = web.AppRunner(create_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.http_port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("http listening", host=self.settings.http_host, port=self.http_port)

    # ---------------------------------------------------------------- get_all
    async def get_all(self) -> bool:
        """One get_all round trip and the drain behind it; False (shown in /status) on failure."""
        assert self.rpc is not None and self.ingest is not None
        started = time.monotonic()
        self.get_all_state = {"state": "requested", "requested_at": time.time()}
        log.info("get_all requested", timeout_s=self.settings.get_all_timeout)
        try:
            counts = await self.rpc.get_all(self.settings.get_all_timeout)
            # The collector replied after publishing everything: a drain marker
            # published now lands behind all of it.
            await self.ingest.drain("get_all")
        except (TimeoutError, RpcError) as exc:
            reason = "no collector answered" if isinstance(exc, TimeoutError) else str(exc)
            self.get_all_state = {
                "state": "failed",
                "reason": reason,
                "retrying_every_s": self.settings.get_all_retry_interval,
                "at": time.time(),
            }
            log.warning("get_all failed; serving what we have", reason=reason)
            return False
        duration = time.monotonic() - started
        self.get_all_state = {
            "state": "done",
            "sources": counts,
            "entities": sum(counts.values()),
            "duration_s": round(duration, 3),
            "at": time.time(),
        }
        log.info("get_all done", entities=sum(counts.values()), duration_s=round(duration, 3))
        if self.snapshots is not None:
            self.snapshots.request()
        return True

    async def retry_get_all(self) -> None:
        """Background retries after a failed get_all, until one succeeds or we stop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopped.wait(), timeout=self.settings.get_all_retry_interval
                )
                return
            if await self.get_all():
                return

    async def _gauges(self) -> None:
        """Refresh graph and queue gauges; the wait doubles as the stop signal."""
        assert self.consume_channel is not None
        while not self.stopped.is_set():
            self.metrics.vertices.set(len(self.graph))
            self.metrics.edges.set(self.graph.edge_count)
            if self.ingest is not None:
                self.metrics.last_seq.set(self.ingest.seq)
            lag = self.standby.lag() if isinstance(self.standby, HotStandby) else None
            self.metrics.standby_lag.set(-1 if lag is None else lag)
            with contextlib.suppress(Exception):
                q = await self.consume_channel.declare_queue(
                    self.topology.events_queue.name, passive=True
                )
                self.metrics.queue_depth.set(q.declaration_result.message_count or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), GAUGE_INTERVAL)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", task=task.get_name(), exc_info=task.exception())
            if task.get_name() == "takeover":
                self.exit_code = 1
                self.stopped.set()

    # ------------------------------------------------------------------- stop
    def fence(self, reason: str) -> None:
        """Stop processing at once and exit non-zero (lost leadership or log)."""
        if self.exit_code == EXIT_FENCED:
            return
        log.error("fencing: processing stopped", reason=reason)
        self.exit_code = EXIT_FENCED
        if self.ingest is not None:
            self.ingest.halt()
        self.metrics.active.set(0)
        self.stopped.set()

    async def stop(self) -> None:
        """Two-stage shutdown: stop consuming, finish in-flight work (bounded), close."""
        if self.lifecycle.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        self.lifecycle.enter(Phase.STOPPING)
        self.metrics.active.set(0)
        self.stopped.set()
        if self.ingest is not None and self.exit_code != EXIT_FENCED:
            await self.ingest.stop(self.settings.shutdown_timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.leadership.release()
        if self.rpc is not None:
            await self.rpc.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
        if self.connection is not None:
            await self.connection.close()
        self.gc_timer.close()
        self.lifecycle.enter(Phase.STOPPED, exit_code=self.exit_code)
