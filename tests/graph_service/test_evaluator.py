"""Actions and their undo in the processor, and scenarios on processor + evaluator."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import orjson
import pytest

from graph_service import evaluator as evaluator_module
from graph_service.actions import deduced_alarm_vid
from graph_service.entity_graph import IS_DELETED, SAMPLE_TS
from graph_service.evaluator import (
    EvaluationDiverged,
    Evaluator,
    evaluation_trigger,
    run_pending,
    run_to_fixpoint,
    touched_vertices,
)
from graph_service.processor import Processor, Status
from graph_service.transformers import (
    AGGREGATED_STATE,
    EVALUATOR_STATE,
    OPERATIONAL_SEVERITY,
    MalformedEvent,
)
from rca_common.events import Event
from tests.graph_service.core_helpers import at, end_snapshot, ev, ts, vid
from tests.graph_service.evaluator_helpers import (
    BASIC,
    Env,
    alarm,
    deduced,
    host,
    host_alarm,
    instance,
    instance_down,
    live_edges,
    shipped,
    template,
)

H1, H2 = vid("nova.host", "h1"), vid("nova.host", "h2")
I1, I2, I3 = (vid("nova.instance", i) for i in ("i1", "i2", "i3"))
A1, A2 = vid("zabbix", "a1"), vid("zabbix", "a2")
HOST_ALARM_NAME = "Instance affected by host failure"
NOT_NAME = "Instance problem not caused by host"

_ids = itertools.count()


def step_payload(
    op: str,
    action: str,
    target: str,
    match: str = "m1",
    *,
    template_key: str = "t#0",
    index: int = 0,
    bound: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One step of an evaluator action event (what the evaluator would put in a round)."""
    return {
        "op": op,
        "action": action,
        "action_key": f"{template_key}|s0|a{index}|{target}",
        "match_key": f"c0|{match}",
        "template": template_key,
        "scenario": 0,
        "clause": 0,
        "match": {"target": target, **(bound or {})},
        "target": target,
        **fields,
    }


def round_event(*payloads: dict[str, Any], t: float = 10) -> Event:
    """A raw evaluator action event: one round carrying these steps in order."""
    return Event(
        event_id=f"act-{next(_ids)}",
        source="vitrage",
        entity_type="vitrage",
        entity_id="evaluator",
        action="update",
        sample_timestamp=at(t),
        payload={"steps": list(payloads)},
    )


def step(op: str, action: str, target: str, match: str = "m1", **kwargs: Any) -> Event:
    """A round of one step."""
    return round_event(step_payload(op, action, target, match, **kwargs))


def steps(event: Event) -> list[dict[str, Any]]:
    return event.payload["steps"]  # type: ignore[no-any-return]


def base() -> Processor:
    p = Processor()
    for e in (
        host("h1", 0),
        instance("i1", "h1", 0),
        instance("i2", "h1", 0, state="SHUTOFF"),
        host_alarm("a1", "h1", 1),
        host_alarm("a2", "h1", 1),
    ):
        p.process(e)
    return p


def applied(p: Processor, event: Event) -> list[list[Any]]:
    out = p.process(event)
    assert out.status is Status.APPLIED
    return out.changes


# ------------------------------------------------------------ raise_alarm
def raise_on_i1(op: str, match: str, causing: str = A1, severity: str = "critical") -> Event:
    return step(
        op,
        "raise_alarm",
        I1,
        match,
        alarm_name="deduced",
        severity=severity,
        causing=causing,
        bound={"alarm": causing},
    )


def test_raise_alarm_creates_then_counts_then_deletes() -> None:
    p = base()
    d = deduced_alarm_vid(I1, "deduced")
    changes = applied(p, raise_on_i1("activate", "m1"))
    assert [c[0] for c in changes] == ["v", "e", "e"]
    attrs = p.graph.vertex(d)
    assert attrs is not None
    assert attrs["name"] == "deduced" and attrs["severity"] == "critical"
    assert attrs["vitrage_type"] == "vitrage" and attrs["vitrage_category"] == "ALARM"
    assert attrs[OPERATIONAL_SEVERITY] == "CRITICAL"
    assert attrs["vitrage_resource_id"] == I1 and attrs["vitrage_resource_type"] == "nova.instance"
    assert attrs[SAMPLE_TS] == ts(10) and attrs[IS_DELETED] is False
    assert (d, I1) in live_edges(p, "on")
    assert (A1, d) in live_edges(p, "causes")

    # A second match of the same action: only counted, plus its own causes edge.
    changes = applied(p, raise_on_i1("activate", "m2", causing=A2))
    assert changes == [
        ["e", A2, d, "causes", {"relationship_type": "causes", IS_DELETED: False}, []]
    ]
    # The first match goes: the alarm stays, the first cause goes.
    changes = applied(p, raise_on_i1("deactivate", "m1"))
    assert changes == [["e", A1, d, "causes", {IS_DELETED: True}, []]]
    assert (I1, "deduced") in deduced(p)
    # The last match goes: the alarm and its edges are marked deleted.
    applied(p, raise_on_i1("deactivate", "m2", causing=A2))
    assert deduced(p) == {}
    assert p.graph.vertex(d)[IS_DELETED] is True  # type: ignore[index]
    assert live_edges(p, "on") & {(d, I1)} == set() and live_edges(p, "causes") == set()
    # ... and comes back on a new activation.
    applied(p, raise_on_i1("activate", "m3"))
    assert (I1, "deduced") in deduced(p) and (d, I1) in live_edges(p, "on")
    assert len(p.actions) == 1


