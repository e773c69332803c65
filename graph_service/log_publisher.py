"""Publishes processed-event records to the fanout exchange, batched and pipelined.

Records are grouped by count (``LOG_BATCH_MAX``) and time (``LOG_BATCH_DELAY``)
into one AMQP message; each message is published ``mandatory`` with publisher
confirms. Confirms are awaited per batch, concurrently, and ``confirmed_seq``
advances strictly in order, so the ack tracker acks collector messages only
when everything up to their last record is safely in the broker (invariant 2).

A returned (unroutable) or nacked batch means records may be lost: that is
fatal, and the service stops processing rather than ack anything after it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import DeliveryError
from aiormq.abc import DeliveredMessage

from graph_service import crashpoints
from rca_common.logging import get_logger
from rca_common.records import CONTENT_TYPE, Frames

log = get_logger(__name__)


# Changes and evaluator steps per message at most (records are never split): a count
# of records alone does not bound a message, and a broker refuses one that is too big
# (RabbitMQ 4 defaults to 16 MiB), which would make the active fence itself.
MAX_BATCH_WEIGHT = 20_000


class LogPublishError(RuntimeError):
    """A batch of records was not confirmed by the broker."""


class AmqpLogSink:
    """The ``LogSink`` used when persistency is on."""

    keeps_records = True

    def __init__(
        self,
        exchange: AbstractExchange,
        on_confirm: Callable[[int], None],
        on_failure: Callable[[BaseException], None],
        batch_max: int = 500,
        batch_delay: float = 0.005,
        max_unconfirmed: int = 50_000,
    ) -> None:
        self.exchange = exchange
        self.confirmed_seq = 0
        self._on_confirm = on_confirm
        self._on_failure = on_failure
        self._batch_max = batch_max
        self._batch_delay = batch_delay
        self._max_unconfirmed = max_unconfirmed
        self._frames = Frames()  # the batch being filled
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: deque[tuple[int, asyncio.Task[Any]]] = deque()
        self._last_appended = 0
        self._room = asyncio.Event()
        self._room.set()
        self.failed: BaseException | None = None
        self.published_batches = 0

    def start_at(self, seq: int) -> None:
        """Records before ``seq`` are already safe (recovered from the log)."""
        self.confirmed_seq = self._last_appended = seq

    # ---------------------------------------------------------------- appending
    def append(
        self,
        seq: int,
        epoch: int,
        processed_at: float,
        event: dict[str, Any],
        changes: list[list[Any]],
    ) -> None:
        """Frame an event record into the batch being filled (per event: keep it lean)."""
        if self.failed is not None:
            raise LogPublishError("record log is broken; not accepting records") from self.failed
        frames = self._frames
        frames.add_event(seq, epoch, processed_at, event, changes)
        self._last_appended = seq
        if frames.count >= self._batch_max or frames.weight >= MAX_BATCH_WEIGHT:
            self._publish_batch()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._batch_delay, self._publish_batch)
        if seq - self.confirmed_seq >= self._max_unconfirmed:
            self._room.clear()

    def skip(self, seq: int) -> None:
        raise LogPublishError(f"seq {seq} without a record: this sink logs every one")

    async def wait_for_room(self) -> None:
        """Backpressure: the ingest loop awaits this before taking the next message."""
        await self._room.wait()

    def _publish_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        frames = self._frames
        if not frames.count:
            return
        first_seq, last_seq = frames.first_seq, frames.last_seq
        message = aio_pika.Message(
            frames.take(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=CONTENT_TYPE,
            headers={"x-rca-first-seq": first_seq, "x-rca-last-seq": last_seq},
        )
        task = asyncio.ensure_future(self.exchange.publish(message, "", mandatory=True))
        self._inflight.append((last_seq, task))
        task.add_done_callback(self._on_done)
        self.published_batches += 1
        crashpoints.hit("publish")

    def _on_done(self, _: asyncio.Future[Any]) -> None:
        """Advance ``confirmed_seq`` over the finished prefix of in-flight batches."""
        advanced = False
        while self._inflight and self._inflight[0][1].done():
            last_seq, task = self._inflight.popleft()
            error = _failure(task)
            if error is not None:
                self._fail(error)
                return
            self.confirmed_seq = last_seq
            advanced = True
        if advanced:
            self._on_confirm(self.confirmed_seq)
            if self._last_appended - self.confirmed_seq < self._max_unconfirmed:
                self._room.set()

    def _fail(self, error: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = error
        log.error("record batch not confirmed; stopping", error=repr(error))
        for _, task in self._inflight:
            task.cancel()
        self._inflight.clear()
        self._room.set()
        self._on_failure(error)

    # ---------------------------------------------------------------- flushing
    async def flush(self) -> None:
        """Publish the partial batch and wait until every record is confirmed."""
        self._publish_batch()
        while self._inflight and self.failed is None:
            await asyncio.gather(*(t for _, t in list(self._inflight)), return_exceptions=True)
        if self.failed is not None:
            raise LogPublishError("record log is broken") from self.failed

    def close(self) -> None:
        """Stop at once (self-fencing): drop the partial batch, publish nothing more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._frames = Frames()
        self.failed = self.failed or LogPublishError("closed")


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    if task.cancelled():
        return LogPublishError("publish cancelled")
    exc = task.exception()
    if exc is not None:
        return exc
    if isinstance(task.result(), DeliveredMessage):  # returned: no queue bound
        return DeliveryError(task.result(), None)
    return None
