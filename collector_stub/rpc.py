"""The ``get_all`` RPC: the contract every collector must satisfy.

Request (on ``COLLECTOR_RPC_QUEUE``, with ``reply_to`` and ``correlation_id``)::

    {"action": "get_all", "sources": null | ["nova.host", ...]}

Answer, in this order:

1. every entity of every requested source, published to ``EVENTS_QUEUE``
   (persistent, confirmed, batched), action ``init_snapshot`` for the first
   ``get_all`` this process answers and ``snapshot`` afterwards;
2. after each source's entities, one ``end_snapshot`` event for that source;
3. only then the reply ``{"sources": {"<name>": <count>, ...}}`` to ``reply_to``
   with the request's ``correlation_id``.

A malformed request is answered ``{"error": "..."}`` (when it has a
``reply_to``), logged and acked; the server keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from collector_stub.publisher import CONTENT_TYPE, EventPublisher
from collector_stub.stream import UpdateStream
from collector_stub.topology import SOURCES
from rca_common.logging import get_logger

log = get_logger(__name__)

PROGRESS_EVERY_S = 2.0
PROGRESS_MIN_EVENTS = 10_000  # smaller snapshots log only start and end


class RequestError(ValueError):
    """A request this collector cannot answer; the message goes back to the caller."""


def parse_request(body: bytes) -> list[str] | None:
    """The requested sources (None: all) of a ``get_all`` request body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
    action = data.get("action")
    if action != "get_all":
        raise RequestError(f"unknown action {action!r} (expected 'get_all')")
    sources = data.get("sources")
    if sources is None:
        return None
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise RequestError("'sources' must be null or a list of source names")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise RequestError(f"unknown sources {unknown}; this collector serves {list(SOURCES)}")
    return list(dict.fromkeys(sources))


class GetAllServer:
    """Answers ``get_all`` requests from the stream's current model."""

    def __init__(
        self,
        stream: UpdateStream,
        publisher: EventPublisher,
        reply_channel: AbstractChannel,
    ) -> None:
        self.stream = stream
        self.publisher = publisher
        self.reply_channel = reply_channel
        self.answered = 0

    async def get_all(self, sources: list[str] | None = None) -> dict[str, int]:
        """Publish a snapshot of ``sources`` (None: all) with end markers; return counts.

        Returns only after the broker has confirmed every message.
        """
        started = time.monotonic()
        events, action = self.stream.snapshot(sources)
        wanted = SOURCES if sources is None else sources
        counts = {s: len(self.stream.topology.entities[s]) for s in wanted}
        total = sum(counts.values()) + len(counts)
        log.info("get_all started", action=action, sources=len(counts), events=total)
        await self.publisher.publish_all(_progress(events, total, action))
        self.answered += 1
        log.info(
            "get_all published",
            action=action,
            events=total,
            messages=-(-total // self.publisher.batch_size),
            seconds=round(time.monotonic() - started, 3),
            sources=counts,
        )
        return counts

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Consumer callback: answer one request, then ack it."""
        try:
            sources = parse_request(message.body)
        except RequestError as exc:
            log.warning("malformed get_all request", reason=str(exc), reply_to=message.reply_to)
            await self._reply(message, {"error": str(exc)})
            await message.ack()
            return
        try:
            counts = await self.get_all(sources)
        except Exception as exc:
            # With the channel still open (e.g. the events queue is gone) the caller
            # gets the error; when the connection itself is lost, replying fails too
            # and the broker redelivers the unacked request after the reconnect.
            log.exception("get_all failed", error=str(exc))
            try:
                await self._reply(message, {"error": f"get_all failed: {exc}"})
                await message.nack(requeue=False)
            except Exception:
                log.warning("could not report the get_all failure; it will be redelivered")
            return
        await self._reply(message, {"sources": counts})
        await message.ack()

    async def _reply(self, request: AbstractIncomingMessage, body: dict[str, Any]) -> None:
        if not request.reply_to:
            return
        await self.reply_channel.default_exchange.publish(
            aio_pika.Message(
                orjson.dumps(body),
                content_type=CONTENT_TYPE,
                correlation_id=request.correlation_id,
            ),
            routing_key=request.reply_to,
            mandatory=False,  # a caller that gave up and dropped its reply queue is fine
        )


def _progress(
    events: Iterator[dict[str, Any]], total: int, action: str
) -> Iterator[dict[str, Any]]:
    """Pass events through, logging progress every 10% or every few seconds."""
    if total < PROGRESS_MIN_EVENTS:
        yield from events
        return
    step = max(total // 10, 1)
    next_mark = step
    last_log = time.monotonic()
    for n, event in enumerate(events, 1):
        yield event
        if n >= next_mark or (n % 1000 == 0 and time.monotonic() - last_log >= PROGRESS_EVERY_S):
            log.info("get_all progress", action=action, published=n, total=total)
            last_log = time.monotonic()
            while next_mark <= n:
                next_mark += step
