"""Broker topology as data, declared idempotently by every service at start.

A fanout exchange silently drops what no queue is bound to, so every service
declares the whole topology (both queues the collectors and the persistor read,
the dead-letter queue, the processed-event exchange and its binding) before it
publishes anything. ``aio_pika.connect_robust`` replays declarations on
reconnect because they are made on robust channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from rca_common.settings import QueueType, Settings

REASON_HEADER = "x-rca-reason"
SOURCE_QUEUE_HEADER = "x-rca-source-queue"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokerTopology:
    """The names and kinds of every queue and exchange one deployment uses."""

    events_queue: QueueSpec
    dead_letter_queue: QueueSpec
    collector_rpc_queue: QueueSpec
    persistor_queue: QueueSpec
    processed_exchange: str

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerTopology:
        args: dict[str, Any] = {}
        if settings.queue_type is QueueType.QUORUM:
            args = {"x-queue-type": "quorum"}
        return cls(
            events_queue=QueueSpec(settings.events_queue, args),
            dead_letter_queue=QueueSpec(settings.dead_letter_queue, args),
            collector_rpc_queue=QueueSpec(settings.collector_rpc_queue, args),
            # One persistor drains at a time (FIFO is what fencing relies on); a
            # second one waits as a hot standby.
            persistor_queue=QueueSpec(
                settings.persistor_queue, {**args, "x-single-active-consumer": True}
            ),
            processed_exchange=settings.processed_exchange,
        )

    def queues(self) -> list[QueueSpec]:
        return [
            self.events_queue,
            self.dead_letter_queue,
            self.collector_rpc_queue,
            self.persistor_queue,
        ]


@dataclass
class DeclaredTopology:
    """Handles returned by :func:`declare_topology`."""

    queues: dict[str, AbstractQueue]
    processed_exchange: AbstractExchange


async def declare_topology(channel: AbstractChannel, topo: BrokerTopology) -> DeclaredTopology:
    """Declare every queue, the fanout exchange and its binding; safe to repeat."""
    queues: dict[str, AbstractQueue] = {}
    for spec in topo.queues():
        queues[spec.name] = await channel.declare_queue(
            spec.name, durable=True, arguments=spec.arguments or None
        )
    exchange = await channel.declare_exchange(
        topo.processed_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    await queues[topo.persistor_queue.name].bind(exchange)
    return DeclaredTopology(queues=queues, processed_exchange=exchange)


async def delete_topology(channel: AbstractChannel, topo: BrokerTopology) -> None:
    """Remove everything :func:`declare_topology` made (tests use unique names, then this)."""
    for spec in topo.queues():
        await channel.queue_delete(spec.name)
    await channel.exchange_delete(topo.processed_exchange)


async def dead_letter(
    channel: AbstractChannel,
    topo: BrokerTopology,
    body: bytes,
    reason: str,
    source_queue: str,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish a rejected body to the dead-letter queue with its reason (confirmed)."""
    hdrs = dict(headers or {})
    hdrs[REASON_HEADER] = reason[:1000]
    hdrs[SOURCE_QUEUE_HEADER] = source_queue
    await channel.default_exchange.publish(
        aio_pika.Message(body, headers=hdrs, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topo.dead_letter_queue.name,
    )
