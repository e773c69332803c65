"""Matching clauses in the graph: AND, OR, NOT, what does not match (deleted,
placeholders), and growth from the changed element outward."""

from __future__ import annotations

from typing import Any

import pytest

from graph_service import evaluator as evaluator_module
from graph_service.entity_graph import EntityGraph
from graph_service.matcher import Pattern, extend, holds
from graph_service.processor import Processor
from graph_service.templates import Template
from rca_common.events import Event
from tests.graph_service.core_helpers import vid
from tests.graph_service.evaluator_helpers import (
    BASIC,
    alarm,
    host,
    host_alarm,
    instance,
    template,
)

H1, H2 = vid("nova.host", "h1"), vid("nova.host", "h2")
I1, I2, I3 = (vid("nova.instance", i) for i in ("i1", "i2", "i3"))
A1, A2 = vid("zabbix", "a1"), vid("zabbix", "a2")


def graph(*events: Event) -> Processor:
    p = Processor()
    for e in events:
        p.process(e)
    return p


def patterns(t: Template, scenario: int = 0) -> list[Pattern]:
    s = t.scenarios[scenario]
    return [Pattern(t, s, i) for i in range(len(s.clauses))]


def matches(p: Processor, pattern: Pattern, seed: dict[str, str]) -> list[dict[str, str]]:
    return sorted(extend(p.graph, pattern, seed), key=lambda b: sorted(b.items()))


def cloud() -> Processor:
    return graph(
        host("h1", 0),
        host("h2", 0),
        instance("i1", "h1", 0),
        instance("i2", "h1", 0),
        instance("i3", "h2", 0),
        host_alarm("a1", "h1", 1),
    )


# ------------------------------------------------------------------------ AND
def test_and_from_every_element_gives_the_same_matches() -> None:
    p = cloud()
    [pattern] = patterns(template(BASIC))
    m1 = {"host_alarm": A1, "host": H1, "instance": I1}
    m2 = {"host_alarm": A1, "host": H1, "instance": I2}
    expected = sorted([m1, m2], key=lambda b: sorted(b.items()))
    assert matches(p, pattern, {"host_alarm": A1}) == expected
    assert matches(p, pattern, {"host": H1}) == expected
    assert matches(p, pattern, {"instance": I1}) == [m1]
    assert matches(p, pattern, {"host": H1, "instance": I2}) == [m2]
    assert matches(p, pattern, {"host": H2}) == []  # no alarm on h2
    assert matches(p, pattern, {"instance": H1}) == []  # a host is not an instance
    assert pattern.match_key(m1) == f"c0|host={H1}|host_alarm={A1}|instance={I1}"


def test_properties_must_match() -> None:
    p = cloud()
    p.process(alarm("zabbix", "a2", "Too many processes", "nova.host", "h2", 1))
    [pattern] = patterns(template(BASIC))
    assert matches(p, pattern, {"host_alarm": A2}) == []
    regex = template(BASIC.replace("name: Host is unreachable", "name.regex: Too many"))
    [pattern] = patterns(regex)
    # re.match: anchored at the start only, as in Vitrage
    assert matches(p, pattern, {"host": H2}) == [{"host_alarm": A2, "host": H2, "instance": I3}]
    assert matches(p, pattern, {"host": H1}) == []


def test_deleted_vertices_and_edges_do_not_match() -> None:
    p = cloud()
    [pattern] = patterns(template(BASIC))
    p.process(instance("i2", "h1", 2, action="delete"))  # i2 and its edges marked deleted
    assert matches(p, pattern, {"host": H1}) == [{"host_alarm": A1, "host": H1, "instance": I1}]
    binding = {"host_alarm": A1, "host": H1, "instance": I2}
    assert not holds(p.graph, pattern, binding)
    p.process(host_alarm("a1", "h1", 3, status="resolved"))
    assert matches(p, pattern, {"host": H1}) == []


def test_placeholders_do_not_match() -> None:
    # i9 refers to h9, which is only a placeholder until the host itself arrives
    p = graph(instance("i9", "h9", 0), host_alarm("a9", "h9", 0))
    [pattern] = patterns(template(BASIC))
    a9, h9, i9 = vid("zabbix", "a9"), vid("nova.host", "h9"), vid("nova.instance", "i9")
    assert matches(p, pattern, {"host_alarm": a9}) == []
    p.process(host("h9", 1))
    assert matches(p, pattern, {"host_alarm": a9}) == [
        {"host_alarm": a9, "host": h9, "instance": i9}
    ]


def test_holds_follows_the_graph() -> None:
    p = cloud()
    [pattern] = patterns(template(BASIC))
    binding = {"host_alarm": A1, "host": H1, "instance": I1}
    assert holds(p.graph, pattern, binding)
    p.process(instance("i1", "h2", 2))  # migrated away: the contains edge is gone
    assert not holds(p.graph, pattern, binding)
    assert not holds(p.graph, pattern, {"host_alarm": A1, "host": H1})  # incomplete
    assert not holds(p.graph, pattern, {**binding, "instance": "nope"})  # no such vertex