def test_repeats_and_undos_of_inactive_pairs_are_no_ops() -> None:
    p = base()
    assert applied(p, raise_on_i1("deactivate", "m1")) == []
    applied(p, raise_on_i1("activate", "m1"))
    assert applied(p, raise_on_i1("activate", "m1")) == []
    applied(p, raise_on_i1("deactivate", "m1"))
    assert applied(p, raise_on_i1("deactivate", "m1")) == []
    assert len(p.actions) == 0


def test_the_highest_severity_wins_and_falls_back() -> None:
    p = base()
    d = deduced_alarm_vid(I1, "deduced")
    applied(p, raise_on_i1("activate", "m1", severity="warning"))
    applied(p, raise_on_i1("activate", "m2", severity="critical"))
    assert p.graph.vertex(d)["severity"] == "critical"  # type: ignore[index]
    applied(p, raise_on_i1("deactivate", "m2"))
    attrs = p.graph.vertex(d)
    assert attrs["severity"] == "warning" and attrs[OPERATIONAL_SEVERITY] == "WARNING"  # type: ignore[index]


# -------------------------------------------------------------- set_state
def set_state(op: str, target: str, match: str, state: str, template_key: str = "t#0") -> Event:
    return step(op, "set_state", target, match, template_key=template_key, state=state)


def test_set_state_priority_and_fallback_on_undo() -> None:
    p = base()
    assert p.graph.vertex(I2)[AGGREGATED_STATE] == "SUBOPTIMAL"  # type: ignore[index]  SHUTOFF
    assert p.graph.vertex(I1)[AGGREGATED_STATE] == "OK"  # type: ignore[index]
    applied(p, set_state("activate", I1, "m1", "SUBOPTIMAL"))
    i1 = p.graph.vertex(I1)
    assert i1[EVALUATOR_STATE] == "SUBOPTIMAL" and i1[AGGREGATED_STATE] == "SUBOPTIMAL"  # type: ignore[index]
    applied(p, set_state("activate", I1, "m2", "ERROR", template_key="u#0"))
    assert i1[EVALUATOR_STATE] == "ERROR" and i1[AGGREGATED_STATE] == "ERROR"  # type: ignore[index]
    assert applied(p, set_state("activate", I1, "m3", "SUBOPTIMAL")) == []  # lower: no change
    applied(p, set_state("deactivate", I1, "m2", "ERROR", template_key="u#0"))
    assert i1[EVALUATOR_STATE] == "SUBOPTIMAL"  # type: ignore[index]
    # The datasource's own update keeps the evaluator's state and aggregates with it.
    p.process(instance("i1", "h1", 20, state="ERROR"))
    i1 = p.graph.vertex(I1)
    assert i1[EVALUATOR_STATE] == "SUBOPTIMAL" and i1[AGGREGATED_STATE] == "ERROR"  # type: ignore[index]
    p.process(instance("i1", "h1", 21, state="ACTIVE"))
    assert i1[AGGREGATED_STATE] == "SUBOPTIMAL"  # type: ignore[index]
    applied(p, set_state("deactivate", I1, "m1", "SUBOPTIMAL"))
    applied(p, set_state("deactivate", I1, "m3", "SUBOPTIMAL"))
    assert EVALUATOR_STATE not in i1 and i1[AGGREGATED_STATE] == "OK"  # type: ignore[operator,index]


def test_set_state_below_the_datasource_state_keeps_the_datasource_state() -> None:
    p = base()
    applied(p, set_state("activate", I2, "m1", "TRANSIENT"))  # SHUTOFF is SUBOPTIMAL (30 > 20)
    i2 = p.graph.vertex(I2)
    assert i2[EVALUATOR_STATE] == "TRANSIENT" and i2[AGGREGATED_STATE] == "SUBOPTIMAL"  # type: ignore[index]


