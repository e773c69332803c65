"""The collector against the real RabbitMQ: the get_all contract, streaming, shutdown.

Every test uses its own queue names and deletes them afterwards, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from collector_stub.collector import Collector
from collector_stub.stream import DEFAULT_CLOCK_START, StreamConfig, load_script, reference_events
from collector_stub.topology import SOURCES, TopologyConfig, generate_topology
from rca_common.broker import BrokerTopology, declare_topology, delete_topology
from rca_common.events import Action, Event, decode_events
from rca_common.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def unique_settings(**overrides: Any) -> Settings:
    """Settings whose every queue and exchange name is unique to this test."""
    suffix = uuid.uuid4().hex[:12]
    names = {
        "events_queue": f"test.cs.{suffix}.events",
        "dead_letter_queue": f"test.cs.{suffix}.dlq",
        "collector_rpc_queue": f"test.cs.{suffix}.rpc",
        "processed_exchange": f"test.cs.{suffix}.processed",
        "persistor_queue": f"test.cs.{suffix}.persistor",
    }
    fields: dict[str, Any] = {
        **names,
        "collector_clock_start": DEFAULT_CLOCK_START,
        "shutdown_timeout": 5.0,
        "log_format": "console",
    }
    fields.update(overrides)
    return load_settings(**fields)


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    """Unique names; the whole broker topology is deleted afterwards, pass or fail."""
    s = unique_settings()
    yield s
    connection = await aio_pika.connect(s.amqp_url)
    async with connection:
        await delete_topology(await connection.channel(), BrokerTopology.from_settings(s))


@pytest.fixture
async def amqp(settings: Settings) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        yield connection


class RpcClient:
    """A minimal get_all caller, as the graph service would be."""

    def __init__(self, channel: AbstractChannel, settings: Settings) -> None:
        self.channel = channel
        self.settings = settings
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Messages in the events queue at the moment each reply arrived.
        self.queued_at_reply: list[int] = []

    async def start(self) -> None:
        self.reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(orjson.loads(message.body))

    async def call(self, body: bytes | dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(raw, reply_to=self.reply_queue.name, correlation_id=correlation_id),
            routing_key=self.settings.collector_rpc_queue,
        )
        reply = await asyncio.wait_for(future, timeout)
        queue = await self.channel.declare_queue(self.settings.events_queue, passive=True)
        assert queue.declaration_result.message_count is not None
        self.queued_at_reply.append(queue.declaration_result.message_count)
        return reply

    async def get_all(self, sources: list[str] | None = None) -> dict[str, Any]:
        return await self.call({"action": "get_all", "sources": sources})


@pytest.fixture
async def rpc(amqp: AbstractRobustConnection, settings: Settings) -> RpcClient:
    client = RpcClient(await amqp.channel(), settings)
    await client.start()
    return client


async def drain(channel: AbstractChannel, queue_name: str) -> list[list[Event]]:
    """Every message now in ``queue_name``, decoded with the shared wire contract."""
    queue = await channel.declare_queue(queue_name, passive=True)
    messages: list[list[Event]] = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
        messages.append(decode_events(message.body))
    return messages


async def collect(channel: AbstractChannel, queue_name: str, n: int, timeout: float) -> list[Event]:
    """Consume until ``n`` events have arrived (bounded by ``timeout``)."""
    queue = await channel.declare_queue(queue_name, passive=True)
    events: list[Event] = []
    enough = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        events.extend(decode_events(message.body))
        if len(events) >= n:
            enough.set()

    tag = await queue.consume(on_message, no_ack=True)
    try:
        await asyncio.wait_for(enough.wait(), timeout)
    finally:
        await queue.cancel(tag)
    return events


SMALL = TopologyConfig(alarms=10)


def stream_config(settings: Settings, seed: int = 42, **kw: object) -> StreamConfig:
    assert settings.collector_clock_start is not None
    return StreamConfig(seed=seed, clock_start=settings.collector_clock_start, **kw)


def check_snapshot(
    messages: list[list[Event]], reply: dict, action: str, sources: list[str]
) -> list[Event]:
    """The contract: entities of a source, then its end marker; counts as in the reply."""
    events = [e for batch in messages for e in batch]
    assert reply == {"sources": {s: reply["sources"][s] for s in sources}}
    seen: dict[str, int] = {}
    ended: list[str] = []
    for e in events:
        assert e.entity_type in sources
        assert e.entity_type not in ended, f"{e.entity_type} event after its end_snapshot"
        if e.action == Action.END_SNAPSHOT:
            assert e.payload["count"] == seen.get(e.entity_type, 0)
            ended.append(e.entity_type)
        else:
            assert e.action == action
            assert e.source == e.entity_type
            seen[e.entity_type] = seen.get(e.entity_type, 0) + 1
    assert ended == sources
    assert {s: seen.get(s, 0) for s in sources} == reply["sources"]
    return events


async def test_get_all_contract(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    channel = await amqp.channel()
    topo = generate_topology(SMALL, seed=1)
    async with Collector(settings, topo, stream_config(settings, 1)) as collector:
        first = await rpc.get_all()
        # The reply came only after every message of the snapshot was in the queue.
        assert rpc.queued_at_reply == [collector.publisher.messages]
        events = check_snapshot(
            await drain(channel, settings.events_queue), first, "init_snapshot", list(SOURCES)
        )
        assert first["sources"] == topo.counts()
        assert len(events) == topo.total() + len(SOURCES)
        assert len({e.event_id for e in events}) == len(events)

        second = await rpc.get_all()
        check_snapshot(
            await drain(channel, settings.events_queue), second, "snapshot", list(SOURCES)
        )
        assert second == first
        assert collector.get_all_answered == 2


async def test_events_on_the_wire_equal_the_reference(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    """A live collector publishes byte-for-byte what reference_events computes in-process."""
    channel = await amqp.channel()
    cfg = TopologyConfig(hosts=5, instances_per_host=6, alarms=6)
    config = stream_config(settings, 7, storm_every=40)
    async with Collector(settings, generate_topology(cfg, 7), config) as collector:
        await rpc.get_all()
        await collector.publish_stream(300)
        published = [e.to_wire() for m in await drain(channel, settings.events_queue) for e in m]
    expected, final = reference_events(cfg, 7, 300, config)
    assert orjson.dumps(published) == orjson.dumps(expected)
    assert final.entities == collector.topology.entities


async def test_snapshot_reflects_the_stream_and_is_never_older(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    channel = await amqp.channel()
    topo = generate_topology(SMALL, seed=2)
    async with Collector(settings, topo, stream_config(settings, 2, storm_every=100)) as collector:
        updates = await collector.publish_stream(1000)
        streamed = await drain(channel, settings.events_queue)
        assert sum(len(m) for m in streamed) == 1000
        assert all(len(m) <= collector.flush_events for m in streamed)
        reply = await rpc.get_all()
        assert reply["sources"] == topo.counts()
        events = check_snapshot(
            await drain(channel, settings.events_queue), reply, "init_snapshot", list(SOURCES)
        )
    last_update: dict[str, Event] = {}
    for e in (Event.model_validate(u) for u in updates):
        last_update[e.entity_id] = e
    snapshot_ids = set()
    for e in events:
        if e.action == Action.END_SNAPSHOT:
            continue
        snapshot_ids.add(e.entity_id)
        if e.entity_id in last_update:
            assert e.sample_timestamp >= last_update[e.entity_id].sample_timestamp
            assert e.payload == last_update[e.entity_id].payload
    deleted = {i for i, e in last_update.items() if e.action == Action.DELETE}
    assert deleted and not deleted & snapshot_ids


async def test_requested_sources_only(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    channel = await amqp.channel()
    async with Collector(settings, generate_topology(SMALL, 3), stream_config(settings, 3)):
        wanted = ["nova.host", "zabbix", "nova.zone"]
        reply = await rpc.get_all(wanted)
        check_snapshot(await drain(channel, settings.events_queue), reply, "init_snapshot", wanted)
        assert await rpc.get_all([]) == {"sources": {}}
        assert await drain(channel, settings.events_queue) == []


async def test_malformed_requests_get_an_error_and_the_server_keeps_running(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    channel = await amqp.channel()
    async with Collector(settings, generate_topology(SMALL, 4), stream_config(settings, 4)) as c:
        assert "not JSON" in (await rpc.call(b"\x00garbage"))["error"]
        assert "unknown action" in (await rpc.call({"action": "drop_all"}))["error"]
        bad_source = await rpc.call({"action": "get_all", "sources": ["nova.hots"]})
        assert "unknown sources" in bad_source["error"]
        # A request without reply_to is acked and dropped, not redelivered forever.
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}"), routing_key=settings.collector_rpc_queue
        )
        reply = await rpc.get_all()
        assert reply["sources"] == c.topology.counts()
        check_snapshot(
            await drain(channel, settings.events_queue), reply, "init_snapshot", list(SOURCES)
        )
        rpc_queue = await channel.declare_queue(settings.collector_rpc_queue, passive=True)
        assert rpc_queue.declaration_result.message_count == 0


async def test_paced_stream_stops_cleanly_and_loses_nothing(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    channel = await amqp.channel()
    collector = Collector(settings, generate_topology(SMALL, 5), stream_config(settings, 5))
    await collector.start()
    try:
        task = asyncio.create_task(collector.run_stream(rate=400))
        first = await collect(channel, settings.events_queue, 50, timeout=30)
        collector.request_stop()
        sent = await asyncio.wait_for(task, 10)
    finally:
        await collector.stop()
    rest = await drain(channel, settings.events_queue)
    received = len(first) + sum(len(m) for m in rest)
    assert sent == collector.stream.emitted == received
    assert received >= 50


async def test_stream_count_and_script(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient, tmp_path: Path
) -> None:
    channel = await amqp.channel()
    script = tmp_path / "s.yaml"
    script.write_text(
        "- {event_id: x1, source: nova.host, entity_type: nova.host, entity_id: host-new,"
        " action: update, sample_timestamp: '2025-01-01T00:00:00Z',"
        " payload: {name: host-new, state: available, zone: zone-00}}\n"
        "- {event_id: x2, source: nova.host, entity_type: nova.host, entity_id: host-0000,"
        " action: delete, sample_timestamp: '2025-01-01T00:00:01Z', payload: {}}\n"
    )
    async with Collector(settings, generate_topology(SMALL, 6), stream_config(settings, 6)) as c:
        assert await c.run_stream(rate=0, count=250) == 250
        assert await c.play_script(load_script(script)) == 2
        events = [e for m in await drain(channel, settings.events_queue) for e in m]
        assert [e.event_id for e in events[-2:]] == ["x1", "x2"]
        assert len(events) == 252
        reply = await rpc.get_all(["nova.host"])
        hosts = [e for m in await drain(channel, settings.events_queue) for e in m]
    ids = {e.entity_id for e in hosts if e.action == Action.INIT_SNAPSHOT}
    assert "host-new" in ids and "host-0000" not in ids
    assert reply["sources"]["nova.host"] == 8
    # Snapshot time follows the scripted clock, so it is not older than the script.
    assert hosts[0].sample_timestamp.isoformat().startswith("2025-01-01T00:00:01")


async def test_publish_initial_sends_every_entity_as_an_update(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    channel = await amqp.channel()
    topo = generate_topology(SMALL, seed=8)
    async with Collector(settings, topo, stream_config(settings, 8)) as collector:
        assert await collector.publish_initial() == topo.total()
        events = [e for m in await drain(channel, settings.events_queue) for e in m]
    assert len(events) == topo.total()
    assert {e.action for e in events} == {Action.UPDATE}
    assert {(e.entity_type, e.entity_id) for e in events} == {
        (t, i) for t, by_id in topo.entities.items() for i in by_id
    }


async def test_large_get_all_is_fast(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient
) -> None:
    channel = await amqp.channel()
    t0 = time.perf_counter()
    topo = generate_topology(TopologyConfig.large(), seed=42)
    generated = time.perf_counter() - t0
    async with Collector(settings, topo, stream_config(settings)):
        t1 = time.perf_counter()
        reply = await rpc.get_all()
        answered = time.perf_counter() - t1
    assert sum(reply["sources"].values()) == topo.total() > 100_000
    events_queue = await channel.declare_queue(settings.events_queue, passive=True)
    assert events_queue.declaration_result.message_count == rpc.queued_at_reply[0] > 200
    print(f"\n{topo.total()} entities: generated in {generated:.2f}s, get_all in {answered:.2f}s")
    assert generated + answered < 20


async def test_command_line_streams_serves_and_exits_0_on_sigterm(
    settings: Settings, amqp: AbstractRobustConnection, rpc: RpcClient, tmp_path: Path
) -> None:
    channel = await amqp.channel()
    # Declare first so the request below is queued even if the process is not up yet.
    await declare_topology(channel, BrokerTopology.from_settings(settings))
    env = {
        **os.environ,
        "EVENTS_QUEUE": settings.events_queue,
        "DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "COLLECTOR_RPC_QUEUE": settings.collector_rpc_queue,
        "PROCESSED_EXCHANGE": settings.processed_exchange,
        "PERSISTOR_QUEUE": settings.persistor_queue,
        "AMQP_URL": settings.amqp_url,
        "LOG_FORMAT": "json",
    }
    log = tmp_path / "collector.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "collector_stub",
            "--hosts",
            "4",
            "--count",
            "120",
            "--rate",
            "2000",
            "--clock-start",
            "2024-01-01T00:00:00Z",
            env=env,
            stderr=err,
        )
    try:
        streamed = await collect(channel, settings.events_queue, 120, timeout=60)
        assert len(streamed) == 120
        assert streamed[0].event_id == "42-1704067200000-1"
        reply = await rpc.get_all()
        assert reply["sources"]["nova.host"] == 4
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    assert any(line["event"] == "collector stopped" for line in lines)
    assert all(line.get("service") == "collector-stub" for line in lines)
