"""The running collector: broker connection, get_all server and paced update stream.

Programmatic use (tests, benchmarks)::

    async with Collector(settings, generate_topology(cfg, seed)) as collector:
        await collector.publish_stream(1000)   # 1000 updates now, batched, confirmed
        counts = await collector.get_all()     # same as answering an RPC request

The ``collector-stub`` command is a thin CLI over this class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from collector_stub.publisher import EventPublisher
from collector_stub.rpc import GetAllServer
from collector_stub.stream import StreamConfig, UpdateStream
from collector_stub.topology import Topology, generate_topology, snapshot_events
from rca_common.broker import BrokerTopology, declare_topology
from rca_common.events import Action
from rca_common.logging import get_logger
from rca_common.settings import Settings

log = get_logger(__name__)

STREAM_FLUSH_EVENTS = 100


def stream_config_from_settings(settings: Settings, **overrides: Any) -> StreamConfig:
    """Seed and clock from the environment; an unset clock starts at the wall clock
    (to the millisecond), so a restarted collector's events are newer than its old ones."""
    now = datetime.now(UTC)
    start = settings.collector_clock_start or now.replace(
        microsecond=now.microsecond // 1000 * 1000
    )
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    fields: dict[str, Any] = {"seed": settings.collector_seed, "clock_start": start}
    fields.update(overrides)
    return StreamConfig(**fields)