# ------------------------------------------------- mark_down, causal relationship
def test_mark_down_is_counted() -> None:
    p = base()
    applied(p, step("activate", "mark_down", H1, "m1"))
    applied(p, step("activate", "mark_down", H1, "m2"))
    assert p.graph.vertex(H1)["is_marked_down"] is True  # type: ignore[index]
    assert applied(p, step("deactivate", "mark_down", H1, "m1")) == []
    assert applied(p, step("deactivate", "mark_down", H1, "m2")) == [
        ["v", H1, {}, ["is_marked_down"]]
    ]
    assert "is_marked_down" not in p.graph.vertex(H1)  # type: ignore[operator]
    # A datasource update does not remove it (the evaluator owns it).
    applied(p, step("activate", "mark_down", H1, "m3"))
    p.process(host("h1", 30, rack="r2"))
    assert p.graph.vertex(H1)["is_marked_down"] is True  # type: ignore[index]


def test_add_causal_relationship_is_counted() -> None:
    p = base()

    def causal(op: str, match: str) -> Event:
        return step(op, "add_causal_relationship", A2, match, source=A1, bound={"s": A1})

    applied(p, causal("activate", "m1"))
    applied(p, causal("activate", "m2"))
    assert (A1, A2) in live_edges(p, "causes")
    assert applied(p, causal("deactivate", "m1")) == []
    assert applied(p, causal("deactivate", "m2")) == [
        ["e", A1, A2, "causes", {IS_DELETED: True}, []]
    ]
    applied(p, causal("activate", "m3"))
    assert (A1, A2) in live_edges(p, "causes")


# ------------------------------------------------------------ rounds
def raise_step(op: str, target: str, match: str, causing: str, severity: str) -> dict[str, Any]:
    return step_payload(
        op,
        "raise_alarm",
        target,
        match,
        alarm_name="deduced",
        severity=severity,
        causing=causing,
        bound={"alarm": causing},
    )


def state_step(op: str, target: str, match: str, state: str) -> dict[str, Any]:
    return step_payload(op, "set_state", target, match, index=1, state=state)


def down_step(op: str, match: str) -> dict[str, Any]:
    return step_payload(op, "mark_down", H1, match, index=2)


def causal_step(op: str, match: str) -> dict[str, Any]:
    return step_payload(
        op, "add_causal_relationship", A2, match, index=3, source=A1, bound={"s": A1}
    )


# Rounds as the evaluator makes them (activations, then deactivations of pairs active
# before the round): every effect kind, overlaps, counts moving between matches.
ROUNDS = [
    [
        raise_step("activate", I1, "m1", A1, "critical"),
        raise_step("activate", I2, "m1", A1, "warning"),
        state_step("activate", I1, "m1", "SUBOPTIMAL"),
        down_step("activate", "m1"),
    ],
    [
        raise_step("activate", I1, "m2", A2, "warning"),
        raise_step("activate", I3, "m1", A2, "critical"),
        state_step("activate", I2, "m1", "ERROR"),
        state_step("activate", I3, "m1", "SUBOPTIMAL"),
        state_step("activate", I3, "m2", "ERROR"),  # one by one: I3 written twice
        causal_step("activate", "m1"),
        down_step("activate", "m2"),
        raise_step("deactivate", I1, "m1", A1, "critical"),
        raise_step("deactivate", I2, "m1", A1, "warning"),
        state_step("deactivate", I1, "m1", "SUBOPTIMAL"),
        down_step("deactivate", "m1"),
    ],
]


def with_i3() -> Processor:
    p = base()
    p.process(instance("i3", "h1", 0))
    return p


def without_ids(p: Processor) -> dict[str, Any]:
    """The processor's state but the ids of the events it applied."""
    return {k: v for k, v in p.export_state().items() if k != "recent"}


