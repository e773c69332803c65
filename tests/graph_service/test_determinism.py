"""Determinism (DESIGN.md invariant 1): the processor is a function of (graph, event).

A seeded pseudo-random stream (creates, moves, state changes, deletes, alarms firing
and resolving, evaluator action steps, redeliveries, stale and out-of-order events in
mixed UTC offsets, malformed events, snapshot rounds with end_snapshot) is fed to:

(a) two processors: byte-identical graph pickles and equal bookkeeping;
(b) a processor that only replays the logged changes (through JSON, as the log
    stores them): the same bytes and bookkeeping, no transformer run;
(c) a processor that replays a prefix and processes the rest (failover): the same.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from typing import Any

import orjson
import pytest

from graph_service.entity_graph import IS_DELETED, IS_PLACEHOLDER, EntityGraph
from graph_service.processor import Outcome, Processor, Status
from graph_service.transformers import MalformedEvent
from rca_common.events import Event, decode_events, encode_events
from tests.graph_service.core_helpers import T0, bookkeeping, graph_bytes, vid

MIN_TIME_TO_DELETE = 300.0
RECENT_CAPACITY = 1500  # smaller than the stream: old ids are forgotten, as in production

OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
INSTANCE_STATES = ["ACTIVE", "active", "SHUTOFF", "ERROR", "PAUSED", "BUILD", "weird"]
HOST_STATES = ["UP", "DOWN", "maintenance", "ok"]
ALARMS = [
    ("zabbix", "nova.host", "high"),
    ("zabbix", "nova.host", "average"),
    ("prometheus", "nova.instance", "critical"),
    ("prometheus", "nova.host", "warning"),
    ("aodh", "nova.instance", "low"),
    ("aodh", "neutron.port", "moderate"),
]


@dataclass
class StreamGen:
    """A seeded stream of events over a small cloud that it keeps a model of."""

    seed: int
    rng: random.Random = field(init=False)
    t: float = 0.0
    n: int = 0
    events: list[Event] = field(default_factory=list)
    zones: list[str] = field(default_factory=lambda: [f"z{i}" for i in range(3)])
    hosts: dict[str, str] = field(default_factory=dict)  # host -> zone
    instances: dict[str, str] = field(default_factory=dict)  # instance -> host
    ports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    volumes: dict[str, list[str]] = field(default_factory=dict)
    alarms: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    last_ts: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # ------------------------------------------------------------ emitting
    def emit(
        self,
        etype: str,
        eid: str,
        action: str = "update",
        t: float | None = None,
        **payload: Any,
    ) -> None:
        rng = self.rng
        when = self.t if t is None else t
        # Sources' clocks disagree a little: out-of-order times across entities.
        when -= rng.random() * 3.0 if t is None else 0.0
        self.last_ts[(etype, eid)] = max(when, self.last_ts.get((etype, eid), when))
        self.n += 1
        stamp = (T0 + timedelta(seconds=round(when, 6))).astimezone(rng.choice(OFFSETS))
        extra = {"trace_id": f"tr-{self.n}"} if rng.random() < 0.1 else {}
        self.events.append(
            Event(
                event_id=f"{self.seed}-{self.n}",
                source=etype,
                entity_type=etype,
                entity_id=eid,
                action=action,
                sample_timestamp=stamp,
                payload=payload,
                **extra,
            )
        )

    def end_snapshot(self, source: str) -> None:
        self.n += 1
        self.events.append(
            Event(
                event_id=f"{self.seed}-{self.n}",
                source=source,
                entity_type=source,
                action="end_snapshot",
                sample_timestamp=T0 + timedelta(seconds=self.t),
            )
        )

    # ------------------------------------------------------------- entities
    def host_event(self, h: str, action: str = "update", t: float | None = None) -> None:
        self.emit("nova.host", h, action, t, zone=self.hosts[h], state=self.rng.choice(HOST_STATES))

    def instance_event(self, i: str, action: str = "update", t: float | None = None) -> None:
        rng = self.rng
        payload: dict[str, Any] = {"host": self.instances[i], "state": rng.choice(INSTANCE_STATES)}
        if rng.random() < 0.5:
            payload["flavor"] = rng.choice(["m1.small", "m1.large"])
        if rng.random() < 0.2:
            payload["metadata"] = {"tier": rng.choice(["web", "db"]), "n": rng.randint(0, 3)}
        self.emit("nova.instance", i, action, t, **payload)

    def port_event(self, p: str, action: str = "update") -> None:
        net, dev = self.ports[p]
        payload: dict[str, Any] = {"network_id": net, "state": self.rng.choice(["ACTIVE", "DOWN"])}
        if dev is not None:
            payload["device_id"] = dev
        self.emit("neutron.port", p, action, **payload)

    def volume_event(self, v: str, action: str = "update") -> None:
        self.emit("cinder.volume", v, action, attached_to=list(self.volumes[v]), state="in-use")

    def action_event(self) -> None:
        """A raw evaluator round of one to three steps, each activating or deactivating
        one of a few (action, match) pairs on an instance, so that counts, overlaps and
        no-ops all occur."""
        steps = [self.action_step() for _ in range(self.rng.randint(1, 3))]
        self.n += 1
        self.events.append(
            Event(
                event_id=f"{self.seed}-{self.n}",
                source="vitrage",
                entity_type="vitrage",
                entity_id="evaluator",
                action="update",
                sample_timestamp=T0 + timedelta(seconds=round(self.t, 6)),
                payload={"steps": steps},
            )
        )

    def action_step(self) -> dict[str, Any]:
        rng = self.rng
        i = self.pick(self.instances) or "i-none"
        target = vid("nova.instance", i)
        kind = rng.choice(["raise_alarm", "raise_alarm", "set_state", "mark_down"])
        template = rng.choice(["t1#0", "t2#0"])
        alarm = self.pick(self.alarms)
        causing = vid(self.alarms[alarm][0], alarm) if alarm and rng.random() < 0.7 else None
        match = {"instance": target, **({"alarm": causing} if causing else {})}
        payload: dict[str, Any] = {
            "op": rng.choice(["activate", "activate", "deactivate"]),
            "action": kind,
            "action_key": f"{template}|s0|a{kind}|{target}",
            "match_key": f"c0|m{rng.randint(0, 2)}|{target}",
            "template": template,
            "scenario": 0,
            "clause": 0,
            "match": match,
            "target": target,
        }
        if kind == "raise_alarm":
            payload["alarm_name"] = rng.choice(["deduced", "other"])
            payload["severity"] = rng.choice(["critical", "warning", "CRITICAL"])
            if causing:
                payload["causing"] = causing
        elif kind == "set_state":
            payload["state"] = rng.choice(["SUBOPTIMAL", "ERROR"])
        return payload

    def pick(self, d: dict[str, Any]) -> str | None:
        return self.rng.choice(sorted(d)) if d else None

    # ----------------------------------------------------------------- steps
    def step(self) -> None:
        rng = self.rng
        self.t += rng.expovariate(1 / 2.0)
        r = rng.random()
        if r < 0.12 or not self.instances:  # create an instance (maybe on an unknown host)
            i = f"i{self.n}"
            self.instances[i] = rng.choice([*sorted(self.hosts), f"h{rng.randint(0, 15)}"])
            self.instance_event(i)
        elif r < 0.30:  # instance state change
            self.instance_event(self.pick(self.instances))  # type: ignore[arg-type]
        elif r < 0.37:  # move an instance
            i = self.pick(self.instances)
            self.instances[i] = f"h{rng.randint(0, 15)}"  # type: ignore[index]
            self.instance_event(i)  # type: ignore[arg-type]
        elif r < 0.42:  # host create / state change / zone move
            h = f"h{rng.randint(0, 15)}"
            if h not in self.hosts or rng.random() < 0.2:
                self.hosts[h] = rng.choice(self.zones)
            self.host_event(h)
        elif r < 0.44:
            self.emit("nova.zone", rng.choice(self.zones), cluster="c0", state="available")
        elif r < 0.50:  # ports: create, attach, detach
            p = self.pick(self.ports) if self.ports and rng.random() < 0.6 else f"p{self.n}"
            dev = self.pick(self.instances) if rng.random() < 0.7 else None
            self.ports[p] = (f"n{rng.randint(0, 3)}", dev)  # type: ignore[index]
            self.port_event(p)  # type: ignore[arg-type]
        elif r < 0.56:  # volumes: attach lists change
            v = self.pick(self.volumes) if self.volumes and rng.random() < 0.6 else f"v{self.n}"
            att = self.volumes.get(v, [])  # type: ignore[arg-type]
            if att and rng.random() < 0.4:
                att = att[1:]
            elif self.instances:
                att = sorted({*att, self.pick(self.instances)})  # type: ignore[arg-type]
            self.volumes[v] = att  # type: ignore[index]
            self.volume_event(v)  # type: ignore[arg-type]
        elif r < 0.62:  # deletes
            kind = rng.choice(["nova.instance", "neutron.port", "cinder.volume", "nova.host"])
            model = {
                "nova.instance": self.instances,
                "neutron.port": self.ports,
                "cinder.volume": self.volumes,
                "nova.host": self.hosts,
            }[kind]
            victim = self.pick(model)
            if victim is not None:
                del model[victim]
                self.emit(kind, victim, "delete")
        elif r < 0.74:  # an alarm fires (or fires again)
            a = self.pick(self.alarms) if self.alarms and rng.random() < 0.3 else f"a{self.n}"
            atype, rtype, sev = rng.choice(ALARMS)
            rid = {
                "nova.host": lambda: f"h{rng.randint(0, 15)}",
                "nova.instance": lambda: self.pick(self.instances) or "i-none",
                "neutron.port": lambda: self.pick(self.ports) or "p-none",
            }[rtype]()
            if a in self.alarms:
                atype = self.alarms[a][0]  # an alarm keeps its datasource
            self.alarms[a] = (atype, rtype, rid, sev)  # type: ignore[index]
            self.emit(
                atype,
                a,
                name=f"alarm {a}",
                severity=sev,
                resource_type=rtype,  # type: ignore[arg-type]
                resource_id=rid,
                status="firing",
            )
        elif r < 0.82:  # an alarm resolves
            a = self.pick(self.alarms)
            if a is not None:
                atype, rtype, rid, sev = self.alarms.pop(a)
                self.emit(
                    atype,
                    a,
                    name=f"alarm {a}",
                    severity=sev,
                    resource_type=rtype,
                    resource_id=rid,
                    status="resolved",
                )
        elif r < 0.84:  # an evaluator round (repeats and undos of inactive pairs too)
            self.action_event()
        elif r < 0.91:  # a redelivery of an earlier event
            if self.events:
                self.events.append(rng.choice(self.events[-200:]))
        elif r < 0.96:  # a late (stale) event for an entity
            i = self.pick(self.instances)
            if i is not None and ("nova.instance", i) in self.last_ts:
                self.instance_event(i, t=self.last_ts[("nova.instance", i)] - rng.uniform(1, 50))
        else:  # malformed: the processor must reject it without a trace
            self.n += 1
            bad = rng.choice(
                [
                    {"entity_type": "nova.hypervisor", "entity_id": "x", "payload": {}},
                    {"entity_type": "nova.host", "entity_id": "", "payload": {}},
                    {
                        "entity_type": "zabbix",
                        "entity_id": "a",
                        "payload": {"name": "n", "resource_type": "nova.host"},
                    },
                    {
                        "entity_type": "nova.instance",
                        "entity_id": "i0",
                        "payload": {"host": ["h1"]},
                    },
                ]
            )
            self.events.append(
                Event(
                    event_id=f"{self.seed}-{self.n}",
                    source="bad",
                    action="update",
                    sample_timestamp=T0 + timedelta(seconds=self.t + 10**6),
                    **bad,
                )
            )

    def snapshot_round(self, source: str, missing: float) -> None:
        """A get_all of one source, interleaved with live events; some entities are
        missing from it (deleted behind our back) and must be deleted by end_snapshot."""
        model: dict[str, Any] = {"nova.instance": self.instances, "nova.host": self.hosts}[source]
        members = sorted(model)
        self.rng.shuffle(members)
        for k, eid in enumerate(members):
            if eid not in model:  # deleted by a live event during the round
                continue
            if self.rng.random() < missing:
                del model[eid]  # gone from the cloud: the snapshot will not mention it
                continue
            action = "init_snapshot" if k == 0 else "snapshot"
            if source == "nova.instance":
                self.instance_event(eid, action, t=self.t)
            else:
                self.host_event(eid, action, t=self.t)
            if self.rng.random() < 0.3:
                self.step()
        self.t += 1
        self.end_snapshot(source)

    def generate(self, steps: int) -> list[Event]:
        for k in range(steps):
            self.step()
            if k in (steps // 3, (2 * steps) // 3):
                self.snapshot_round("nova.instance", missing=0.1)
            if k == steps // 2:
                self.snapshot_round("nova.host", missing=0.15)
        return self.events


def run(p: Processor, events: list[Event], start: int = 0) -> list[tuple[int, Outcome]]:
    """Process events; the log holds (position in the stream, outcome) per accepted one."""
    log: list[tuple[int, Outcome]] = []
    for pos, event in enumerate(events, start):
        try:
            log.append((pos, p.process(event)))
        except MalformedEvent:
            continue
    return log


def processor() -> Processor:
    return Processor(min_time_to_delete=MIN_TIME_TO_DELETE, recent_capacity=RECENT_CAPACITY)


def through_the_log(outcome: Outcome) -> tuple[Event, list[list[Any]]]:
    """What a log record gives back: the event's wire form and the changes, via JSON."""
    [event] = decode_events(encode_events([outcome.event]))
    return event, orjson.loads(orjson.dumps(outcome.changes))


