"""The evaluator through the running service: deduced alarms, RCA and templates over HTTP."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import httpx
import orjson
import pytest

from graph_service.templates import DEFAULT_DIR
from tests.conftest import Processes, wait_for, wait_http

pytestmark = pytest.mark.integration

T0 = "2026-03-01T00:00:00.0000"


def _ev(n: int, etype: str, eid: str, payload: dict, action: str = "update") -> dict:  # type: ignore[type-arg]
    return {
        "event_id": f"api-{n}",
        "source": etype,
        "entity_type": etype,
        "entity_id": eid,
        "action": action,
        "sample_timestamp": f"{T0}{n:02d}Z",
        "payload": payload,
    }


def _alarm(n: int, etype: str, name: str, rtype: str, rid: str, status: str = "firing") -> dict:  # type: ignore[type-arg]
    return _ev(n, etype, f"{etype}:{rid}:{name}", {"name": name, "severity": "high",
               "resource_type": rtype, "resource_id": rid, "status": status})  # fmt: skip


SCRIPT = [
    _ev(1, "nova.zone", "zone-1", {"name": "zone-1", "state": "available"}),
    _ev(2, "nova.host", "host-1", {"name": "host-1", "state": "available", "zone": "zone-1"}),
    _ev(3, "nova.instance", "vm-1", {"name": "vm-1", "state": "ACTIVE", "host": "host-1"}),
    _ev(4, "nova.instance", "vm-2", {"name": "vm-2", "state": "ACTIVE", "host": "host-1"}),
    _alarm(5, "prometheus", "InstanceDown", "nova.instance", "vm-1"),
    _alarm(6, "zabbix", "Host is unreachable", "nova.host", "host-1"),
]


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_host_alarm_deduces_instance_alarms_and_rca_finds_the_root(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, test_env: dict[str, str]
) -> None:
    graph = processes.start(
        "graph-service", http=True, ENABLE_PERSISTENCY="false", GET_ALL_TIMEOUT="0.5"
    )
    await wait_http(graph, "/readyz")
    await broker.default_exchange.publish(
        aio_pika.Message(orjson.dumps(SCRIPT)), routing_key=test_env["EVENTS_QUEUE"]
    )

    async def deduced() -> list[dict]:  # type: ignore[type-arg]
        alarms = (await _get(graph.url + "/v1/alarms?type=vitrage")).json()["alarms"]
        return [a for a in alarms if a["name"] == "Instance affected by host failure"]

    await wait_for(lambda: _len_is(deduced, 2), what="two deduced alarms")
    host_alarm = next(
        a for a in (await _get(graph.url + "/v1/alarms?type=zabbix")).json()["alarms"]
    )
    instance_down = next(
        a for a in (await _get(graph.url + "/v1/alarms?type=prometheus")).json()["alarms"]
    )

    rca = (await _get(graph.url + f"/v1/rca/{instance_down['vitrage_id']}")).json()
    assert rca["root_causes"] == [host_alarm["vitrage_id"]]
    assert {"source": host_alarm["vitrage_id"], "target": instance_down["vitrage_id"],
            "relationship_type": "causes"} in rca["edges"]  # fmt: skip
    root = next(v for v in rca["vertices"] if v["vitrage_id"] == host_alarm["vitrage_id"])
    assert root["is_root_cause"]

    one = (await _get(graph.url + f"/v1/alarms/{host_alarm['vitrage_id']}")).json()
    assert one["name"] == "Host is unreachable"
    assert (await _get(graph.url + "/v1/rca/not-an-alarm")).status_code == 404

    # The host alarm resolves: the deduced alarms go away.
    await broker.default_exchange.publish(
        aio_pika.Message(orjson.dumps([_alarm(7, "zabbix", "Host is unreachable", "nova.host",
                                              "host-1", status="resolved")])),
        routing_key=test_env["EVENTS_QUEUE"],
    )  # fmt: skip
    await wait_for(lambda: _len_is(deduced, 0), what="deduced alarms undone")


async def _len_is(fn, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fn()) == n


async def test_bad_template_is_rejected_with_line_and_the_others_load(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    good = (DEFAULT_DIR / "host_alarm_affects_instances.yaml").read_text()
    (templates / "good.yaml").write_text(good)
    (templates / "bad.yaml").write_text(good.replace("[contains]", "[holds]"))
    graph = processes.start(
        "graph-service",
        http=True,
        ENABLE_PERSISTENCY="false",
        GET_ALL_TIMEOUT="0.5",
        TEMPLATES_DIR=str(templates),
    )
    await wait_http(graph, "/readyz")
    listing = (await _get(graph.url + "/v1/templates")).json()["templates"]
    by_status = {t["status"]: t for t in listing}
    assert by_status["loaded"]["name"] == "host_alarm_affects_instances"
    bad = by_status["rejected"]
    assert bad["file"].endswith("bad.yaml") and bad["line"] and "holds" in bad["reason"]

    async with httpx.AsyncClient(timeout=10) as client:
        ok = await client.post(graph.url + "/v1/templates/validate", content=good)
        ko = await client.post(
            graph.url + "/v1/templates/validate?name=x.yaml", content="metadata: [1"
        )
    assert ok.status_code == 200 and ok.json()["valid"]
    assert ko.status_code == 400 and ko.json()["file"] == "x.yaml" and ko.json()["reason"]