def test_a_round_ends_as_its_steps_applied_one_by_one() -> None:
    whole, one_by_one = with_i3(), with_i3()
    for round_steps in ROUNDS:
        out = whole.process(round_event(*round_steps))
        step_changes = [one_by_one.process(round_event(s)).changes for s in round_steps]
        assert without_ids(whole) == without_ids(one_by_one)
        # ... with no more changes: each touched effect is written once
        assert 0 < len(out.changes) <= sum(map(len, step_changes))
    assert len(out.changes) < sum(map(len, step_changes))  # I3's state written once
    p = whole
    d1, d2, d3 = (deduced_alarm_vid(i, "deduced") for i in (I1, I2, I3))
    assert {k: a["severity"] for k, a in deduced(p).items()} == {
        (I1, "deduced"): "warning",
        (I3, "deduced"): "critical",
    }
    assert p.graph.vertex(d2)[IS_DELETED] is True  # type: ignore[index]
    assert live_edges(p, "causes") == {(A2, d1), (A2, d3), (A1, A2)}
    assert EVALUATOR_STATE not in p.graph.vertex(I1)  # type: ignore[operator]
    assert p.graph.vertex(I2)[AGGREGATED_STATE] == "ERROR"  # type: ignore[index]
    assert p.graph.vertex(I3)[EVALUATOR_STATE] == "ERROR"  # type: ignore[index]
    assert p.graph.vertex(H1)["is_marked_down"] is True  # type: ignore[index]
    assert len(p.actions) == 7


def test_replaying_multi_step_records_rebuilds_the_registry_identically() -> None:
    live = with_i3()
    start = copy.deepcopy(live.export_state())
    records = [(e, live.process(e).changes) for e in (round_event(*r) for r in ROUNDS)]
    for wire in (False, True):
        replayed = Processor()
        replayed.import_state(copy.deepcopy(start))
        for event, changes in records:
            if wire:  # as the persistor stores it: JSON
                data = orjson.loads(orjson.dumps(event.to_wire()))
                replayed.replay_wire(data, orjson.loads(orjson.dumps(changes)))
            else:
                replayed.replay(event, changes)
        assert replayed.export_state() == live.export_state()
        assert list(replayed.actions.export()) == list(live.actions.export())  # same order
        for v in (I1, I2, I3, H1, A1, A2):
            assert list(replayed.actions.involving(v)) == list(live.actions.involving(v))


# ------------------------------------------------------------ malformed
def frozen_state(p: Processor) -> dict[str, Any]:
    """Everything the processor holds, copied: to show that nothing changed."""
    return copy.deepcopy(p.export_state())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"op": "toggle"}, ".op must be"),
        ({"op": None}, ".op must be"),
        ({"action": "reboot"}, ": unknown action 'reboot'"),
        ({"action_key": ""}, ".action_key"),
        ({"severity": None}, ".severity"),
        ({"scenario": "0"}, ".scenario"),
        ({"match": {}}, ".match"),
        ({"causing": "elsewhere"}, ".causing is not a vertex of the match"),
        ({"target": "elsewhere"}, ".target is not a vertex of the match"),
    ],
)
def test_a_bad_step_rejects_the_whole_round(change: dict[str, Any], reason: str) -> None:
    """The good first step is not applied either: every step is validated first."""
    p = base()
    good = raise_on_i1("activate", "m1")
    bad_step = {**steps(raise_on_i1("activate", "m2", causing=A2))[0], **change}
    bad = round_event(*steps(good), bad_step)
    before = frozen_state(p)
    with pytest.raises(MalformedEvent, match=re.escape(f"{bad.event_id}: steps[1]{reason}")):
        p.process(bad)
    assert frozen_state(p) == before
    assert p.process(good).changes  # the good step alone would have changed the graph


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"steps": []},
        {"steps": "raise"},
        {"steps": None},
        steps(raise_on_i1("activate", "m1"))[0],  # a bare step: the per-step format
        {"steps": steps(raise_on_i1("activate", "m1")), "op": "activate"},
    ],
)
def test_a_round_must_be_a_non_empty_list_of_steps(payload: dict[str, Any]) -> None:
    p = base()
    bad = raise_on_i1("activate", "m1").model_copy(update={"payload": payload})
    before = frozen_state(p)
    with pytest.raises(MalformedEvent, match="payload must be"):
        p.process(bad)
    assert frozen_state(p) == before


def test_a_step_must_be_an_object() -> None:
    p = base()
    bad = round_event(*steps(raise_on_i1("activate", "m1")), "raise")  # type: ignore[arg-type]
    before = frozen_state(p)
    with pytest.raises(MalformedEvent, match=re.escape("steps[1] must be an object")):
        p.process(bad)
    assert frozen_state(p) == before


def test_vitrage_events_are_updates_only_and_have_no_snapshot_round() -> None:
    p = base()
    snap = raise_on_i1("activate", "m1").model_copy(update={"action": "snapshot"})
    with pytest.raises(MalformedEvent, match="action must be update"):
        p.process(snap)
    with pytest.raises(MalformedEvent, match="action must be update"):
        p.process(end_snapshot("vitrage", 5))
    # A snapshot round of source "vitrage" would delete the deduced alarms behind the
    # registry's back.
    marker = end_snapshot("vitrage", 5).model_copy(update={"entity_type": "nova.host"})
    with pytest.raises(MalformedEvent, match="no snapshot rounds"):
        p.process(marker)