Stream = tuple[list[Event], Processor, list[tuple[int, Outcome]]]


@pytest.fixture(scope="module", params=[1, 2, 3])
def stream(request: pytest.FixtureRequest) -> Stream:
    events = StreamGen(seed=request.param).generate(3000)
    p = processor()
    return events, p, run(p, events)


def test_the_stream_exercises_everything(
    stream: Stream,
) -> None:
    events, p, indexed = stream
    log = [o for _, o in indexed]
    assert len(events) > 3000
    statuses = Counter(o.status for o in log)
    assert statuses[Status.APPLIED] > 2000
    assert statuses[Status.DUPLICATE] > 50
    assert statuses[Status.STALE] > 50
    assert len(events) - len(log) > 30  # malformed ones
    ops = Counter(c[0] for o in log for c in o.changes)
    assert ops["V"] > 50  # purges
    assert ops["E"] > 50  # moves
    assert ops["e"] > 1000 and ops["v"] > 2000
    ends = [o for o in log if o.event.action == "end_snapshot" and o.logged]
    assert len(ends) == 3
    assert all(len(o.changes) > 5 for o in ends)  # consistency deleted things
    attrs = [a for _, a in p.graph.vertices()]
    assert any(a.get(IS_PLACEHOLDER) for a in attrs)
    assert any(a.get(IS_DELETED) for a in attrs)
    assert len(p.recent) == RECENT_CAPACITY
    actions = [o for o in log if o.event.entity_type == "vitrage"]
    assert len(actions) > 30 and sum(1 for o in actions if o.changes) > 10
    assert sum(1 for o in actions if not o.changes) > 5  # rounds of no-op steps
    assert any(len(o.event.payload["steps"]) > 1 for o in actions)
    assert len(p.actions) > 0


