"""graph-service as a real process against the real RabbitMQ."""

from __future__ import annotations

import subprocess
import sys

import aio_pika
import httpx
import orjson
import pytest

from rca_common.broker import REASON_HEADER
from tests.conftest import BIN, Processes, wait_for, wait_http

pytestmark = pytest.mark.integration


def _event(i: int, **over: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "event_id": f"ev-{i}",
        "source": "nova.instance",
        "entity_type": "nova.instance",
        "entity_id": f"inst-{i}",
        "action": "update",
        "sample_timestamp": f"2026-01-01T00:00:{i:02d}.000000Z",
        "payload": {"name": f"inst-{i}", "state": "ACTIVE", "host": "host-1"},
    }
    ev.update(over)
    return ev


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, body: bytes) -> None:
    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)


async def test_malformed_messages_are_dead_lettered_and_service_keeps_going(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, test_env: dict[str, str]
) -> None:
    graph = processes.start(
        "graph-service", http=True, GET_ALL_TIMEOUT="0.5", ENABLE_PERSISTENCY="false"
    )
    await wait_http(graph, "/readyz")
    queue = test_env["EVENTS_QUEUE"]
    await _publish(broker, queue, b"this is not json")
    await _publish(broker, queue, orjson.dumps({"event_id": "x", "action": "update"}))
    bad_type = _event(2, entity_type="nova.toaster")
    await _publish(broker, queue, orjson.dumps([_event(1), bad_type, _event(3)]))

    async def two_instances() -> bool:
        async with httpx.AsyncClient() as client:
            topo = (await client.get(graph.url + "/v1/topology")).json()
        ids = {v["id"] for v in topo["vertices"] if v["vitrage_type"] == "nova.instance"}
        return ids == {"inst-1", "inst-3"}

    await wait_for(two_instances, what="the two valid instances")

    dlq = await broker.declare_queue(test_env["DEAD_LETTER_QUEUE"], passive=True)
    reasons = []
    for _ in range(3):
        msg = await dlq.get(timeout=5, fail=True)
        assert msg is not None
        reasons.append(str(msg.headers[REASON_HEADER]))
        await msg.ack()
    assert "not JSON" in reasons[0]
    assert "schema violation" in reasons[1]
    assert "nova.toaster" in reasons[2]
    assert graph.alive()
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(graph.url + "/metrics")).text
    assert "rca_dead_lettered_total 3.0" in metrics


async def test_sigterm_stops_cleanly(
    processes: Processes, broker: aio_pika.abc.AbstractChannel
) -> None:
    graph = processes.start(
        "graph-service", http=True, GET_ALL_TIMEOUT="0.5", ENABLE_PERSISTENCY="false"
    )
    await wait_http(graph, "/readyz")
    assert processes.stop(graph) == 0
    assert '"phase": "stopped"' in graph.log() or '"phase":"stopped"' in graph.log()


def test_bad_environment_variable_stops_startup_with_one_line() -> None:
    result = subprocess.run(
        [str(BIN / "graph-service")],
        env={"HTTP_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        executable=str(BIN / "graph-service"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HTTP_PORT" in lines[0]
    assert sys.executable  # the console script ran from this interpreter's venv