# ======================================================== scenarios (shipped)
def cloud() -> Env:
    env = Env(shipped())
    for e in (
        host("h1", 0),
        host("h2", 0),
        instance("i1", "h1", 0),
        instance("i2", "h1", 0),
        instance("i3", "h2", 0),
    ):
        assert env.actions(e) == []
    return env


def test_host_alarm_raises_deduced_alarms_on_all_its_instances() -> None:
    env = cloud()
    kinds = sorted(a["action"] for a in env.actions(host_alarm("a1", "h1", 1)))
    assert kinds == ["mark_down", "raise_alarm", "raise_alarm", "set_state", "set_state"]
    p = env.p
    assert set(deduced(p)) == {(I1, HOST_ALARM_NAME), (I2, HOST_ALARM_NAME)}
    for i in (I1, I2):
        d = deduced_alarm_vid(i, HOST_ALARM_NAME)
        assert (A1, d) in live_edges(p, "causes") and (d, i) in live_edges(p, "on")
        assert env.vertex(i)[AGGREGATED_STATE] == "SUBOPTIMAL"
    assert env.vertex(I3)[AGGREGATED_STATE] == "OK"
    assert env.vertex(H1)["is_marked_down"] is True
    # An InstanceDown on an affected instance is linked as an effect of the host alarm.
    [causal] = env.actions(instance_down("p1", "i1", 2))
    assert causal["action"] == "add_causal_relationship"
    assert (A1, vid("prometheus", "p1")) in live_edges(p, "causes")
    # A new instance on the host is affected at once.
    env.actions(instance("i4", "h1", 3))
    assert (vid("nova.instance", "i4"), HOST_ALARM_NAME) in deduced(p)


def test_resolving_the_host_alarm_removes_everything_it_caused() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    env.run(instance_down("p1", "i1", 2))
    env.run(host_alarm("a1", "h1", 3, status="resolved"))
    p = env.p
    # Only the NOT case remains: i1 is down and its host has no alarm any more.
    assert set(deduced(p)) == {(I1, NOT_NAME)}
    assert live_edges(p, "causes") == {(vid("prometheus", "p1"), deduced_alarm_vid(I1, NOT_NAME))}
    for i in (I1, I2):
        assert EVALUATOR_STATE not in env.vertex(i) and env.vertex(i)[AGGREGATED_STATE] == "OK"
    assert "is_marked_down" not in env.vertex(H1)
    assert len(p.actions) == 1


def test_migrating_an_instance_away_removes_its_deduced_alarm() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    payloads = env.actions(instance("i1", "h2", 2))
    assert sorted((a["op"], a["action"]) for a in payloads) == [
        ("deactivate", "raise_alarm"),
        ("deactivate", "set_state"),
    ]
    assert set(deduced(env.p)) == {(I2, HOST_ALARM_NAME)}
    assert env.vertex(I1)[AGGREGATED_STATE] == "OK"
    # ... and migrating it back raises it again (the same vertex, undeleted).
    env.run(instance("i1", "h1", 3))
    assert (I1, HOST_ALARM_NAME) in deduced(env.p)


def test_deleting_an_instance_removes_its_deduced_alarm() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    env.run(instance("i2", "h1", 2, action="delete"))
    assert set(deduced(env.p)) == {(I1, HOST_ALARM_NAME)}


def test_the_not_case() -> None:
    env = cloud()
    [raised] = env.actions(instance_down("p3", "i3", 1))
    assert (raised["op"], raised["alarm_name"]) == ("activate", NOT_NAME)
    assert set(deduced(env.p)) == {(I3, NOT_NAME)}
    # Any alarm on h2 means the host may be the cause: the deduction is withdrawn.
    env.run(alarm("prometheus", "f2", "NodeFilesystemAlmostFull", "nova.host", "h2", 2))
    assert deduced(env.p) == {}
    # The alarm moves to h1 (only its edges change): h2 is clear again.
    env.run(alarm("prometheus", "f2", "NodeFilesystemAlmostFull", "nova.host", "h1", 3))
    assert set(deduced(env.p)) == {(I3, NOT_NAME)}
    env.run(alarm("prometheus", "f2", "NodeFilesystemAlmostFull", "nova.host", "h2", 3.5))
    assert deduced(env.p) == {}
    env.run(
        alarm("prometheus", "f2", "NodeFilesystemAlmostFull", "nova.host", "h2", 3.7, "resolved")
    )
    assert set(deduced(env.p)) == {(I3, NOT_NAME)}
    # The instance moves to h1, which has an alarm: withdrawn again.
    env.run(host_alarm("a1", "h1", 4))
    env.run(instance("i3", "h1", 5))
    assert (I3, NOT_NAME) not in deduced(env.p)
    assert (I3, HOST_ALARM_NAME) in deduced(env.p)


