"""The data path end to end: collector-stub and graph-service as real processes.

After the start-up get_all, the graph served over HTTP must hold exactly the
topology the generator produced: count by count and edge by edge.
"""

from __future__ import annotations

from collections import Counter

import aio_pika
import httpx
import pytest

from collector_stub.topology import TopologyConfig, generate_topology
from graph_service.gc_policy import GEN0_THRESHOLD
from tests.conftest import Processes, wait_http

pytestmark = pytest.mark.integration

CONFIG = TopologyConfig(zones=2, hosts=6, instances_per_host=3, networks=2, alarms=5)
SEED = 7


def _cli_args(cfg: TopologyConfig, seed: int) -> list[str]:
    return [
        "--zones", str(cfg.zones), "--hosts", str(cfg.hosts),
        "--instances-per-host", str(cfg.instances_per_host), "--networks", str(cfg.networks),
        "--ports-per-instance", str(cfg.ports_per_instance), "--volumes", str(cfg.volumes),
        "--alarms", str(cfg.alarms), "--seed", str(seed),
    ]  # fmt: skip


async def test_get_all_builds_exactly_the_generated_topology(
    processes: Processes, broker: aio_pika.abc.AbstractChannel
) -> None:
    processes.start("collector-stub", *_cli_args(CONFIG, SEED))
    graph = processes.start("graph-service", http=True, ENABLE_PERSISTENCY="false")
    await wait_http(graph, "/readyz", timeout=90)

    async with httpx.AsyncClient(timeout=30) as client:
        topo = (await client.get(graph.url + "/v1/topology")).json()
        status = (await client.get(graph.url + "/status")).json()
    expected = generate_topology(CONFIG, seed=SEED)

    # What the datasources said; deduced alarms (type vitrage) are the evaluator's.
    deduced = {v["vitrage_id"] for v in topo["vertices"] if v["vitrage_type"] == "vitrage"}
    real = [
        v
        for v in topo["vertices"]
        if not v["vitrage_is_placeholder"] and v["vitrage_id"] not in deduced
    ]
    assert Counter(v["vitrage_type"] for v in real) == Counter(expected.counts())
    assert not [v for v in topo["vertices"] if v["vitrage_is_placeholder"]]

    by_vid = {v["vitrage_id"]: (v["vitrage_type"], v["id"]) for v in topo["vertices"]}
    edges = {
        (*by_vid[e["source"]], e["relationship_type"], *by_vid[e["target"]])
        for e in topo["edges"]
        if e["source"] not in deduced and e["target"] not in deduced
    }
    assert edges == {tuple(e) for e in expected.expected_edges()}
    assert status["get_all"]["state"] == "done"
    assert status["get_all"]["entities"] == expected.total()
    assert status["phase"] == "active"
    assert status["evaluators"]["enabled"]
    # The process runs the collector policy of graph_service/gc_policy.py: the built
    # graph was frozen when the service went active.
    assert status["gc"]["threshold"][0] == GEN0_THRESHOLD
    assert status["gc"]["heap_frozen"] is True

    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(graph.url + "/metrics")).text
    counts = {
        row.split('"')[1]: float(row.rsplit(" ", 1)[1])
        for row in metrics.splitlines()
        if row.startswith("rca_gc_pause_seconds_count{")
    }
    assert set(counts) == {"0", "1", "2"}
    applied: Counter[str] = Counter()
    for row in metrics.splitlines():
        if row.startswith("rca_events_total{") and 'status="applied"' in row:
            applied[row.split('entity_type="')[1].split('"')[0]] += int(float(row.rsplit(" ")[1]))
    for etype, n in expected.counts().items():
        assert applied[etype] >= n, etype  # each entity's get_all event, counted
    # every pause the collector made before /status answered, drained by the scrape
    assert sum(counts.values()) >= sum(status["gc"]["collections"])
