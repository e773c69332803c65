"""The ingest loop: collector messages in, in order, through the processor.

One consumer, one ``async for`` over the events queue: order is the queue's
order. Each message may hold many events. Every accepted event gets the next
``seq`` and becomes a record handed to the log sink; the message is acked only
when the sink has confirmed every record up to the message's last one
(invariant 2). Malformed messages and events go to the dead-letter queue with
their reason and are acked after that publish is confirmed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from aio_pika import Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from graph_service import crashpoints
from graph_service.metrics import Metrics
from graph_service.processor import Outcome, Processor, Status
from graph_service.transformers import MalformedEvent
from rca_common.broker import BrokerTopology, dead_letter
from rca_common.events import Event, MalformedMessage, decode_wire
from rca_common.logging import get_logger

log = get_logger(__name__)

MARKER_HEADER = "x-rca-marker"
YIELD_EVERY = 0.02  # seconds of processing between two turns of the event loop


class LogSink(Protocol):
    """Where records go. ``confirmed_seq`` only grows; ``on_confirm`` is told when it does.
    A sink that does not keep records (``keeps_records`` false) is told each seq by
    :meth:`skip`, so that no record is built for it."""

    confirmed_seq: int
    keeps_records: bool

    def append(
        self,
        seq: int,
        epoch: int,
        processed_at: float,
        event: dict[str, Any],
        changes: list[list[Any]],
    ) -> None: ...

    def skip(self, seq: int) -> None: ...

    async def wait_for_room(self) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


class ImmediateSink:
    """Persistency off: nothing is published, every seq counts as confirmed at once."""

    keeps_records = False  # the ingest loop builds no record for it

    def __init__(self, on_confirm: Callable[[int], None]) -> None:
        self.confirmed_seq = 0
        self._on_confirm = on_confirm

    def append(
        self,
        seq: int,
        epoch: int,
        processed_at: float,
        event: dict[str, Any],
        changes: list[list[Any]],
    ) -> None:
        self.skip(seq)

    def skip(self, seq: int) -> None:
        self.confirmed_seq = seq
        self._on_confirm(seq)

    async def wait_for_room(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class AckTracker:
    """Acks collector messages once every record they produced is confirmed.

    Messages are registered in delivery order with the seq of their last record;
    a confirm up to ``seq`` acks, with ``multiple=True``, the newest message whose
    records are all confirmed.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[int, AbstractIncomingMessage]] = deque()
        self._confirmed = 0
        self.acked = 0

    def add(self, message: AbstractIncomingMessage, last_seq: int) -> None:
        self._pending.append((last_seq, message))
        if last_seq <= self._confirmed:
            self.confirmed(self._confirmed)

    def confirmed(self, seq: int) -> None:
        self._confirmed = max(self._confirmed, seq)
        last: AbstractIncomingMessage | None = None
        while self._pending and self._pending[0][0] <= self._confirmed:
            last = self._pending.popleft()[1]
            self.acked += 1
        if last is not None:
            crashpoints.hit("before_ack")
            task = asyncio.ensure_future(last.ack(multiple=True))
            task.add_done_callback(_log_ack_failure)

    @property
    def pending(self) -> int:
        return len(self._pending)


def _log_ack_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ack failed", error=repr(task.exception()))


