"""The evaluator: from the changes one event made to the action events they call for.

Plain synchronous code with no I/O and no clock. It reads the graph and the
processor's action registry and returns, per evaluation round, one ``vitrage``
event whose payload lists the round's steps (``{"steps": [...]}``, each step
activating or deactivating one action for one match); the service feeds it to
the processor like any other event, so it is sequenced, logged and replayed as
one record, and the registry the steps build is restored by replay without
running the evaluator. One record per round rather than per step keeps the log,
its persistence and a failover's replay as small as the evaluation allows.

Evaluation is incremental. Templates are indexed by the vertex types and
categories their entities can match and by the labels of their relationships;
a change list touches only the scenarios whose elements it can match, and
matches are grown from the changed vertex or edge outward
(:mod:`graph_service.matcher`). Registry entries that involve a changed element
are re-checked and deactivated when their condition no longer holds.

Output is canonical: a round's steps are its activations sorted by (action key,
match key), then its deactivations sorted the same way; the event id is
``{trigger id}/v{n}`` with ``n`` the round's number, and the time is the
trigger's. Activations come first so that a match replaced by another one of the
same action (an instance migrating between two alarmed hosts) only moves counts
instead of removing and re-raising a deduced alarm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from graph_service.actions import (
    ACTIVATE,
    ADD_CAUSAL_RELATIONSHIP,
    DEACTIVATE,
    RAISE_ALARM,
    SET_STATE,
    VITRAGE,
    ActionRegistry,
    Pair,
    Record,
)
from graph_service.conditions import Relationship
from graph_service.entity_graph import (
    CATEGORY,
    IS_DELETED,
    IS_PLACEHOLDER,
    TYPE,
    Change,
    EntityGraph,
)
from graph_service.matcher import Binding, Pattern, PatternId, extend, holds
from graph_service.processor import Outcome, Processor
from graph_service.templates import ActionSpec, EntitySpec, Template
from rca_common.events import Action, Event

MAX_ROUNDS = 64
# Steps per logged event: a round larger than this is logged as several events.
MAX_STEPS_PER_EVENT = 1000
EVALUATOR = "evaluator"  # the entity id of evaluation triggers and of action events

# The vertex properties every match reads besides the templates' own.
_STRUCTURAL_KEYS = frozenset({TYPE, CATEGORY, IS_DELETED, IS_PLACEHOLDER})


class EvaluationDiverged(RuntimeError):
    """Rounds kept producing new steps: templates that undo each other's actions."""


def touched_vertices(changes: Iterable[Sequence[Any]]) -> list[str]:
    """The vertices a change list touched (upserted, removed, or an end of a changed
    edge), in first-touch order: what to mark dirty while evaluators are disabled."""
    seen: dict[str, None] = {}
    for ch in changes:
        if ch[0] in ("v", "V"):
            seen[ch[1]] = None
        else:
            seen[ch[1]] = None
            seen[ch[2]] = None
    return list(seen)


def evaluation_trigger(event_id: str, when: datetime) -> Event:
    """A trigger for evaluations no single event caused (enabling evaluators after a
    takeover, the fresh start's full pass): it names the rounds' events and dates them.
    ``event_id`` must be unique for the run (e.g. include the leader epoch)."""
    return Event(
        event_id=event_id,
        source=VITRAGE,
        entity_type=VITRAGE,
        entity_id=EVALUATOR,
        action=Action.UPDATE,
        sample_timestamp=when,
    )