def test_not_follows_a_property_change_of_the_negated_neighbour() -> None:
    """Only the alarm's name changes (no edge does): it stops, then starts again, being
    the "host alarm" whose absence the condition requires."""
    text = """\
    metadata: {version: 3, name: named_not, type: standard}
    entities:
      instance_alarm: {type: prometheus}
      instance: {type: nova.instance}
      host: {type: nova.host}
      host_alarm: {type: zabbix, name: Host is unreachable}
    scenarios:
      - condition: >
          instance_alarm [on] instance and host [contains] instance
          and not host_alarm [on] host
        actions:
          - mark_down: {target: instance}
    """
    env = Env([template(text)])
    for e in (host("h1", 0), instance("i1", "h1", 0), host_alarm("a1", "h1", 0)):
        env.run(e)
    env.run(instance_down("p1", "i1", 1))
    assert "is_marked_down" not in env.vertex(I1)
    renamed = alarm("zabbix", "a1", "Too many processes", "nova.host", "h1", 2)
    out = env.run(renamed)[0]
    assert {c[0] for c in out.changes} == {"v"}  # no edge changed
    assert env.vertex(I1)["is_marked_down"] is True
    env.run(host_alarm("a1", "h1", 3))
    assert "is_marked_down" not in env.vertex(I1)


def test_two_host_alarms_overlap_and_are_counted() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    env.run(alarm("zabbix", "a2", "Host is unreachable", "nova.host", "h1", 2))
    p = env.p
    d1 = deduced_alarm_vid(I1, HOST_ALARM_NAME)
    assert {(A1, d1), (A2, d1)} <= live_edges(p, "causes")
    env.run(host_alarm("a1", "h1", 3, status="resolved"))
    assert set(deduced(p)) == {(I1, HOST_ALARM_NAME), (I2, HOST_ALARM_NAME)}
    assert (A2, d1) in live_edges(p, "causes") and (A1, d1) not in live_edges(p, "causes")
    assert env.vertex(I1)[EVALUATOR_STATE] == "SUBOPTIMAL"
    env.run(alarm("zabbix", "a2", "Host is unreachable", "nova.host", "h1", 4, "resolved"))
    assert deduced(p) == {} and len(p.actions) == 0


def test_overlapping_templates_share_the_deduced_alarm_and_the_state() -> None:
    other = template(
        BASIC.replace("name: basic", "name: also")
        .replace("alarm_name: Instance affected", f"alarm_name: {HOST_ALARM_NAME}")
        .replace("severity: critical", "severity: warning")
        + "      - set_state: {target: instance, state: ERROR}\n"
    )
    env = Env([*shipped(), other])
    for e in (host("h1", 0), instance("i1", "h1", 0)):
        env.run(e)
    env.run(host_alarm("a1", "h1", 1))
    p = env.p
    [(key, attrs)] = deduced(p).items()
    assert key == (I1, HOST_ALARM_NAME) and attrs["severity"] == "critical"  # highest wins
    assert env.vertex(I1)[EVALUATOR_STATE] == "ERROR"  # ERROR outranks SUBOPTIMAL
    assert len(p.actions) == 5  # 2 templates x (raise, set_state) + mark_down
    env.run(host_alarm("a1", "h1", 2, status="resolved"))
    assert deduced(p) == {} and EVALUATOR_STATE not in env.vertex(I1)


def test_network_outage_counts_two_ports_on_one_network() -> None:
    env = cloud()
    for e in (
        ev("neutron.network", "n1", 1, state="ACTIVE"),
        ev("neutron.port", "p1", 1, network_id="n1", device_id="i1", state="ACTIVE"),
        ev("neutron.port", "p2", 1, network_id="n1", device_id="i1", state="ACTIVE"),
        ev("neutron.port", "p3", 1, network_id="n1", device_id="i3", state="ACTIVE"),
    ):
        env.run(e)
    outage = alarm("aodh", "o1", "Network outage", "neutron.network", "n1", 2)
    raised = env.actions(outage)
    assert sorted(a["target"] for a in raised) == sorted([I1, I1, I3])
    name = "Instance network unreachable"
    assert set(deduced(env.p)) == {(I1, name), (I3, name)}
    env.run(ev("neutron.port", "p1", 3, network_id="n1", state="DOWN"))  # p1 detached
    assert (I1, name) in deduced(env.p)  # still reached through p2
    env.run(ev("neutron.port", "p2", 4, action="delete"))
    assert set(deduced(env.p)) == {(I3, name)}