class Ingest:
    """Drives the processor from the events queue and hands records to the sink."""

    def __init__(
        self,
        processor: Processor,
        channel: AbstractChannel,
        topology: BrokerTopology,
        metrics: Metrics,
        epoch: int = 0,
        last_seq: int = 0,
    ) -> None:
        self.processor = processor
        self.channel = channel
        self.topology = topology
        self.metrics = metrics
        self.epoch = epoch
        self.seq = last_seq
        self.tracker = AckTracker()
        self.tracker.confirmed(last_seq)
        self.sink: LogSink = ImmediateSink(self.on_confirm)
        self._confirm_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.drained_events = 0  # events handled since the consumer started
        self.on_outcome: Callable[[Outcome], None] | None = None  # the evaluator's hook
        self.last_event_at: float | None = None
        self._last_sample: datetime | None = None
        # (entity type, status) -> its child of the events counter (labels() is slow)
        self._counters: dict[tuple[str, Status], Any] = {}
        # (entity type, status) -> events not yet added to it: a counter's inc takes a
        # lock, so the counts go in once per message (:meth:`_count`), not per event
        self._uncounted: dict[tuple[str, Status], int] = {}
        self.end_snapshots: dict[str, int] = {}
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._consumer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_yield = time.perf_counter()

    # ---------------------------------------------------------------- running
    def start(self, queue: AbstractQueue) -> None:
        self._consumer = asyncio.create_task(self._consume(queue), name="ingest")

    async def _consume(self, queue: AbstractQueue) -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                await self.handle(message)
                if self._stopping.is_set():
                    break
                if time.perf_counter() - self._last_yield > YIELD_EVERY:
                    await self._yield()

    async def _yield(self) -> None:
        """Let the loop run between events: the leader watchdog, publisher confirms and
        the HTTP API must not wait for a backlog (buffered deliveries never suspend)."""
        await asyncio.sleep(0)
        self._last_yield = time.perf_counter()

    def halt(self) -> None:
        """Self-fencing: stop at once; nothing more is processed, published or acked."""
        self._stopping.set()
        self.sink.close()
        if self._consumer is not None:
            self._consumer.cancel()

    async def stop(self, timeout: float) -> None:
        """Stage one: stop taking messages; stage two: wait for confirms, bounded."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(self.sink.flush()), timeout)
        except TimeoutError:
            log.warning(
                "shutdown: records still unconfirmed",
                unconfirmed=self.seq - self.sink.confirmed_seq,
            )

    @property
    def last_sample_ts(self) -> str | None:
        """The sample timestamp of the last logged event (for ``/status``)."""
        return None if self._last_sample is None else self._last_sample.isoformat()

    @property
    def running(self) -> bool:
        return self._consumer is not None and not self._consumer.done()

    # ---------------------------------------------------------------- confirms
    def on_confirm(self, seq: int) -> None:
        """The sink confirmed every record up to ``seq``: ack and wake waiters."""
        self.tracker.confirmed(seq)
        if self._confirm_waiters:
            still = []
            for want, fut in self._confirm_waiters:
                if want <= seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((want, fut))
            self._confirm_waiters = still

    async def wait_confirmed(self, seq: int) -> None:
        """Until every record up to ``seq`` is confirmed (snapshots wait for this)."""
        if self.sink.confirmed_seq >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm_waiters.append((seq, fut))
        await fut

    # ---------------------------------------------------------------- markers
    async def drain(self, what: str = "drain", progress_every: float = 5.0) -> None:
        """Wait until everything queued before now has been processed.

        Publishes a marker message into the events queue and waits for the
        consumer to reach it: the queue is FIFO, so every message ahead of the
        marker has been handled. No polling of queue depths. A long backlog is
        not an error: progress is logged, and a stall (nothing processed for a
        whole interval) is logged as a warning.
        """
        token = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[token] = fut
        await self.channel.default_exchange.publish(
            Message(b"[]", headers={MARKER_HEADER: token}),
            routing_key=self.topology.events_queue.name,
        )
        started, seen = time.monotonic(), self.drained_events
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), progress_every)
                    return
                except TimeoutError:
                    moved = self.drained_events - seen
                    seen = self.drained_events
                    (log.warning if moved == 0 else log.info)(
                        f"{what}: waiting for the queue" + (" (stalled)" if moved == 0 else ""),
                        events_in_interval=moved,
                        rate_per_s=round(moved / progress_every),
                        waited_s=round(time.monotonic() - started, 1),
                    )
                    if not self.running:
                        raise RuntimeError("ingest stopped while draining") from None
        finally:
            self._markers.pop(token, None)

    # ---------------------------------------------------------------- messages
    async def handle(self, message: AbstractIncomingMessage) -> None:
        await self.sink.wait_for_room()
        headers = message.headers or {}
        token = headers.get(MARKER_HEADER)
        if token is not None:
            self.tracker.add(message, self.seq)
            fut = self._markers.get(str(token))
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        started = time.perf_counter()
        try:
            events, wires = decode_wire(message.body)
        except MalformedMessage as exc:
            await self._dead_letter(message.body, exc.reason)
            self.tracker.add(message, self.seq)
            return
        for i, event in enumerate(events):
            if time.perf_counter() - self._last_yield > YIELD_EVERY:
                await self._yield()
            try:
                outcome = self.processor.process(event)
            except MalformedEvent as exc:
                await self._dead_letter(orjson.dumps(event.to_wire()), exc.reason)
                continue
            # the received dict is the event's wire form when it was canonical
            self._accept(outcome, None if wires is None else wires[i])
        self._count()
        self.tracker.add(message, self.seq)
        self.metrics.batch_latency.observe(time.perf_counter() - started)
        if self._last_sample is not None:
            self.metrics.lag.set(max(0.0, time.time() - self._last_sample.timestamp()))

    def _accept(self, outcome: Outcome, wire: dict[str, Any] | None = None) -> None:
        """Sequence an outcome and hand its record to the sink: per event, so keep it lean
        (the lag gauge and the last sample time are set per message, in :meth:`handle`).
        ``wire`` is the event's wire form when the caller has it already."""
        event = outcome.event
        f = event.__dict__  # the model's fields, without BaseModel.__getattr__'s slot
        key = (f["entity_type"], outcome.status)
        self._uncounted[key] = self._uncounted.get(key, 0) + 1
        self.drained_events += 1
        if not outcome.logged:
            return
        self.seq += 1
        now = time.time()
        self.last_event_at = now
        self._last_sample = f["sample_timestamp"]
        if f["action"] == "end_snapshot":
            self.end_snapshots[f["source"]] = self.end_snapshots.get(f["source"], 0) + 1
        if self.sink.keeps_records:
            if wire is None:
                wire = event.to_wire()
            self.sink.append(self.seq, self.epoch, now, wire, outcome.changes)
        else:
            self.sink.skip(self.seq)
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # an evaluator fault must not stop the data path
                log.exception("evaluation failed", event_id=event.event_id)

    def _count(self) -> None:
        """Add the events accepted since the last call to the events counter."""
        for key, n in self._uncounted.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.events.labels(key[0], key[1].value)
            counter.inc(n)
        self._uncounted.clear()

    def process_local(self, event: Event) -> Outcome:
        """Apply an event made inside the service (evaluator actions): sequenced like any other."""
        outcome = self.processor.process(event)
        self._accept(outcome)
        self._count()
        return outcome

    async def _dead_letter(self, body: bytes, reason: str) -> None:
        self.metrics.dead_lettered.inc()
        log.warning("dead-lettered", reason=reason, queue=self.topology.dead_letter_queue.name)
        await dead_letter(
            self.channel, self.topology, body, reason, self.topology.events_queue.name
        )
