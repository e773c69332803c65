"""Replay-exactness of evaluation (DESIGN.md invariant 1 with evaluator actions).

A seeded stream of host outages, InstanceDown alarms, migrations, deletions,
network outages, port moves and redeliveries is processed to the fixpoint with
the shipped templates. Then:

(a) a second run from the wire gives the same action events, changes and state;
(b) replaying the logged records (through JSON) into a fresh processor rebuilds
    the same graph bytes and the same action registry without any evaluator;
(c) a snapshot (export/import through pickle) in the middle, then processing the
    rest, gives the same action events and the same state;
(d) a failover cut anywhere (even in the middle of a storm's evaluation): replay
    the log prefix, drain events with evaluators disabled, evaluate only the
    vertices they touched, continue: the same deduced alarms, states and causes
    edges as the run without failure, and no action applied twice.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from graph_service import snapshot_codec
from graph_service.actions import ActionRegistry
from graph_service.entity_graph import IS_DELETED, SAMPLE_TS, TYPE
from graph_service.evaluator import (
    evaluation_trigger,
    run_pending,
    run_to_fixpoint,
    touched_vertices,
)
from graph_service.processor import Outcome, Processor, Status
from rca_common.events import Event, decode_events, encode_events
from tests.graph_service.core_helpers import T0, bookkeeping, ev, graph_bytes
from tests.graph_service.evaluator_helpers import (
    Env,
    alarm,
    host_alarm,
    instance_down,
    shipped,
)

MIN_TIME_TO_DELETE = 40.0
HOSTS = [f"h{n}" for n in range(6)]
NETWORKS = ["n0", "n1"]


@dataclass
class Storms:
    """A seeded stream over a small cloud, with the model needed to keep it sensible."""

    seed: int
    rng: random.Random = field(init=False)
    t: float = 0.0
    events: list[Event] = field(default_factory=list)
    instances: dict[str, str] = field(default_factory=dict)  # instance -> host
    ports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    firing: dict[str, Event] = field(default_factory=dict)  # alarm id -> its firing event

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add(self, event: Event) -> None:
        self.events.append(event)

    def instance(self, i: str, action: str = "update") -> None:
        state = self.rng.choice(["ACTIVE", "ACTIVE", "SHUTOFF"])
        self.add(
            ev("nova.instance", i, self.t, action, host=self.instances.get(i, "h0"), state=state)
        )

    def port(self, p: str) -> None:
        net, dev = self.ports[p]
        payload: dict[str, Any] = {"network_id": net, "state": "ACTIVE"}
        if dev is not None:
            payload["device_id"] = dev
        self.add(ev("neutron.port", p, self.t, **payload))

    def fire(self, aid: str, event: Event) -> None:
        self.firing[aid] = event
        self.add(event)

    def resolve(self, aid: str) -> None:
        event = self.firing.pop(aid)
        payload = {**event.payload, "status": "resolved"}
        self.add(ev(event.entity_type, aid, self.t, **payload))

    def setup(self) -> None:
        for h in HOSTS:
            self.add(ev("nova.host", h, 0, zone="z0", state="available"))
        for n in NETWORKS:
            self.add(ev("neutron.network", n, 0, state="ACTIVE"))
        for k in range(24):
            self.instances[f"i{k}"] = HOSTS[k % len(HOSTS)]
            self.instance(f"i{k}")
            self.ports[f"p{k}"] = (NETWORKS[k % 2], f"i{k}")
            self.port(f"p{k}")
        for k in range(0, 24, 5):  # some instances have a second port on the same network
            self.ports[f"q{k}"] = (NETWORKS[k % 2], f"i{k}")
            self.port(f"q{k}")

    def storm(self) -> None:
        """A host outage: the host alarm, then InstanceDown on most of its instances."""
        h = self.rng.choice(HOSTS)
        aid = f"down-{h}"
        if aid not in self.firing:
            self.fire(aid, host_alarm(aid, h, self.t))
        for i, on in sorted(self.instances.items()):
            if on == h and self.rng.random() < 0.8 and f"id-{i}" not in self.firing:
                self.fire(f"id-{i}", instance_down(f"id-{i}", i, self.t))

    def step(self) -> None:
        rng = self.rng
        self.t += 1
        r = rng.random()
        if r < 0.10:
            self.storm()
        elif r < 0.22 and self.firing:
            self.resolve(rng.choice(sorted(self.firing)))
        elif r < 0.32:
            i = rng.choice(sorted(self.instances))
            if f"id-{i}" not in self.firing:
                self.fire(f"id-{i}", instance_down(f"id-{i}", i, self.t))
        elif r < 0.40:  # another kind of host alarm (matters to the NOT template)
            h = rng.choice(HOSTS)
            aid = f"fs-{h}"
            if aid not in self.firing:
                event = alarm("prometheus", aid, "NodeFilesystemAlmostFull", "nova.host", h, self.t)
                self.fire(aid, event)
        elif r < 0.52:  # migration
            i = rng.choice(sorted(self.instances))
            self.instances[i] = rng.choice(HOSTS)
            self.instance(i)
        elif r < 0.57:  # deletion (its alarms clear first, as in OpenStack)
            i = rng.choice(sorted(self.instances))
            if f"id-{i}" in self.firing:
                self.resolve(f"id-{i}")
            self.instance(i, "delete")
            del self.instances[i]
        elif r < 0.62:  # (re)creation
            i = f"i{rng.randint(0, 29)}"
            self.instances[i] = rng.choice(HOSTS)
            self.instance(i)
        elif r < 0.70:  # network outage
            n = rng.choice(NETWORKS)
            aid = f"out-{n}"
            if aid not in self.firing:
                self.fire(aid, alarm("aodh", aid, "Network outage", "neutron.network", n, self.t))
        elif r < 0.78:  # a port moves or detaches
            p = rng.choice(sorted(self.ports))
            net, _ = self.ports[p]
            dev = rng.choice([None, *sorted(self.instances)])
            self.ports[p] = (net, dev)
            self.port(p)
        elif r < 0.86:
            self.instance(rng.choice(sorted(self.instances)))
        else:  # a redelivery
            self.add(rng.choice(self.events[-30:]))

    def generate(self, steps: int) -> list[Event]:
        self.setup()
        for _ in range(steps):
            self.step()
        return self.events


def env() -> Env:
    return Env(shipped(), min_time_to_delete=MIN_TIME_TO_DELETE)


def run(e: Env, events: list[Event]) -> list[Outcome]:
    for event in events:
        e.run(event)
    return e.log


@dataclass
class Reference:
    events: list[Event]
    env: Env
    log: list[Outcome]


@pytest.fixture(scope="module", params=[11, 12])
def reference(request: pytest.FixtureRequest) -> Reference:
    events = Storms(request.param).generate(300)
    e = env()
    return Reference(events, e, run(e, events))


def record(outcome: Outcome) -> tuple[dict[str, Any], list[list[Any]]]:
    """A log record as the persistor stores it: the event's wire form and the changes, JSON."""
    return (
        orjson.loads(orjson.dumps(outcome.event.to_wire())),
        orjson.loads(orjson.dumps(outcome.changes)),
    )