class _Plan:
    """What one evaluation found: matches that hold and registry entries to re-check.

    The graph does not change while a plan is made, so growing the same seed of the
    same pattern twice finds nothing new: a vertex and the edges around it often
    lead to the same seed (a new alarm on a host is both a vertex and an edge).
    """

    def __init__(self, graph: EntityGraph, registry: ActionRegistry) -> None:
        self.graph = graph
        self.registry = registry
        self.found: dict[tuple[PatternId, str], tuple[Pattern, Binding]] = {}
        self.recheck: dict[Pair, None] = {}
        self._grown: set[tuple[PatternId, frozenset[tuple[str, str]]]] = set()

    def grow(self, pattern: Pattern, seed: Binding) -> None:
        key = (pattern.id, frozenset(seed.items()))
        if key in self._grown:
            return
        self._grown.add(key)
        for binding in extend(self.graph, pattern, seed):
            self.found.setdefault((pattern.id, pattern.match_key(binding)), (pattern, binding))

    def check(self, pairs: Iterable[Pair], pattern: Pattern | None = None) -> None:
        """Re-check these registry entries (only those of ``pattern`` when given)."""
        if pattern is None:
            self.recheck.update(dict.fromkeys(pairs))
            return
        for pair in pairs:
            record = self.registry.record(*pair)
            if record is not None and _pattern_id(record) == pattern.id:
                self.recheck[pair] = None


def _spec_attrs(spec: EntitySpec) -> dict[str, Any]:
    """The type (or, without one, the category) an entity's vertices are indexed by."""
    return {TYPE: spec.type} if spec.type else {CATEGORY: spec.category}


def _pattern_id(record: Record) -> PatternId:
    return (record["template"], record["scenario"], record["clause"])


