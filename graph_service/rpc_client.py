"""The get_all RPC client: reply_to + correlation_id, as in aio-pika's own RPC pattern.

Anything that answers the contract is a collector: a JSON request
``{"action": "get_all", "sources": null | [names]}`` to the collector RPC
queue; the collector publishes the entities and one ``end_snapshot`` per source
into the events queue, then replies ``{"sources": {name: count}}``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from aio_pika import Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from rca_common.logging import get_logger

log = get_logger(__name__)


class RpcError(RuntimeError):
    pass


class GetAllClient:
    """Sends get_all requests and matches replies by correlation id."""

    def __init__(self, channel: AbstractChannel, rpc_queue: str) -> None:
        self.channel = channel
        self.rpc_queue = rpc_queue
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reply_queue: AbstractQueue | None = None

    async def start(self) -> None:
        self._reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self._reply_queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(RpcError("RPC client closed"))
        self._futures.clear()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        fut = self._futures.pop(message.correlation_id or "", None)
        if fut is None or fut.done():
            log.warning("unexpected RPC reply", correlation_id=message.correlation_id)
            return
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            fut.set_exception(RpcError(f"reply is not JSON: {exc}"))
            return
        if isinstance(body, dict) and "error" in body:
            fut.set_exception(RpcError(f"collector error: {body['error']}"))
        elif not isinstance(body, dict) or not isinstance(body.get("sources"), dict):
            fut.set_exception(RpcError(f"reply without 'sources': {body!r:.200}"))
        else:
            fut.set_result(body)

    async def get_all(self, timeout: float, sources: list[str] | None = None) -> dict[str, int]:
        """Ask for a full snapshot; returns the per-source counts from the reply."""
        assert self._reply_queue is not None, "start() first"
        corr = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[corr] = fut
        await self.channel.default_exchange.publish(
            Message(
                orjson.dumps({"action": "get_all", "sources": sources}),
                reply_to=self._reply_queue.name,
                correlation_id=corr,
                content_type="application/json",
                expiration=timeout,
            ),
            routing_key=self.rpc_queue,
        )
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._futures.pop(corr, None)
        return {str(k): int(v) for k, v in reply["sources"].items()}