def fingerprint(log: list[Outcome]) -> list[tuple[str, str, bytes]]:
    return [(o.event.event_id, o.status.value, orjson.dumps(o.changes)) for o in log]


def registry_bytes(p: Processor) -> bytes:
    return pickle.dumps(p.actions.export(), protocol=5)


def view(p: Processor) -> dict[str, Any]:
    """What an operator sees: live vertices and edges with their properties (a deduced
    alarm's time is when it was raised, which a failover may legitimately change)."""
    vertices = {
        v: {k: x for k, x in a.items() if not (a.get(TYPE) == "vitrage" and k == SAMPLE_TS)}
        for v, a in p.graph.vertices()
        if not a.get(IS_DELETED)
    }
    edges = {(s, d, k) for s, d, k, a in p.graph.edges() if not a.get(IS_DELETED)}
    return {"vertices": vertices, "edges": edges, "actions": set(p.actions.pairs())}


# ---------------------------------------------------------------------- tests
def test_the_stream_exercises_the_evaluator(reference: Reference) -> None:
    log, p = reference.log, reference.env.p
    actions = [o for o in log if o.event.entity_type == "vitrage"]
    steps = [s for o in actions for s in o.event.payload["steps"]]
    ops = Counter((s["op"], s["action"]) for s in steps)
    for kind in ("raise_alarm", "set_state", "mark_down", "add_causal_relationship"):
        assert ops[("activate", kind)] > 3, ops
        assert ops[("deactivate", kind)] > 3, ops
    templates = Counter(s["action_key"].split("#")[0] for s in steps)
    assert set(templates) == {
        "host_alarm_affects_instances",
        "instance_problem_not_caused_by_host",
        "network_outage_affects_instances",
    }
    assert Counter(o.status for o in log)[Status.DUPLICATE] > 10
    deduced_vids = {c[1] for o in actions for c in o.changes if c[0] == "v" and c[2].get(TYPE)}
    purged = {c[1] for o in log for c in o.changes if c[0] == "V"}
    assert deduced_vids & purged, "no deduced alarm was purged"
    assert len(p.actions) > 10
    # a host alarm's follow-ups: one record per round, many steps in it
    storms = {o.event.event_id for o in log if o.event.entity_type == "zabbix" and o.logged}
    rounds = [o for o in actions if o.event.event_id.rsplit("/", 1)[0] in storms]
    assert max(len(o.event.payload["steps"]) for o in rounds) >= 6