class Evaluator:
    """Scenario matching over the entity graph for a fixed set of templates."""

    def __init__(self, templates: Sequence[Template]) -> None:
        self.templates: dict[str, Template] = {}
        for template in templates:
            if template.key in self.templates:
                raise ValueError(f"template {template.name!r} given twice")
            self.templates[template.key] = template
        self.patterns: dict[PatternId, Pattern] = {}
        # vertex type / category -> (pattern, entity) that a vertex of it may bind
        self._by_type: dict[str, list[tuple[Pattern, str]]] = {}
        self._by_category: dict[str, list[tuple[Pattern, str]]] = {}
        # ... and for the unbound side of a negated relationship:
        # (pattern, negated relationship, free entity, bound entity)
        self._free_by_type: dict[str, list[tuple[Pattern, Relationship, str, str]]] = {}
        self._free_by_category: dict[str, list[tuple[Pattern, Relationship, str, str]]] = {}
        # edge label -> (pattern, relationship), positive and negated
        self._by_label: dict[str, list[tuple[Pattern, Relationship]]] = {}
        self._negated_by_label: dict[str, list[tuple[Pattern, Relationship]]] = {}
        keys = set(_STRUCTURAL_KEYS)
        for template in self.templates.values():
            for spec in template.entities.values():
                keys |= spec.keys
            for scenario in template.scenarios:
                for index in range(len(scenario.clauses)):
                    self._index(Pattern(template, scenario, index))
        self._keys = frozenset(keys)

    def _index(self, pattern: Pattern) -> None:
        self.patterns[pattern.id] = pattern
        entities = pattern.template.entities
        for eid in pattern.entities:
            self._file(self._by_type, self._by_category, entities[eid], (pattern, eid))
        for rel in pattern.relationships:
            self._by_label.setdefault(rel.label, []).append((pattern, rel))
        for rel in pattern.negated:
            self._negated_by_label.setdefault(rel.label, []).append((pattern, rel))
            for free, bound in ((rel.source, rel.target), (rel.target, rel.source)):
                if free not in pattern.bound:
                    item = (pattern, rel, free, bound)
                    self._file(self._free_by_type, self._free_by_category, entities[free], item)

    @staticmethod
    def _file(
        by_type: dict[str, list[Any]],
        by_category: dict[str, list[Any]],
        spec: EntitySpec,
        item: Any,
    ) -> None:
        if spec.type is not None:
            by_type.setdefault(spec.type, []).append(item)
        else:
            by_category.setdefault(spec.category, []).append(item)

    @staticmethod
    def _lookup(
        by_type: dict[str, list[Any]], by_category: dict[str, list[Any]], attrs: dict[str, Any]
    ) -> list[Any]:
        return [*by_type.get(attrs.get(TYPE), ()), *by_category.get(attrs.get(CATEGORY), ())]

    # ------------------------------------------------------------------ entry points
    def evaluate(
        self,
        graph: EntityGraph,
        registry: ActionRegistry,
        trigger: Event,
        changes: Iterable[Sequence[Any]],
        *,
        number: int = 0,
    ) -> Event | None:
        """The round called for by ``changes`` (what processing made of one or more
        events) as round ``number`` of ``trigger``; None when there is nothing to do."""
        vertices: dict[str, set[str] | None] = {}
        edges: dict[tuple[str, str, str], None] = {}
        for ch in changes:
            op = ch[0]
            if op == "v":
                keys = vertices.setdefault(ch[1], set())
                if keys is not None:
                    keys.update(ch[2])
                    keys.update(ch[3])
            elif op == "V":
                vertices[ch[1]] = None
            else:
                edges[(ch[1], ch[2], ch[3])] = None
        plan = _Plan(graph, registry)
        for vid, keys in vertices.items():
            if keys is None or not self._keys.isdisjoint(keys):
                self._around_vertex(plan, vid)
        for src, dst, label in edges:
            self._around_edge(plan, src, dst, label)
        return self._round(plan, trigger, number)

    def evaluate_vertices(
        self,
        graph: EntityGraph,
        registry: ActionRegistry,
        vids: Iterable[str],
        trigger: Event,
        *,
        number: int = 0,
    ) -> Event | None:
        """As if every property of these vertices had changed: for the vertices touched
        while evaluators were disabled (see :func:`touched_vertices`). Also retires the
        bookkeeping of templates no longer loaded."""
        plan = _Plan(graph, registry)
        for vid in dict.fromkeys(vids):
            self._around_vertex(plan, vid)
        self._retire_unknown(plan)
        return self._round(plan, trigger, number)

    def evaluate_all(
        self, graph: EntityGraph, registry: ActionRegistry, trigger: Event, *, number: int = 0
    ) -> Event | None:
        """The whole graph (the fresh start): every registry entry is re-checked and each
        clause is grown from the vertices of its most selective entity."""
        plan = _Plan(graph, registry)
        plan.check(registry.pairs())
        by_type: dict[str, list[str]] = {}
        by_category: dict[str, list[str]] = {}
        for vid, attrs in graph.vertices():
            by_type.setdefault(attrs.get(TYPE), []).append(vid)
            by_category.setdefault(attrs.get(CATEGORY), []).append(vid)
        for pattern in self.patterns.values():
            pool = {
                eid: self._lookup(by_type, by_category, _spec_attrs(pattern.template.entities[eid]))
                for eid in pattern.entities
            }
            anchor = min(pattern.entities, key=lambda e: len(pool[e]))
            for vid in pool[anchor]:
                plan.grow(pattern, {anchor: vid})
        return self._round(plan, trigger, number)

    # ------------------------------------------------------------------- seeding
    def _around_vertex(self, plan: _Plan, vid: str) -> None:
        graph = plan.graph
        plan.check(plan.registry.involving(vid))
        attrs = graph.vertex(vid)
        if attrs is None:
            return
        for pattern, eid in self._lookup(self._by_type, self._by_category, attrs):
            if pattern.specs[eid](attrs):
                plan.grow(pattern, {eid: vid})
        # The vertex may be (or have stopped being) the unbound side of a negated
        # relationship: the matches around its neighbours may change.
        for pattern, rel, free, bound in self._lookup(
            self._free_by_type, self._free_by_category, attrs
        ):
            adjacency = graph.successors(vid) if free == rel.source else graph.predecessors(vid)
            spec = pattern.specs[bound]
            for other, keyed in adjacency.items():
                if rel.label in keyed and spec(graph.vertex(other)):
                    plan.check(plan.registry.involving(other), pattern)
                    plan.grow(pattern, {bound: other})

    def _around_edge(self, plan: _Plan, src: str, dst: str, label: str) -> None:
        positive = self._by_label.get(label)
        negated = self._negated_by_label.get(label)
        if not positive and not negated:
            return
        graph = plan.graph
        edge = graph.edge(src, dst, label)
        live = edge is not None and not edge.get(IS_DELETED)
        src_attrs, dst_attrs = graph.vertex(src), graph.vertex(dst)
        if positive:
            if not live:  # matches that used the edge: those binding both of its ends
                involving_src = plan.registry.involving(src)
                involving_dst = plan.registry.involving(dst)
                small, other = (
                    (involving_src, dst)
                    if len(involving_src) <= len(involving_dst)
                    else (involving_dst, src)
                )
                for pair in small:
                    record = plan.registry.record(*pair)
                    if record is not None and other in record["match"].values():
                        plan.check((pair,))
            else:
                for pattern, rel in positive:
                    if pattern.specs[rel.source](src_attrs) and pattern.specs[rel.target](
                        dst_attrs
                    ):
                        plan.grow(pattern, {rel.source: src, rel.target: dst})
        for pattern, rel in negated or ():
            seed: Binding = {}
            for entity, vid, attrs in ((rel.source, src, src_attrs), (rel.target, dst, dst_attrs)):
                if entity in pattern.bound and pattern.specs[entity](attrs):
                    seed[entity] = vid
            for vid in seed.values():
                plan.check(plan.registry.involving(vid), pattern)
            if seed:
                plan.grow(pattern, seed)

    def _retire_unknown(self, plan: _Plan) -> None:
        for pair in plan.registry.pairs():
            record = plan.registry.record(*pair)
            if record is not None and _pattern_id(record) not in self.patterns:
                plan.recheck[pair] = None

    # ------------------------------------------------------------------- output
    def _round(self, plan: _Plan, trigger: Event, number: int) -> Event | None:
        """One event for the whole round: its steps in canonical order (see the module
        docstring), or None when the round has none."""
        registry, graph = plan.registry, plan.graph
        activations: dict[Pair, dict[str, Any]] = {}
        for pattern, binding in plan.found.values():
            mk = pattern.match_key(binding)
            for index, action in enumerate(pattern.scenario.actions):
                ak = action_key(pattern, index, action, binding)
                if (ak, mk) not in activations and not registry.is_active(ak, mk):
                    activations[(ak, mk)] = _activation(pattern, action, ak, mk, binding)
        deactivations: dict[Pair, dict[str, Any]] = {}
        for ak, mk in plan.recheck:
            record = registry.record(ak, mk)
            if record is None:
                continue
            pattern = self.patterns.get(_pattern_id(record))
            if pattern is None or not holds(graph, pattern, record["match"]):
                deactivations[(ak, mk)] = {
                    "op": DEACTIVATE,
                    "action": record["action"],
                    "action_key": ak,
                    "match_key": mk,
                    "target": record["target"],
                }
        steps = [activations[k] for k in sorted(activations)]
        steps += [deactivations[k] for k in sorted(deactivations)]
        if not steps:
            return None
        return Event(
            event_id=f"{trigger.event_id}/v{number}",
            source=VITRAGE,
            entity_type=VITRAGE,
            entity_id=EVALUATOR,
            action=Action.UPDATE,
            sample_timestamp=trigger.sample_timestamp,
            payload={"steps": steps},
        )