# ------------------------------------------------------------------------- OR
OR_TEMPLATE = """\
metadata: {version: 3, name: either, type: standard}
entities:
  host_alarm: {type: zabbix}
  instance_alarm: {type: prometheus}
  host: {type: nova.host}
  instance: {type: nova.instance}
scenarios:
  - condition: >
      (host_alarm [on] host and host [contains] instance)
      or instance_alarm [on] instance
    actions:
      - set_state: {target: instance, state: SUBOPTIMAL}
"""


def test_or_branches_match_separately() -> None:
    p = cloud()
    p.process(alarm("prometheus", "p1", "InstanceDown", "nova.instance", "i3", 1))
    by_host, by_instance = patterns(template(OR_TEMPLATE))
    assert by_host.entities == ("host_alarm", "host", "instance")
    assert by_instance.entities == ("instance_alarm", "instance")
    assert sorted(m["instance"] for m in matches(p, by_host, {"host": H1})) == sorted([I1, I2])
    assert matches(p, by_host, {"instance": I3}) == []
    p1 = vid("prometheus", "p1")
    assert matches(p, by_instance, {"instance": I3}) == [{"instance_alarm": p1, "instance": I3}]
    assert by_host.match_key(matches(p, by_host, {"instance": I1})[0]).startswith("c0|")
    assert by_instance.match_key({"instance_alarm": p1, "instance": I3}).startswith("c1|")


# ------------------------------------------------------------------------ NOT
NOT_TEMPLATE = """\
metadata: {version: 3, name: not_case, type: standard}
entities:
  instance_alarm: {type: prometheus}
  instance: {type: nova.instance}
  host: {type: nova.host}
  host_alarm: {category: ALARM}
scenarios:
  - condition: >
      instance_alarm [on] instance and host [contains] instance
      and not host_alarm [on] host
    actions:
      - set_state: {target: instance, state: SUBOPTIMAL}
"""


def test_not_with_an_unbound_entity_means_no_such_neighbour() -> None:
    p = graph(
        host("h1", 0),
        instance("i1", "h1", 0),
        alarm("prometheus", "p1", "InstanceDown", "nova.instance", "i1", 0),
    )
    [pattern] = patterns(template(NOT_TEMPLATE))
    p1 = vid("prometheus", "p1")
    expected = [{"instance_alarm": p1, "instance": I1, "host": H1}]
    assert matches(p, pattern, {"instance": I1}) == expected
    p.process(alarm("aodh", "x1", "anything", "nova.host", "h1", 1))  # any alarm on the host
    assert matches(p, pattern, {"instance": I1}) == []
    assert not holds(p.graph, pattern, expected[0])
    p.process(alarm("aodh", "x1", "anything", "nova.host", "h1", 2, status="resolved"))
    assert matches(p, pattern, {"instance": I1}) == expected
    assert holds(p.graph, pattern, expected[0])


def test_not_never_counts_a_vertex_of_the_match_itself() -> None:
    """``a [on] h and not b [on] h`` with a and b alike: a is bound, so only another
    alarm on h can defeat the condition (subgraph matching binds distinct vertices)."""
    text = """\
    metadata: {version: 3, name: lonely, type: standard}
    entities:
      a: {type: zabbix}
      b: {type: zabbix}
      h: {type: nova.host}
    scenarios:
      - condition: a [on] h and not b [on] h
        actions:
          - mark_down: {target: h}
    """
    p = graph(host("h1", 0), host_alarm("a1", "h1", 0))
    [pattern] = patterns(template(text))
    assert matches(p, pattern, {"h": H1}) == [{"a": A1, "h": H1}]
    p.process(host_alarm("a2", "h1", 1))
    assert matches(p, pattern, {"h": H1}) == []


def test_not_between_two_bound_entities() -> None:
    text = """\
    metadata: {version: 3, name: both, type: standard}
    entities:
      a: {type: zabbix}
      h: {type: nova.host}
      i: {type: nova.instance}
      p: {type: prometheus}
    scenarios:
      - condition: a [on] h and h [contains] i and p [on] i and not a [causes] p
        actions:
          - add_causal_relationship: {source: a, target: p}
    """
    t = template(text)
    [pattern] = patterns(t)
    p = cloud()
    p.process(alarm("prometheus", "p1", "InstanceDown", "nova.instance", "i1", 1))
    p1 = vid("prometheus", "p1")
    [m] = matches(p, pattern, {"i": I1})
    assert m == {"a": A1, "h": H1, "i": I1, "p": p1}
    p.graph.apply([["e", A1, p1, "causes", {"relationship_type": "causes"}, []]])
    assert matches(p, pattern, {"i": I1}) == []
    p.graph.apply([["e", A1, p1, "causes", {"vitrage_is_deleted": True}, []]])
    assert matches(p, pattern, {"i": I1}) == [m]