def test_a_two_runs_agree(reference: Reference) -> None:
    wire = decode_events(encode_events(reference.events))
    e = env()
    log = run(e, wire)
    assert fingerprint(log) == fingerprint(reference.log)
    assert graph_bytes(e.p) == graph_bytes(reference.env.p)
    assert bookkeeping(e.p) == bookkeeping(reference.env.p)


def test_b_replaying_the_log_rebuilds_graph_and_registry(reference: Reference) -> None:
    p = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    for outcome in reference.log:
        if outcome.logged:
            p.replay_wire(*record(outcome))
    live = reference.env.p
    assert p.export_state() == live.export_state()
    assert graph_bytes(p) == graph_bytes(live)
    assert registry_bytes(p) == registry_bytes(live)
    assert bookkeeping(p) == bookkeeping(live)
    # the registry's indexes too: the evaluator finds the same entries through them
    for vid, _ in live.graph.vertices():
        assert list(p.actions.involving(vid)) == list(live.actions.involving(vid))


def test_b_a_takeover_replay_indexes_the_registry_once_at_the_end(reference: Reference) -> None:
    """As a takeover replays: rounds recorded into the registry without its indexes,
    which are built once when replay ends, as a snapshot restore builds them."""
    p = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    with p.registry_indexed_after():
        for outcome in reference.log:
            if outcome.logged:
                p.replay_wire(*record(outcome))
        assert len(p.actions) > 10 and p.actions._by_vertex == p.actions._by_effect == {}
    live = reference.env.p
    assert p.export_state() == live.export_state()
    assert registry_bytes(p) == registry_bytes(live)
    restored = ActionRegistry.from_export(live.actions.export())
    assert p.actions._by_effect == restored._by_effect == live.actions._by_effect
    for vid, _ in live.graph.vertices():
        assert list(p.actions.involving(vid)) == list(restored.involving(vid))
        assert set(p.actions.involving(vid)) == set(live.actions.involving(vid))


def test_b_a_takeover_restores_and_replays_then_indexes_the_registry_once(
    reference: Reference,
) -> None:
    """As a takeover from a snapshot: the restore within the replay's
    ``registry_indexed_after`` leaves the indexes to its end too (not built twice)."""
    logged = [o for o in reference.log if o.logged]
    cut = len(logged) // 2
    first = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    for outcome in logged[:cut]:
        first.replay_wire(*record(outcome))
    state = pickle.loads(pickle.dumps(first.export_state(), protocol=5))
    p = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    with p.registry_indexed_after():
        p.import_state(state)
        assert len(p.actions) > 0 and p.actions._by_vertex == p.actions._by_effect == {}
        for outcome in logged[cut:]:
            p.replay_wire(*record(outcome))
    live = reference.env.p
    assert registry_bytes(p) == registry_bytes(live)
    assert p.actions._by_effect == live.actions._by_effect
    for vid, _ in live.graph.vertices():
        assert set(p.actions.involving(vid)) == set(live.actions.involving(vid))
    outside = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    outside.import_state(state)  # a restore on its own indexes at once
    assert outside.actions._by_effect == first.actions._by_effect != {}


