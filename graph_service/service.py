"""The graph service: wires broker, processor, ingest loop and HTTP API together.

Start order: connect → declare the whole broker topology → HTTP up (healthz
answers from the first second) → leadership → recovery → active. Stop order is
the reverse, in two stages (stop taking work, then wait for in-flight work with
a bound). The phases are the :class:`Lifecycle` state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiohttp import web

from graph_service.entity_graph import EntityGraph
from graph_service.http_api import create_app
from graph_service.ingest import Ingest
from graph_service.lifecycle import Lifecycle, Phase
from graph_service.metrics import Metrics
from graph_service.processor import Processor
from graph_service.rpc_client import GetAllClient, RpcError
from rca_common.broker import BrokerTopology, DeclaredTopology, declare_topology
from rca_common.logging import get_logger
from rca_common.settings import Settings

log = get_logger(__name__)

GAUGE_INTERVAL = 2.0


class GraphService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.processor = Processor(
            min_time_to_delete=settings.min_time_to_delete,
            recent_capacity=settings.recent_event_ids,
        )
        self.topology = BrokerTopology.from_settings(settings)
        self.get_all_state: dict[str, Any] = {"state": "not requested"}
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self._connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractChannel | None = None
        self._declared: DeclaredTopology | None = None
        self._ingest: Ingest | None = None
        self._rpc: GetAllClient | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.http_port: int | None = None

    # ------------------------------------------------------------------ views
    @property
    def graph(self) -> EntityGraph:
        return self.processor.graph

    def is_ready(self) -> bool:
        return self.lifecycle.is_active

    def status(self) -> dict[str, Any]:
        ingest = self._ingest
        return {
            **self.lifecycle.as_dict(),
            "role": "active" if self.lifecycle.is_active else self.lifecycle.phase.value,
            "epoch": ingest.epoch if ingest else None,
            "last_seq": ingest.seq if ingest else None,
            "confirmed_seq": ingest.sink.confirmed_seq if ingest else None,
            "vertices": len(self.graph),
            "edges": self.graph.edge_count,
            "last_event_at": ingest.last_event_at if ingest else None,
            "last_sample_timestamp": ingest.last_sample_ts if ingest else None,
            "get_all": self.get_all_state,
            "end_snapshots": dict(ingest.end_snapshots) if ingest else {},
            "persistency": self.settings.enable_persistency,
        }

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        log.info("starting", amqp=s.masked_amqp_url(), events_queue=s.events_queue)
        self._connection = await aio_pika.connect_robust(s.amqp_url)
        self._consume_channel = await self._connection.channel()
        await self._consume_channel.set_qos(prefetch_count=s.prefetch)
        self._declared = await declare_topology(self._consume_channel, self.topology)
        rpc_channel = await self._connection.channel()
        self._rpc = GetAllClient(rpc_channel, self.topology.collector_rpc_queue.name)
        await self._rpc.start()
        await self._start_http()
        self._spawn(self._gauges(), "gauges")
        self._spawn(self._become_active(), "lifecycle")

    async def _start_http(self) -> None:
        self._runner = web.AppRunner(create_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.http_port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("http listening", host=self.settings.http_host, port=self.http_port)

    async def _become_active(self) -> None:
        """Leadership, recovery, drain, active: the startup path of every instance."""
        try:
            self.lifecycle.enter(Phase.ELECTING)
            await self._recover_fresh()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("startup failed")
            self.exit_code = 1
            self.stopped.set()

    async def _recover_fresh(self) -> None:
        """Fresh start: empty graph, get_all, process, drain, then active."""
        assert self._consume_channel is not None and self._declared is not None
        self.lifecycle.enter(Phase.RECOVERING, mode="fresh")
        self.lifecycle.info["recovery"] = {"mode": "fresh"}
        ingest = Ingest(self.processor, self._consume_channel, self.topology, self.metrics)
        self._ingest = ingest
        ingest.start(self._declared.queues[self.topology.events_queue.name])
        ok = await self._get_all()
        self.lifecycle.enter(Phase.DRAINING)
        await ingest.drain(self.settings.get_all_timeout)
        self.lifecycle.enter(Phase.ACTIVE, vertices=len(self.graph))
        self.metrics.active.set(1)
        if not ok:
            self._spawn(self._retry_get_all(), "get_all-retry")

    async def _get_all(self) -> bool:
        """One get_all round trip; returns False (and says so in /status) on timeout."""
        assert self._rpc is not None and self._ingest is not None
        started = time.monotonic()
        self.get_all_state = {"state": "requested", "requested_at": time.time()}
        log.info("get_all requested", timeout_s=self.settings.get_all_timeout)
        try:
            counts = await self._rpc.get_all(self.settings.get_all_timeout)
            # The collector replied after publishing everything: a drain marker
            # published now lands behind all of it.
            await self._ingest.drain(self.settings.get_all_timeout)
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
        return True

    async def _retry_get_all(self) -> None:
        """Background retries after a failed get_all, until one succeeds or we stop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopped.wait(), timeout=self.settings.get_all_retry_interval
                )
                return
            if await self._get_all():
                return

    async def _gauges(self) -> None:
        """Refresh graph and queue gauges; the wait doubles as the stop signal."""
        assert self._consume_channel is not None
        while not self.stopped.is_set():
            self.metrics.vertices.set(len(self.graph))
            self.metrics.edges.set(self.graph.edge_count)
            if self._ingest is not None:
                self.metrics.last_seq.set(self._ingest.seq)
            with contextlib.suppress(Exception):
                q = await self._consume_channel.declare_queue(
                    self.topology.events_queue.name, passive=True
                )
                self.metrics.queue_depth.set(q.declaration_result.message_count or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), GAUGE_INTERVAL)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Two-stage shutdown: stop consuming, finish in-flight work (bounded), close."""
        if self.lifecycle.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        self.lifecycle.enter(Phase.STOPPING)
        self.metrics.active.set(0)
        self.stopped.set()
        if self._ingest is not None:
            await self._ingest.stop(self.settings.shutdown_timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._rpc is not None:
            await self._rpc.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._connection is not None:
            await self._connection.close()
        self.lifecycle.enter(Phase.STOPPED)