def action_key(pattern: Pattern, index: int, action: ActionSpec, binding: Binding) -> str:
    """Stable identity of an action instance: template, scenario, action, target (source)."""
    key = f"{pattern.template.key}|s{pattern.scenario.index}|a{index}|{binding[action.target]}"
    if action.source is not None:
        key += f"|{binding[action.source]}"
    return key


def _activation(
    pattern: Pattern, action: ActionSpec, ak: str, mk: str, binding: Binding
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "op": ACTIVATE,
        "action": action.kind,
        "action_key": ak,
        "match_key": mk,
        "template": pattern.template.key,
        "scenario": pattern.scenario.index,
        "clause": pattern.clause_index,
        "match": pattern.canonical(binding),
        "target": binding[action.target],
    }
    if action.kind == RAISE_ALARM:
        payload["alarm_name"] = action.alarm_name
        payload["severity"] = action.severity
        if action.causing_alarm is not None:
            payload["causing"] = binding[action.causing_alarm]
    elif action.kind == SET_STATE:
        payload["state"] = action.state
    elif action.kind == ADD_CAUSAL_RELATIONSHIP:
        payload["source"] = binding[action.source]  # type: ignore[index]
    return payload


# ------------------------------------------------------------------ the loop
Process = Callable[[Event], Outcome]