# ========================================================== the evaluator itself
def test_a_round_is_one_event_carrying_its_steps_in_order() -> None:
    env = cloud()
    trigger = host_alarm("a1", "h1", 1)
    outcomes = env.run(trigger)
    [(trigger_out, _), (round_out, _)] = [(o, o.status) for o in outcomes]
    event = round_out.event
    assert trigger_out.event is trigger
    assert event.event_id == f"{trigger.event_id}/v0"
    assert (event.entity_type, event.entity_id, event.action) == ("vitrage", "evaluator", "update")
    assert event.sample_timestamp == trigger.sample_timestamp
    assert event.payload.keys() == {"steps"}
    keys = [(s["action_key"], s["match_key"]) for s in steps(event)]
    assert len(keys) == 5 and keys == sorted(keys)  # all activations: sorted
    assert len(env.p.actions) == 5
    # the round's changes: every effect written once (two deduced alarms with their
    # "on" and "causes" edges, two states, one mark_down)
    assert sorted(c[0] for c in round_out.changes) == ["e"] * 4 + ["v"] * 5


def test_a_rounds_deactivations_follow_its_activations() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    env.run(instance_down("p1", "i3", 1))  # the NOT case on i3
    [_, round_out] = env.run(instance("i3", "h1", 2))  # moves onto the alarmed host
    ops = [(s["op"], s["action"]) for s in steps(round_out.event)]
    assert ops == [
        ("activate", "raise_alarm"),
        ("activate", "set_state"),
        ("activate", "add_causal_relationship"),
        ("deactivate", "raise_alarm"),  # the NOT case's
    ]
    assert set(deduced(env.p)) == {
        (I1, HOST_ALARM_NAME),
        (I2, HOST_ALARM_NAME),
        (I3, HOST_ALARM_NAME),
    }
    assert (A1, vid("prometheus", "p1")) in live_edges(env.p, "causes")


def test_irrelevant_changes_are_not_evaluated() -> None:
    env = cloud()
    env.run(host_alarm("a1", "h1", 1))
    # A state change touches no template element; even a broken registry is not looked at.
    out = env.p.process(instance("i1", "h1", 2, state="PAUSED"))
    assert {k for c in out.changes for k in c[2]} & {"name", "vitrage_type"} == set()
    assert env.evaluator.evaluate(env.p.graph, env.p.actions, out.event, out.changes) is None


def test_evaluation_is_local_and_evaluate_vertices_catches_up() -> None:
    """Changes made while evaluators are off are not found by later, unrelated
    evaluations (no full-graph pass), only by evaluating the vertices they touched."""
    env = cloud()
    p = env.p
    off = p.process(host_alarm("a1", "h1", 1))  # evaluators disabled: processed only
    dirty = touched_vertices(off.changes)
    assert set(dirty) == {A1, H1}
    env.run(instance("i3", "h2", 2, state="PAUSED"))  # unrelated, evaluated
    assert deduced(p) == {}
    trigger = evaluation_trigger("enable/1", p.clock)  # type: ignore[arg-type]
    pending = env.evaluator.evaluate_vertices(p.graph, p.actions, dirty, trigger)
    assert pending is not None and pending.event_id == "enable/1/v0"
    assert len(run_pending(p, env.evaluator, trigger, pending)) == 1
    assert set(deduced(p)) == {(I1, HOST_ALARM_NAME), (I2, HOST_ALARM_NAME)}


def test_evaluate_all_equals_incremental_evaluation() -> None:
    events = [host("h1", 0), host("h2", 0)]
    events += [instance(f"i{n}", f"h{n % 2 + 1}", 0) for n in range(6)]
    events += [
        host_alarm("a1", "h1", 1),
        instance_down("p1", "i0", 1),
        instance_down("p2", "i1", 1),
    ]
    incremental = Env(shipped())
    for e in events:
        incremental.run(e)
    fresh = Env(shipped())
    for e in events:
        fresh.p.process(e)
    trigger = evaluation_trigger("fresh-start", fresh.p.clock)  # type: ignore[arg-type]
    run_pending(
        fresh.p,
        fresh.evaluator,
        trigger,
        fresh.evaluator.evaluate_all(fresh.p.graph, fresh.p.actions, trigger),
    )
    assert set(fresh.p.actions.pairs()) == set(incremental.p.actions.pairs())
    assert len(fresh.p.actions) == 9  # 3 x (raise + set_state) + mark_down + causal + NOT
    assert {k: a["severity"] for k, a in deduced(fresh.p).items()} == {
        k: a["severity"] for k, a in deduced(incremental.p).items()
    }
    assert live_edges(fresh.p, "causes") == live_edges(incremental.p, "causes")