# ------------------------------------------------------------- incrementality
class CountingGraph:
    """An EntityGraph proxy that counts the vertices a search looks at."""

    def __init__(self, graph: EntityGraph) -> None:
        self.graph = graph
        self.looked_at: set[str] = set()

    def vertex(self, v: str) -> dict[str, Any] | None:
        self.looked_at.add(v)
        return self.graph.vertex(v)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph, name)

    def __contains__(self, v: object) -> bool:
        return v in self.graph


def test_matching_grows_from_the_seed_not_over_the_graph() -> None:
    events = [host(f"h{n}", 0) for n in range(50)]
    events += [instance(f"i{n}", f"h{n % 50}", 0) for n in range(500)]
    events += [host_alarm(f"a{n}", f"h{n}", 1) for n in range(0, 50, 5)]
    p = graph(*events)
    assert len(p.graph) > 550
    [pattern] = patterns(template(BASIC))
    counting = CountingGraph(p.graph)
    found = list(extend(counting, pattern, {"host_alarm": vid("zabbix", "a5")}))  # type: ignore[arg-type]
    assert len(found) == 10  # h5 has 10 instances
    # the alarm, its host, the host's neighbours (zone, 10 instances, the alarm): no more
    assert len(counting.looked_at) <= 14, len(counting.looked_at)
    counting = CountingGraph(p.graph)
    found = list(extend(counting, pattern, {"instance": vid("nova.instance", "i7")}))  # type: ignore[arg-type]
    assert found == []  # h7 has no alarm
    assert len(counting.looked_at) <= 14, len(counting.looked_at)


def test_a_failing_negation_is_seen_before_growing() -> None:
    """Seeded from a host that has an alarm, "NOT alarm [on] host" fails for every match:
    the host's instances are not walked."""
    events = [host("h1", 0)]
    events += [instance(f"i{n}", "h1", 0) for n in range(30)]
    events += [alarm("prometheus", f"p{n}", "InstanceDown", "nova.instance", f"i{n}", 0)
               for n in range(30)]  # fmt: skip
    p = graph(*events)
    [pattern] = patterns(template(NOT_TEMPLATE))
    assert len(matches(p, pattern, {"host": H1})) == 30
    p.process(alarm("aodh", "x1", "anything", "nova.host", "h1", 1))
    counting = CountingGraph(p.graph)
    assert list(extend(counting, pattern, {"host": H1})) == []  # type: ignore[arg-type]
    # the host and its predecessors (the alarm): none of its 30 instances
    assert not {v for v in counting.looked_at if v.startswith("nova")} - {H1}
    assert not any(vid("nova.instance", f"i{n}") in counting.looked_at for n in range(30))


def test_an_early_negation_spares_a_vertex_the_match_may_still_bind() -> None:
    """``a [on] h and b [on] h and not c [on] h`` with a, b and c alike: from the seed
    {h}, every alarm on h may still become a or b, so none defeats the negation early;
    a third alarm does, once the match is complete (the full check decides)."""
    text = """\
    metadata: {version: 3, name: pair, type: standard}
    entities:
      a: {type: zabbix}
      b: {type: zabbix}
      c: {type: zabbix}
      h: {type: nova.host}
    scenarios:
      - condition: a [on] h and b [on] h and not c [on] h
        actions:
          - mark_down: {target: h}
    """
    p = graph(host("h1", 0), host_alarm("a1", "h1", 0), host_alarm("a2", "h1", 0))
    [pattern] = patterns(template(text))
    assert matches(p, pattern, {"h": H1}) == [
        {"a": A1, "b": A2, "h": H1},
        {"a": A2, "b": A1, "h": H1},
    ]
    p.process(host_alarm("a3", "h1", 1))
    assert matches(p, pattern, {"h": H1}) == []


def test_a_plan_grows_each_seed_of_a_pattern_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph does not change while a plan is made: a seed reached twice (an alarm is
    a new vertex and a new edge) is grown once, and finds the same matches."""
    p = cloud()
    [pattern] = patterns(template(BASIC))
    grown: list[dict[str, str]] = []

    def counting_extend(graph: Any, pat: Pattern, seed: dict[str, str]) -> Any:
        grown.append(dict(seed))
        return extend(graph, pat, seed)

    monkeypatch.setattr(evaluator_module, "extend", counting_extend)
    plan = evaluator_module._Plan(p.graph, p.actions)
    plan.grow(pattern, {"host_alarm": A1})
    found = dict(plan.found)
    plan.grow(pattern, {"host_alarm": A1})
    plan.grow(pattern, {"host": H1})
    assert grown == [{"host_alarm": A1}, {"host": H1}]
    assert plan.found == found and len(found) == 2