def test_a_two_processors_agree(stream: Stream) -> None:
    events, p1, indexed = stream
    log1 = [o for _, o in indexed]
    # The second processor gets its events from the wire: object identity must not matter.
    wire_events = decode_events(encode_events(events))
    p2 = processor()
    log2 = [o for _, o in run(p2, wire_events)]
    assert graph_bytes(p2) == graph_bytes(p1)
    assert bookkeeping(p2) == bookkeeping(p1)
    assert [o.status for o in log2] == [o.status for o in log1]
    assert [orjson.dumps(o.changes) for o in log2] == [orjson.dumps(o.changes) for o in log1]


def test_b_replaying_the_logged_changes_rebuilds_the_same_state(
    stream: Stream,
) -> None:
    _, p1, indexed = stream
    p3 = processor()
    for _, outcome in indexed:
        if outcome.status is Status.DUPLICATE:
            continue
        p3.replay(*through_the_log(outcome))
    assert graph_bytes(p3) == graph_bytes(p1)
    assert bookkeeping(p3) == bookkeeping(p1)
    assert p3.clock == p1.clock and p3._round == p1._round
    assert list(p3.recent._order) == list(p1.recent._order)


def test_c_replay_a_prefix_then_process_the_rest(
    stream: Stream,
) -> None:
    events, p1, indexed = stream
    expected = (graph_bytes(p1), bookkeeping(p1))
    logged = [(pos, o) for pos, o in indexed if o.status is not Status.DUPLICATE]
    rng = random.Random(99)
    for cut in sorted({0, 1, len(logged) // 2, len(logged), *rng.sample(range(len(logged)), 3)}):
        p = processor()
        for _, outcome in logged[:cut]:
            p.replay(*through_the_log(outcome))
        # The failover resumes at the event after the last logged one; input
        # before that comes again as redeliveries (duplicates for the new active).
        resume = logged[cut - 1][0] + 1 if cut else 0
        redelivered = events[max(0, resume - 20) : resume]
        run(p, redelivered + events[resume:])
        assert (graph_bytes(p), bookkeeping(p)) == expected, f"cut at {cut}"


def canonical(g: EntityGraph) -> tuple[Any, ...]:
    """Order-sensitive content of a graph (what a drill compares), without pickle memo."""
    return (
        [(v, list(a.items())) for v, a in g.vertices()],
        [(s, d, k, list(a.items())) for s, d, k, a in g.edges()],
        list(g._deleted.items()),
    )


def test_snapshot_restore_then_process_the_rest_gives_the_same_graph(
    stream: Stream,
) -> None:
    """Failover from a snapshot: unpickle the graph at a cut, process the rest."""
    events, p1, _ = stream
    cut = len(events) // 2
    p = processor()
    run(p, events[:cut])
    p.graph = pickle.loads(pickle.dumps(p.graph, protocol=5))
    run(p, events[cut:])
    assert canonical(p.graph) == canonical(p1.graph)
    assert bookkeeping(p) == bookkeeping(p1)


def test_the_edge_counter_agrees_with_networkx(stream: Stream) -> None:
    """EntityGraph counts edges itself (networkx would walk the graph every time)."""
    _, p1, _ = stream
    assert p1.graph.edge_count == p1.graph._g.number_of_edges() > 0
    restored = pickle.loads(pickle.dumps(p1.graph))
    assert restored.edge_count == p1.graph.edge_count