def run_to_fixpoint(
    processor: Processor,
    evaluator: Evaluator,
    event: Event,
    *,
    process: Process | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> list[Outcome]:
    """Process ``event``, then evaluate and process rounds until one has no steps.

    ``process`` is how an event is applied (default ``processor.process``; the service
    passes the function that also sequences and logs it). Returns every outcome, the
    trigger's first, then one per round. Raises :class:`EvaluationDiverged` after
    ``max_rounds`` rounds.
    """
    outcome = (process or processor.process)(event)
    follow = run_follow_ups(processor, evaluator, outcome, process=process, max_rounds=max_rounds)
    return [outcome, *follow]


def run_follow_ups(
    processor: Processor,
    evaluator: Evaluator,
    outcome: Outcome,
    *,
    process: Process | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> list[Outcome]:
    """The rounds an already processed (datasource) event calls for, processed to the
    fixpoint: for a caller that processed the event itself. Not for the outcomes of
    rounds, which :func:`run_pending` follows up already."""
    if not outcome.logged or not outcome.changes:
        return []
    event = outcome.event
    pending = evaluator.evaluate(processor.graph, processor.actions, event, outcome.changes)
    return run_pending(processor, evaluator, event, pending, process=process, max_rounds=max_rounds)


def run_pending(
    processor: Processor,
    evaluator: Evaluator,
    trigger: Event,
    pending: Event | None,
    *,
    process: Process | None = None,
    max_rounds: int = MAX_ROUNDS,
    first: int = 0,
) -> list[Outcome]:
    """Process a round already evaluated for ``trigger`` (round ``first``), then the
    rounds its changes call for, until one has no steps; one outcome per round.

    A round's steps were all computed from the same state, so they are applied as one
    event and its changes evaluated together: an action applied later in the round is
    always re-checked against what the earlier ones changed.
    """
    process = process or processor.process
    outcomes: list[Outcome] = []
    number = first
    while pending is not None:
        if number - first >= max_rounds:
            steps = pending.payload["steps"]
            keys = sorted({step["action_key"].split("|")[0] for step in steps})
            raise EvaluationDiverged(
                f"evaluation of {trigger.event_id} did not converge in {max_rounds} rounds "
                f"({len(steps)} action steps still pending, templates: {', '.join(keys)})"
            )
        changes: list[Change] = []
        for part in split_round(pending):
            outcome = process(part)
            if not outcome.logged:  # a skipped round would leave the registry behind
                raise RuntimeError(
                    f"action event id {part.event_id} was already used: "
                    "evaluation triggers must have unique ids"
                )
            outcomes.append(outcome)
            changes.extend(outcome.changes)
        number += 1
        pending = evaluator.evaluate(
            processor.graph, processor.actions, trigger, changes, number=number
        )
    return outcomes


def split_round(event: Event, max_steps: int | None = None) -> list[Event]:
    """A round as events of at most ``max_steps`` steps (``MAX_STEPS_PER_EVENT``), in
    order: one log record (and broker message) stays bounded even for a whole-graph
    pass. Applying the parts in order ends in the same state as the whole round, since
    what an effect writes depends only on the registry after its last step."""
    limit = max_steps or MAX_STEPS_PER_EVENT
    steps = event.payload["steps"]
    if len(steps) <= limit:
        return [event]
    return [
        event.model_copy(
            update={
                "event_id": f"{event.event_id}.{n}",
                "payload": {"steps": steps[start : start + limit]},
            }
        )
        for n, start in enumerate(range(0, len(steps), limit), 1)
    ]