def test_b_each_round_ends_as_its_steps_applied_one_by_one(reference: Reference) -> None:
    """The whole stream again, each round's steps applied as events of their own:
    the same graph and registry as the rounds, and never fewer changes."""
    p = Processor(min_time_to_delete=MIN_TIME_TO_DELETE)
    round_changes = step_changes = 0
    for outcome in reference.log:
        event = outcome.event
        if event.entity_type != "vitrage":
            assert p.process(event).changes == outcome.changes
            continue
        for n, step in enumerate(event.payload["steps"]):
            single = event.model_copy(
                update={"event_id": f"{event.event_id}#{n}", "payload": {"steps": [step]}}
            )
            step_changes += len(p.process(single).changes)
        round_changes += len(outcome.changes)
    live = reference.env.p
    assert graph_bytes(p) == graph_bytes(live)
    assert registry_bytes(p) == registry_bytes(live)
    assert round_changes <= step_changes


def test_c_snapshot_in_the_middle_then_continue(reference: Reference) -> None:
    events = reference.events
    for cut in (len(events) // 3, (2 * len(events)) // 3):
        first = env()
        head = run(first, events[:cut])
        # through the real snapshot codec (its restricted unpickler, a signed blob)
        sealed = snapshot_codec.encode({"processor": first.p.export_state()}, b"key")
        state = snapshot_codec.decode(sealed.blob, b"key", sealed.hmac)
        second = env()
        second.p.import_state(state["processor"])
        assert registry_bytes(second.p) == registry_bytes(first.p)
        tail = run(second, events[cut:])
        assert fingerprint(head + tail) == fingerprint(reference.log), f"cut at {cut}"
        assert view(second.p) == view(reference.env.p)
        assert second.p.actions.export() == reference.env.p.actions.export()
        assert registry_bytes(second.p) == registry_bytes(reference.env.p)
        assert bookkeeping(second.p) == bookkeeping(reference.env.p)


def failover(reference: Reference, cut: int, drained: int) -> Env:
    """The new active: replay ``cut`` logged records, process ``drained`` more input
    events with evaluators disabled, enable them on the touched vertices, go on."""
    logged = [(n, o) for n, o in enumerate(reference.log) if o.logged]
    e = env()
    dirty: dict[str, None] = {}
    with e.p.registry_indexed_after():  # as the takeover's replay
        for _, outcome in logged[:cut]:
            e.p.replay_wire(*record(outcome))
            # What the old active may not have evaluated (the tail of the log): the
            # service marks the vertices of replayed records dirty; evaluating an
            # already evaluated vertex changes nothing.
            dirty.update(dict.fromkeys(touched_vertices(outcome.changes)))
    # The input resumes after the last input event whose record was logged.
    inputs = {id(ev) for ev in reference.events}
    last_input = max((n for n, o in logged[:cut] if id(o.event) in inputs), default=-1)
    consumed = sum(1 for o in reference.log[: last_input + 1] if id(o.event) in inputs)
    rest = reference.events[consumed:]
    for event in rest[:drained]:
        out = e.p.process(event)
        if out.logged:
            dirty.update(dict.fromkeys(touched_vertices(out.changes)))
    trigger = evaluation_trigger("enable/epoch-2", e.p.clock or T0)
    pending = e.evaluator.evaluate_vertices(e.p.graph, e.p.actions, dirty, trigger)

    def once(event: Event) -> Outcome:
        """Process, checking that every action step really changes the registry."""
        before = len(e.p.actions)
        out = e.p.process(event)
        if event.entity_type == "vitrage":
            ops = [step["op"] for step in event.payload["steps"]]
            delta = ops.count("activate") - ops.count("deactivate")
            assert len(e.p.actions) == before + delta, f"no-op step in {event.event_id}"
        return out

    run_pending(e.p, e.evaluator, trigger, pending, process=once)
    for event in rest[drained:]:
        run_to_fixpoint(e.p, e.evaluator, event, process=once)
    return e


def test_d_failover_anywhere_gives_the_same_deductions(reference: Reference) -> None:
    log = reference.log
    logged = [o for o in log if o.logged]
    # a cut in the middle of a storm's evaluation: its trigger logged, not its round
    storm = next(
        o
        for o in logged
        if any(
            x.event.event_id.startswith(f"{o.event.event_id}/")
            and len(x.event.payload["steps"]) > 4
            for x in log
        )
    )
    mid_storm = logged.index(storm) + 1
    rng = random.Random(5)
    cuts = sorted({0, mid_storm, len(logged) // 2, len(logged), *rng.sample(range(len(logged)), 3)})
    expected = view(reference.env.p)
    for cut in cuts:
        for drained in (0, 7):
            e = failover(reference, cut, drained)
            assert view(e.p) == expected, f"cut {cut}, drained {drained}"