class Collector:
    """One simulated datasource collector bound to a broker."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology | None = None,
        stream_config: StreamConfig | None = None,
        *,
        flush_events: int = STREAM_FLUSH_EVENTS,
    ) -> None:
        self.settings = settings
        self.topology = topology or generate_topology(seed=settings.collector_seed)
        self.stream = UpdateStream(
            self.topology, stream_config or stream_config_from_settings(settings)
        )
        self.broker = BrokerTopology.from_settings(settings)
        self.flush_events = flush_events
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._rpc_channel: AbstractChannel | None = None
        self._rpc_queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._publisher: EventPublisher | None = None
        self._server: GetAllServer | None = None
        self._rpc_idle = asyncio.Event()
        self._rpc_idle.set()
        self._streams = 0
        self._streams_idle = asyncio.Event()
        self._streams_idle.set()
        self._stopping = asyncio.Event()

    # --- lifecycle

    async def start(self) -> None:
        """Connect, declare the whole broker topology, and start serving get_all."""
        s = self.settings
        log.info(
            "collector starting",
            amqp=s.masked_amqp_url(),
            events_queue=s.events_queue,
            rpc_queue=s.collector_rpc_queue,
            entities=self.topology.total(),
            seed=self.stream.config.seed,
            clock_start=self.stream.clock.now_str(),
        )
        self.connection = await aio_pika.connect_robust(s.amqp_url)
        self._publish_channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._rpc_channel = await self.connection.channel()
        await self._rpc_channel.set_qos(prefetch_count=1)
        declared = await declare_topology(self._rpc_channel, self.broker)
        self._publisher = EventPublisher(
            self._publish_channel, s.events_queue, s.collector_batch_size
        )
        self._server = GetAllServer(self.stream, self._publisher, self._publish_channel)
        self._rpc_queue = declared.queues[self.broker.collector_rpc_queue.name]
        self._consumer_tag = await self._rpc_queue.consume(self._on_request)
        log.info("collector ready", counts=self.topology.counts())

    async def stop(self) -> None:
        """Stop streaming and serving; let an in-flight get_all finish; close."""
        self._stopping.set()
        if self.connection is None:
            return
        if self._rpc_queue is not None and self._consumer_tag is not None:
            try:
                await self._rpc_queue.cancel(self._consumer_tag)
            except Exception as exc:  # the connection may already be gone
                log.warning("could not cancel the get_all consumer", error=str(exc))
            self._consumer_tag = None
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                await self._streams_idle.wait()
                await self._rpc_idle.wait()
        except TimeoutError:
            log.warning("in-flight publishing did not finish; a get_all request is redelivered")
        await self.connection.close()
        self.connection = None
        log.info("collector stopped", stream_events=self.stream.emitted)

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Ask a running :meth:`run_stream` / :meth:`play_script` to finish (signal-safe)."""
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    @property
    def publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise RuntimeError("collector not started")
        return self._publisher

    @property
    def get_all_answered(self) -> int:
        return self._server.answered if self._server else 0

    # --- get_all

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        assert self._server is not None
        self._rpc_idle.clear()
        try:
            await self._server.handle(message)
        finally:
            self._rpc_idle.set()

    async def get_all(self, sources: Sequence[str] | None = None) -> dict[str, int]:
        """Publish a snapshot exactly as the RPC does, without a request/reply."""
        assert self._server is not None, "collector not started"
        return await self._server.get_all(list(sources) if sources is not None else None)

    # --- streaming

    async def publish_stream(self, n: int) -> list[dict[str, Any]]:
        """Emit the next ``n`` stream events now (unpaced); returns them once confirmed."""
        events = self.stream.take(n)
        for i in range(0, len(events), self.flush_events):
            await self._publish(events[i : i + self.flush_events])
        return events

    async def publish_initial(self) -> int:
        """Publish the current topology as ``update`` events (for consumers that never
        call get_all); stamped with the current logical time."""
        items = self.topology.snapshot_items()
        events = (
            e
            for e in snapshot_events(
                items,
                Action.UPDATE.value,
                self.stream.clock.now_str(),
                f"{self.stream.id_prefix}-i",
            )
            if e["action"] != Action.END_SNAPSHOT
        )
        n = await self.publisher.publish_all(events)
        log.info("initial topology published", events=n)
        return n

    async def play_script(self, events: Sequence[dict[str, Any]], rate: float = 0.0) -> int:
        """Play scripted events, paced at ``rate`` per second (0: as fast as possible)."""
        return await self._paced(iter(events), len(events), rate, scripted=True)

    async def run_stream(self, rate: float, count: int | None = None) -> int:
        """Stream updates at ``rate`` per second until stopped or ``count`` are sent.

        ``rate`` 0 streams nothing, unless ``count`` is given: then as fast as possible.
        """
        if rate <= 0 and count is None:
            return 0
        log.info("streaming", rate=rate, count=count)
        return await self._paced(self.stream, count, rate, scripted=False)

    async def _paced(self, source: Any, count: int | None, rate: float, *, scripted: bool) -> int:
        self._streams += 1
        self._streams_idle.clear()
        try:
            return await self._paced_inner(source, count, rate, scripted=scripted)
        finally:
            self._streams -= 1
            if not self._streams:
                self._streams_idle.set()

    async def _publish(self, batch: list[dict[str, Any]]) -> None:
        """Publish a stream batch, riding out a broker outage (the robust connection
        reconnects; a resent batch is harmless because consumers dedupe event ids)."""
        delay = 0.1
        while True:
            try:
                await self._publish_or_give_up(batch)
                return
            except Exception as exc:
                if self._stopping.is_set() or self.connection is None:
                    log.error("dropping unpublished stream events", events=len(batch))
                    raise
                log.warning("publish failed, retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)  # backoff while the connection recovers
                delay = min(delay * 2, 5.0)

    async def _publish_or_give_up(self, batch: list[dict[str, Any]]) -> None:
        """One publish; once a stop is asked for, it gets SHUTDOWN_TIMEOUT more at most
        (a publish waiting for a reconnect would otherwise hold the shutdown forever)."""
        publish = asyncio.ensure_future(self.publisher.publish(batch))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({publish, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not publish.done():
            try:
                await asyncio.wait_for(publish, self.settings.shutdown_timeout)
            except TimeoutError:
                raise ConnectionError("broker unreachable at shutdown") from None
        publish.result()

    async def _paced_inner(
        self, source: Any, count: int | None, rate: float, *, scripted: bool
    ) -> int:
        """Take events from ``source`` on schedule and publish them in small batches.

        A batch is flushed at ``flush_events`` events or ``COLLECTOR_FLUSH_INTERVAL``
        after its first event, whichever comes first; pacing uses the monotonic
        clock, never the event content.
        """
        loop = asyncio.get_running_loop()
        interval = self.settings.collector_flush_interval
        batch: list[dict[str, Any]] = []
        batch_started = 0.0
        sent = 0
        t0 = loop.time()
        exhausted = False
        while not self._stopping.is_set():
            now = loop.time()
            due = (count if count is not None else 1 << 62) - sent - len(batch)
            if rate > 0:
                due = min(due, int((now - t0) * rate) - sent - len(batch))
            for _ in range(max(due, 0)):
                event = next(source, None)
                if event is None:
                    exhausted = True
                    break
                if scripted:
                    self.stream.play(event)
                if not batch:
                    batch_started = now
                batch.append(event)
                if len(batch) >= self.flush_events:
                    await self._publish(batch)
                    sent += len(batch)
                    batch = []
            done = exhausted or (count is not None and sent + len(batch) >= count)
            if batch and (done or loop.time() - batch_started >= interval):
                await self._publish(batch)
                sent += len(batch)
                batch = []
            if done:
                break
            wake = t0 + (sent + len(batch) + 1) / rate if rate > 0 else loop.time()
            if batch:
                wake = min(wake, batch_started + interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(wake - loop.time(), 0.0))
        if batch:  # stopped: what was emitted into the model still goes out
            await self._publish(batch)
            sent += len(batch)
        log.info("stream finished", sent=sent, scripted=scripted)
        return sent
