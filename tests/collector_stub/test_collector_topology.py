"""The generated topology: deterministic, sized by its parameters, valid on the wire."""

from __future__ import annotations

import time

import orjson
import pytest

from collector_stub.topology import (
    ALARM_TYPES,
    CLUSTER_ID,
    SOURCES,
    TopologyConfig,
    generate_topology,
    snapshot_events,
)
from rca_common.events import Action, EntityType, Event, decode_events

TS = "2024-01-01T00:00:00.000000Z"


def wire(topo) -> bytes:
    return orjson.dumps(list(snapshot_events(topo.snapshot_items(), "init_snapshot", TS, "t")))


def test_same_seed_gives_identical_events() -> None:
    assert wire(generate_topology(seed=7)) == wire(generate_topology(seed=7))


def test_different_seed_gives_different_events() -> None:
    assert wire(generate_topology(seed=7)) != wire(generate_topology(seed=8))


def test_demo_counts() -> None:
    counts = generate_topology().counts()
    assert list(counts) == list(SOURCES)
    assert counts[EntityType.CLUSTER] == 1
    assert counts[EntityType.ZONE] == 2
    assert counts[EntityType.HOST] == 8
    assert counts[EntityType.INSTANCE] == 32
    assert counts[EntityType.NETWORK] == 3
    assert counts[EntityType.PORT] == 32
    assert counts[EntityType.VOLUME] == 8
    assert sum(counts[t] for t in ALARM_TYPES) == 4


@pytest.mark.parametrize(
    ("cfg", "instances", "ports", "volumes"),
    [
        (TopologyConfig(zones=3, hosts=10, instances_per_host=7, networks=5), 70, 70, 18),
        (TopologyConfig(hosts=4, instances_per_host=5, ports_per_instance=3, volumes=6), 20, 60, 6),
        (TopologyConfig(hosts=4, instances_per_host=5, networks=0), 20, 0, 5),
        (TopologyConfig(zones=1, hosts=0, instances_per_host=9, alarms=0), 0, 0, 0),
    ],
)
def test_counts_scale_with_parameters(
    cfg: TopologyConfig, instances: int, ports: int, volumes: int
) -> None:
    counts = generate_topology(cfg, seed=3).counts()
    assert counts[EntityType.ZONE] == cfg.zones
    assert counts[EntityType.HOST] == cfg.hosts
    assert counts[EntityType.INSTANCE] == instances
    assert counts[EntityType.NETWORK] == cfg.networks
    assert counts[EntityType.PORT] == ports
    assert counts[EntityType.VOLUME] == volumes


def test_alarm_count_is_honoured_when_resources_allow() -> None:
    topo = generate_topology(TopologyConfig(alarms=40), seed=1)
    assert sum(topo.counts()[t] for t in ALARM_TYPES) == 40


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="fraction"):
        TopologyConfig(volumes=1.5)
    with pytest.raises(ValueError, match="zone"):
        TopologyConfig(zones=0, hosts=3)


def test_expected_edges_match_payloads_and_endpoints_exist() -> None:
    cfg = TopologyConfig(ports_per_instance=2, volumes=0.5, alarms=20)
    topo = generate_topology(cfg, seed=11)
    edges = list(topo.expected_edges())
    assert len(edges) == len(set(edges))
    for edge in edges:
        assert topo.get(edge.src_type, edge.src_id) is not None, edge
        assert topo.get(edge.dst_type, edge.dst_id) is not None, edge
    by_label: dict[tuple[str, str, str], int] = {}
    for e in edges:
        key = (e.src_type, e.label, e.dst_type)
        by_label[key] = by_label.get(key, 0) + 1
    n = topo.counts()
    assert by_label[(EntityType.CLUSTER, "contains", EntityType.ZONE)] == n[EntityType.ZONE]
    assert by_label[(EntityType.ZONE, "contains", EntityType.HOST)] == n[EntityType.HOST]
    assert by_label[(EntityType.HOST, "contains", EntityType.INSTANCE)] == n[EntityType.INSTANCE]
    assert by_label[(EntityType.NETWORK, "contains", EntityType.PORT)] == n[EntityType.PORT]
    assert by_label[(EntityType.PORT, "attached", EntityType.INSTANCE)] == n[EntityType.PORT]
    assert by_label[(EntityType.VOLUME, "attached", EntityType.INSTANCE)] == n[EntityType.VOLUME]
    alarms = sum(v for (src, label, _), v in by_label.items() if label == "on")
    assert alarms == sum(n[t] for t in ALARM_TYPES) == 20
    # Every zone hangs off the one cluster, every instance's host is its "contains" parent.
    assert {e.src_id for e in edges if e.dst_type == EntityType.ZONE} == {CLUSTER_ID}
    for e in edges:
        if e.dst_type == EntityType.INSTANCE and e.label == "contains":
            assert topo.get(EntityType.INSTANCE, e.dst_id)["host"] == e.src_id


def test_every_event_validates_against_the_wire_contract() -> None:
    topo = generate_topology(TopologyConfig(alarms=30), seed=5)
    events = list(snapshot_events(topo.snapshot_items(), "snapshot", TS, "p"))
    parsed = decode_events(orjson.dumps(events))
    assert len(parsed) == topo.total() + len(SOURCES)
    for raw, event in zip(events, parsed, strict=True):
        assert isinstance(event, Event)
        assert event.to_wire() == raw  # the lightweight dicts are exactly the wire form
    ends = [e for e in parsed if e.action == Action.END_SNAPSHOT]
    assert [e.entity_type for e in ends] == list(SOURCES)
    assert len({e.event_id for e in parsed}) == len(parsed)


def test_alarm_payloads_follow_the_contract() -> None:
    topo = generate_topology(TopologyConfig(alarms=50), seed=2)
    for alarm_type in ALARM_TYPES:
        for aid, p in topo.entities[alarm_type].items():
            assert aid == f"{alarm_type}:{p['resource_id']}:{p['name']}"
            assert p["status"] == "firing"
            assert topo.get(p["resource_type"], p["resource_id"]) is not None
            allowed = (
                {"warning", "average", "high", "disaster"}
                if alarm_type == EntityType.ZABBIX
                else {"critical", "warning"}
            )
            assert p["severity"] in allowed


def test_large_topology_is_fast() -> None:
    t0 = time.perf_counter()
    topo = generate_topology(TopologyConfig.large(), seed=42)
    elapsed = time.perf_counter() - t0
    assert topo.total() > 100_000
    assert elapsed < 10, f"generating {topo.total()} entities took {elapsed:.1f}s"
