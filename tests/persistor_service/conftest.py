"""Fixtures of the persistor tests: a schema dropped afterwards, records, in-process service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import asyncpg
import pytest

from persistor_service.service import PersistorService
from rca_common.broker import BrokerTopology, declare_topology
from rca_common.db import connect, drop_schema, migrate
from rca_common.records import KIND_BARRIER, LogRecord, encode_records
from rca_common.settings import Settings
from tests.conftest import settings_from

DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def event(seq: int, epoch: int = 1, event_id: str | None = None, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": event_id or f"ev-{epoch}-{seq}",
        "source": "nova.instance",
        "entity_type": "nova.instance",
        "entity_id": f"inst-{seq}",
        "action": "update",
        "sample_timestamp": "2026-01-01T00:00:00.000000Z",
        "payload": {"name": f"inst-{seq}", "state": "ACTIVE", **payload},
    }


def rec(seq: int, epoch: int = 1, event_id: str | None = None, **payload: Any) -> LogRecord:
    changes = [["upsert", f"vid-{seq}", {"id": f"inst-{seq}", "epoch": epoch}]]
    return LogRecord(seq, epoch, time.time(), event(seq, epoch, event_id, **payload), changes)


def barrier(epoch: int, seq: int = 0) -> LogRecord:
    return LogRecord(seq, epoch, time.time(), {}, [], KIND_BARRIER)


def recs(first: int, last: int, epoch: int = 1) -> list[LogRecord]:
    return [rec(s, epoch) for s in range(first, last + 1)]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running after every fixture has cleaned up."""
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"leaked tasks: {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}"


@pytest.fixture
def settings(test_env: dict[str, str]) -> Settings:
    return settings_from(
        {**test_env, "PERSISTOR_HTTP_PORT": "0", "PRUNE_INTERVAL": "3600", "SHUTDOWN_TIMEOUT": "5"}
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's migrated schema; the schema is dropped afterwards."""
    conn = await connect(DSN, settings.db_schema)
    try:
        await migrate(conn, settings.db_schema)
        yield conn
    finally:
        await drop_schema(conn, settings.db_schema)
        await conn.close()


class Stream:
    """Publishes records to the processed-event fanout, as the active graph service does."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, settings: Settings) -> None:
        self.channel = channel
        self.topology = BrokerTopology.from_settings(settings)
        self.exchange: aio_pika.abc.AbstractExchange | None = None

    async def declare(self) -> None:
        declared = await declare_topology(self.channel, self.topology)
        self.exchange = declared.processed_exchange

    async def publish(self, *messages: list[LogRecord]) -> None:
        assert self.exchange is not None
        for records in messages:
            await self.exchange.publish(
                aio_pika.Message(encode_records(records), delivery_mode=2), routing_key=""
            )

    async def publish_raw(self, body: bytes) -> None:
        assert self.exchange is not None
        await self.exchange.publish(aio_pika.Message(body), routing_key="")

    async def ready(self, queue: str) -> int:
        """Ready (not delivered or returned after a close) messages of ``queue``."""
        q = await self.channel.declare_queue(queue, passive=True)
        return q.declaration_result.message_count or 0


@pytest.fixture
async def stream(broker: aio_pika.abc.AbstractChannel, settings: Settings) -> Stream:
    s = Stream(broker, settings)
    await s.declare()
    return s


@pytest.fixture
async def start_persistor(
    db: asyncpg.Connection, stream: Stream, settings: Settings
) -> AsyncIterator[Callable[..., Any]]:
    """Factory of in-process persistors, each stopped at teardown (before the schema goes)."""
    started: list[PersistorService] = []

    async def start(**overrides: Any) -> PersistorService:
        service = PersistorService(settings.model_copy(update=overrides))
        started.append(service)
        await asyncio.wait_for(service.start(), 30)
        return service

    try:
        yield start
    finally:
        for service in started:
            await service.stop()


async def rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT seq, epoch, event_id, record FROM events ORDER BY seq")


METRIC_NAMES = {
    "records_written": "rca_persistor_records_written_total",
    "redeliveries": "rca_persistor_redelivered_records_total",
    "gaps": "rca_persistor_seq_gaps_total",
    "zombies": "rca_persistor_zombies_fenced_total",
    "dead_lettered": "rca_persistor_dead_lettered_total",
    "barriers": "rca_persistor_barriers_total",
    "db_errors": "rca_persistor_db_errors_total",
}


def sample(service: PersistorService, metric: str) -> float:
    """A counter's value, read through the service's own registry."""
    value = service.metrics.registry.get_sample_value(METRIC_NAMES[metric])
    assert value is not None, metric
    return value
