"""The update stream: deterministic, strictly ordered in time, consistent with its model."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime

import orjson
import pytest

from collector_stub.stream import (
    DEFAULT_CLOCK_START,
    LogicalClock,
    StreamConfig,
    UpdateStream,
    reference_events,
)
from collector_stub.topology import (
    ALARM_TYPES,
    SOURCES,
    Topology,
    TopologyConfig,
    generate_topology,
)
from rca_common.events import Action, EntityType, decode_events
from rca_common.timestamps import parse_timestamp

STORMY = StreamConfig(seed=9, storm_every=150)


def test_same_seed_gives_byte_identical_events() -> None:
    a, _ = reference_events(seed=5, stream_events=3000, stream_config=STORMY)
    b, _ = reference_events(seed=5, stream_events=3000, stream_config=STORMY)
    assert orjson.dumps(a) == orjson.dumps(b)


def test_different_seed_gives_different_stream() -> None:
    a = UpdateStream(generate_topology(seed=5), StreamConfig(seed=1)).take(200)
    b = UpdateStream(generate_topology(seed=5), StreamConfig(seed=2)).take(200)
    assert orjson.dumps(a) != orjson.dumps(b)


def test_timestamps_strictly_increase_and_ids_are_unique() -> None:
    stream = UpdateStream(generate_topology(), STORMY)
    events = stream.take(5000)
    stamps = [parse_timestamp(e["sample_timestamp"]) for e in events]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[0] > DEFAULT_CLOCK_START
    assert len({e["event_id"] for e in events}) == len(events)


def test_stream_events_validate_against_the_wire_contract() -> None:
    events, _ = reference_events(stream_events=2000, stream_config=StreamConfig(storm_every=100))
    parsed = decode_events(orjson.dumps(events))
    assert [e.to_wire() for e in parsed] == events
    stream_actions = {e.action for e in parsed[-2000:]}
    assert stream_actions == {Action.UPDATE, Action.DELETE}


def test_no_wall_clock_in_content() -> None:
    cfg = StreamConfig(clock_start=datetime(2030, 5, 1, tzinfo=UTC))
    events = UpdateStream(generate_topology(), cfg).take(10)
    assert events[0]["sample_timestamp"] == "2030-05-01T00:00:00.000001Z"
    assert events[0]["event_id"].startswith(f"{cfg.seed}-")


class Checker:
    """An independent model of what the stream may do, replayed event by event."""

    def __init__(self, topo: Topology) -> None:
        self.ents = copy.deepcopy(topo.entities)
        self.deleted: set[str] = set()

    def live(self, entity_type: str, entity_id: str) -> bool:
        return entity_id in self.ents[entity_type]

    def check(self, e: dict) -> None:
        t, eid, p, action = e["entity_type"], e["entity_id"], e["payload"], e["action"]
        assert eid not in self.deleted, f"event on a deleted entity: {e}"
        if t in ALARM_TYPES:
            if p["status"] == "resolved":
                assert self.live(t, eid), f"resolving an alarm that is not firing: {e}"
                del self.ents[t][eid]
            else:
                assert not self.live(t, eid), f"firing an alarm twice: {e}"
                assert self.live(p["resource_type"], p["resource_id"]), f"alarm on nothing: {e}"
                self.ents[t][eid] = p
            return
        if action == Action.DELETE:
            assert self.live(t, eid), f"deleting what does not exist: {e}"
            if t == EntityType.INSTANCE:
                firing = [
                    a
                    for at in ALARM_TYPES
                    for a, ap in self.ents[at].items()
                    if ap["resource_id"] == eid
                ]
                assert not firing, f"instance deleted with firing alarms {firing}"
                assert not [
                    pid for pid, pp in self.ents["neutron.port"].items() if pp["device_id"] == eid
                ], "instance deleted before its ports"
            del self.ents[t][eid]
            self.deleted.add(eid)
            return
        old = self.ents[t].get(eid)
        if t == EntityType.INSTANCE:
            assert self.live(EntityType.HOST, p["host"]), f"instance on unknown host: {e}"
            if old is not None and old["host"] != p["host"]:
                assert old["state"] == p["state"], "a migration changes only the host"
        elif t == EntityType.PORT:
            assert self.live(EntityType.INSTANCE, p["device_id"]), f"port of nothing: {e}"
            assert self.live(EntityType.NETWORK, p["network_id"]), f"port on no network: {e}"
        elif t == EntityType.VOLUME:
            for iid in p["attached_to"]:
                assert self.live(EntityType.INSTANCE, iid), f"volume on nothing: {e}"
            assert p["state"] == ("in-use" if p["attached_to"] else "available")
        self.ents[t][eid] = p


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_keeps_its_model_consistent(seed: int) -> None:
    topo = generate_topology(TopologyConfig(alarms=10), seed=seed)
    checker = Checker(topo)
    stream = UpdateStream(topo, StreamConfig(seed=seed, storm_every=200))
    kinds: set[tuple[str, str]] = set()
    for event in stream.take(6000):
        checker.check(event)
        kinds.add((event["entity_type"], event["action"]))
    # The model the collector snapshots is exactly the fold of what it emitted.
    assert checker.ents == topo.entities
    for edge in topo.expected_edges():
        assert topo.get(edge.src_type, edge.src_id) is not None
        assert topo.get(edge.dst_type, edge.dst_id) is not None
    assert {("nova.instance", "update"), ("nova.instance", "delete")} <= kinds
    assert {("neutron.port", "delete"), ("cinder.volume", "update")} <= kinds


def test_all_kinds_of_change_happen() -> None:
    topo = generate_topology(seed=4)
    before = copy.deepcopy(topo.entities)
    stream = UpdateStream(topo, StreamConfig(seed=4, storm_every=500))
    events = stream.take(3000)
    migrated = state_changed = created = fired = resolved = 0
    seen = dict(before[EntityType.INSTANCE])
    for e in events:
        p = e["payload"]
        if e["entity_type"] == EntityType.INSTANCE and e["action"] == Action.UPDATE:
            old = seen.get(e["entity_id"])
            if old is None:
                created += 1
            elif old["host"] != p["host"]:
                migrated += 1
            elif old["state"] != p["state"]:
                state_changed += 1
            seen[e["entity_id"]] = p
        if e["entity_type"] in ALARM_TYPES:
            fired += p["status"] == "firing"
            resolved += p["status"] == "resolved"
    assert min(migrated, state_changed, created, fired, resolved) > 0


def test_storm_fires_host_alarm_and_many_instance_alarms_at_once() -> None:
    topo = generate_topology(TopologyConfig(hosts=2, instances_per_host=20, alarms=0), seed=6)
    # Only single-event state changes besides the storm, so the storm starts exactly at 50.
    cfg = StreamConfig(seed=6, storm_every=50, storm_fraction=1.0, weights={"instance_state": 1})
    stream = UpdateStream(topo, cfg)
    assert all(e["entity_type"] == EntityType.INSTANCE for e in stream.take(50))
    burst = stream.take(21)  # the storm is due now: host alarm + 20 InstanceDown
    host_alarm = burst[0]
    assert host_alarm["entity_type"] == "zabbix"
    assert host_alarm["payload"]["name"] == "Host is unreachable"
    host = host_alarm["payload"]["resource_id"]
    rest = burst[1:]
    assert all(e["payload"]["name"] == "InstanceDown" for e in rest)
    assert {e["payload"]["resource_id"] for e in rest} == set(
        topo.referrers("host_instances", host)
    )


def test_instance_count_stays_near_its_initial_size() -> None:
    topo = generate_topology(seed=8)
    start = len(topo.instances)
    UpdateStream(topo, StreamConfig(seed=8)).take(20_000)
    assert 0.8 * start <= len(topo.instances) <= 1.2 * start


def test_empty_topology_streams_nothing() -> None:
    cfg = TopologyConfig(zones=0, hosts=0, networks=0, alarms=0)
    assert UpdateStream(generate_topology(cfg), StreamConfig()).take(5) == []


def test_snapshot_is_point_in_time_and_not_older_than_published_updates() -> None:
    topo = generate_topology(seed=3)
    stream = UpdateStream(topo, StreamConfig(seed=3))
    updates = stream.take(500)
    events, action = stream.snapshot()
    assert action == "init_snapshot"
    counts_then = topo.counts()
    later = stream.take(500)  # changes after the copy must not leak into it
    snap = list(events)
    assert stream.snapshot()[1] == "snapshot"
    newest = max(parse_timestamp(e["sample_timestamp"]) for e in updates)
    assert all(parse_timestamp(e["sample_timestamp"]) >= newest for e in snap)
    assert all(
        parse_timestamp(e["sample_timestamp"]) > parse_timestamp(s["sample_timestamp"])
        for e in later[:1]
        for s in snap[:1]
    )
    ends = {e["entity_type"]: e["payload"]["count"] for e in snap if e["action"] == "end_snapshot"}
    assert ends == counts_then
    assert list(ends) == list(SOURCES)


def test_reference_events_are_snapshot_then_stream() -> None:
    events, _topo = reference_events(seed=12, stream_events=100)
    n_snap = generate_topology(seed=12).total() + len(SOURCES)
    assert len(events) == n_snap + 100
    assert {e["action"] for e in events[:n_snap]} == {"init_snapshot", "end_snapshot"}
    assert events[n_snap]["event_id"].endswith("-1")
    assert events[-1]["event_id"].endswith("-100")


def test_logical_clock_catches_up_with_external_time() -> None:
    clock = LogicalClock(DEFAULT_CLOCK_START, tick_us=1000)
    clock.advance_to(datetime(2024, 1, 1, 0, 0, 1, 500, tzinfo=UTC))
    assert clock.now() >= datetime(2024, 1, 1, 0, 0, 1, 500, tzinfo=UTC)
    before = clock.now()
    clock.advance_to(DEFAULT_CLOCK_START)  # never goes back
    assert clock.now() == before
    assert parse_timestamp(clock.advance()) > before


def test_stream_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown stream operations"):
        StreamConfig(weights={"explode_host": 1})
    with pytest.raises(ValueError, match="positive weight"):
        StreamConfig(weights={"fire_alarm": 0})