def test_bookkeeping_of_a_changed_template_is_retired() -> None:
    env = Env([template(BASIC)])
    for e in (host("h1", 0), instance("i1", "h1", 0), host_alarm("a1", "h1", 1)):
        env.run(e)
    assert len(env.p.actions) == 1
    changed = Evaluator([template(BASIC.replace("severity: critical", "severity: warning"))])
    trigger = evaluation_trigger("enable/2", env.p.clock)  # type: ignore[arg-type]
    pending = changed.evaluate_vertices(env.p.graph, env.p.actions, [], trigger)
    assert pending is not None and [s["op"] for s in steps(pending)] == ["deactivate"]
    run_pending(env.p, changed, trigger, pending)
    assert deduced(env.p) == {} and len(env.p.actions) == 0
    # the changed template raises its own version on the next evaluation
    pending = changed.evaluate_vertices(env.p.graph, env.p.actions, [H1], trigger, number=1)
    assert pending is not None and pending.event_id == "enable/2/v1"
    run_pending(env.p, changed, trigger, pending, first=1)
    assert [a["severity"] for a in deduced(env.p).values()] == ["warning"]


def test_templates_that_undo_each_other_do_not_loop_forever() -> None:
    flip = """\
    metadata: {version: 3, name: flip, type: standard}
    entities:
      trigger: {type: prometheus}
      mine: {type: vitrage, name: flip}
      instance: {type: nova.instance}
    scenarios:
      - condition: trigger [on] instance and not mine [on] instance
        actions:
          - raise_alarm: {target: instance, alarm_name: flip, severity: warning}
    """
    env = Env([template(flip)])
    env.run(instance("i1", "h1", 0))
    trigger = instance_down("p1", "i1", 1)
    processed: list[str] = []

    def process(event: Event) -> Any:
        processed.append(event.event_id)
        return env.p.process(event)

    diverged = r"not converge in 3 rounds \(1 action steps.*flip"
    with pytest.raises(EvaluationDiverged, match=diverged):
        run_to_fixpoint(env.p, env.evaluator, trigger, process=process, max_rounds=3)
    assert processed == [trigger.event_id, *(f"{trigger.event_id}/v{n}" for n in range(3))]


def test_duplicates_are_not_evaluated_again() -> None:
    env = cloud()
    trigger = host_alarm("a1", "h1", 1)
    assert len(env.run(trigger)) == 2  # the trigger and its one round
    again = env.run(trigger)
    assert [o.status for o in again] == [Status.DUPLICATE]


def test_a_reused_trigger_id_is_an_error_not_a_silent_skip() -> None:
    env = cloud()
    p = env.p
    p.process(host_alarm("a1", "h1", 1))  # processed with evaluators off
    trigger = evaluation_trigger("enable/3", p.clock)  # type: ignore[arg-type]
    pending = env.evaluator.evaluate_vertices(p.graph, p.actions, [H1], trigger)
    [done] = run_pending(p, env.evaluator, trigger, pending)
    assert len(steps(done.event)) == 5
    p.process(host_alarm("a9", "h2", 2))
    pending = env.evaluator.evaluate_vertices(p.graph, p.actions, [H2], trigger)  # same id
    before = len(p.actions)
    with pytest.raises(RuntimeError, match="enable/3/v0 was already used"):
        run_pending(p, env.evaluator, trigger, pending)
    assert len(p.actions) == before  # the round was skipped as a duplicate, not applied


def test_a_large_round_is_logged_in_bounded_parts_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = cloud()
    whole_outcomes = whole.run(host_alarm("a1", "h1", 1))
    assert [len(steps(o.event)) for o in whole_outcomes[1:]] == [5]
    monkeypatch.setattr(evaluator_module, "MAX_STEPS_PER_EVENT", 2)
    parts = cloud()
    trigger = host_alarm("a1", "h1", 1)
    outcomes = parts.run(trigger)[1:]
    assert [o.event.event_id for o in outcomes] == [f"{trigger.event_id}/v0.{n}" for n in (1, 2, 3)]
    assert [len(steps(o.event)) for o in outcomes] == [2, 2, 1]
    assert [s for o in outcomes for s in steps(o.event)] == steps(whole_outcomes[1].event)

    def state(env: Env) -> dict[str, Any]:  # event ids differ between the two runs
        return {k: v for k, v in env.p.export_state().items() if k != "recent"}

    assert state(parts) == state(whole)
