"""Where a condition clause holds in the entity graph, found from a given element outward.

A match binds each entity of a clause's positive terms to a vertex. The search
starts from a partial binding (the changed vertex or edge) and grows it along
the clause's relationships through the graph's adjacency, so its cost depends
on the neighbourhood of the change, never on the size of the graph.

Semantics, following Vitrage:

* A template entity matches a vertex that is neither deleted nor a placeholder
  (Vitrage's template loader adds ``vitrage_is_deleted: False`` and
  ``vitrage_is_placeholder: False`` to every entity) and whose properties equal
  the entity's. A ``<key>.regex`` property is matched with ``re.match``
  (anchored at the start, as in Vitrage) against a string value.
* A relationship ``x [label] y`` matches a live (not deleted) edge of that
  label from x's vertex to y's vertex.
* Distinct entities bind distinct vertices (Vitrage matches subgraphs).
* ``not x [label] y`` with x and y both bound holds when there is no live edge
  between their vertices. With one side unbound (only in the negation, say x)
  it holds when no vertex that matches x, other than the vertices of the match,
  has a live ``label`` edge to y's vertex ("the host has no alarm on it").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from graph_service.conditions import Relationship
from graph_service.entity_graph import IS_DELETED, IS_PLACEHOLDER, EntityGraph
from graph_service.templates import EntitySpec, Scenario, Template

Binding = dict[str, str]
PatternId = tuple[str, int, int]  # (template key, scenario index, clause index)

_MISSING = object()


class EntityMatcher:
    """The vertex predicate of one template entity."""

    __slots__ = ("props", "regexes")

    def __init__(self, spec: EntitySpec) -> None:
        self.props = spec.props
        self.regexes = spec.regexes

    def __call__(self, attrs: dict[str, Any] | None) -> bool:
        if attrs is None or attrs.get(IS_DELETED) or attrs.get(IS_PLACEHOLDER):
            return False
        for key, want in self.props:
            have = attrs.get(key, _MISSING)
            # 1 == True in Python; as property values they differ.
            if have is _MISSING or have != want or (type(have) is bool) != (type(want) is bool):
                return False
        for key, pattern in self.regexes:
            have = attrs.get(key)
            if not isinstance(have, str) or pattern.match(have) is None:
                return False
        return True


class Pattern:
    """One clause of one scenario, compiled for matching."""

    def __init__(self, template: Template, scenario: Scenario, clause_index: int) -> None:
        clause = scenario.clauses[clause_index]
        self.template = template
        self.scenario = scenario
        self.clause_index = clause_index
        self.id: PatternId = (template.key, scenario.index, clause_index)
        self.entities = clause.entities
        self.bound = frozenset(self.entities)
        self.relationships = clause.relationships
        self.negated = clause.negative
        names = {*self.entities, *(e for r in self.negated for e in (r.source, r.target))}
        self.specs = {e: EntityMatcher(template.entities[e]) for e in sorted(names)}
        self._order = tuple(sorted(self.entities))

    def match_key(self, binding: Binding) -> str:
        """Stable identity of a match: the clause and the vertex bound to each entity."""
        return f"c{self.clause_index}|" + "|".join(f"{e}={binding[e]}" for e in self._order)

    def canonical(self, binding: Binding) -> Binding:
        return {e: binding[e] for e in self._order}

    def __repr__(self) -> str:
        return f"Pattern({self.id})"


def live_edge(graph: EntityGraph, src: str, dst: str, label: str) -> bool:
    attrs = graph.edge(src, dst, label)
    return attrs is not None and not attrs.get(IS_DELETED)


def extend(graph: EntityGraph, pattern: Pattern, seed: Binding) -> Iterator[Binding]:
    """Every full match of ``pattern`` that contains the partial binding ``seed``."""
    if len(set(seed.values())) != len(seed):
        return
    for eid, vid in seed.items():
        if eid not in pattern.bound or not pattern.specs[eid](graph.vertex(vid)):
            return
    if pattern.negated and _negation_fails_early(graph, pattern, seed):
        return
    yield from _grow(graph, pattern, dict(seed))


def _negation_fails_early(graph: EntityGraph, pattern: Pattern, seed: Binding) -> bool:
    """Whether a negated relationship already fails for every match grown from ``seed``,
    so that none need be grown (a host with an alarm on it: its instances need not be
    walked to find that "NOT alarm [on] host" fails for each).

    Exact: a negation with both sides bound fails when its edge is live; one with a
    free side fails once a vertex matching the free side has a live edge to the bound
    one *and* cannot be one of the match's own vertices (it is not in the seed and
    matches no entity still unbound), since only the match's vertices are exempt.
    """
    unbound = [pattern.specs[e] for e in pattern.entities if e not in seed]
    return any(_negation_fails(graph, pattern, rel, seed, unbound) for rel in pattern.negated)


def _grow(graph: EntityGraph, pattern: Pattern, binding: Binding) -> Iterator[Binding]:
    if len(binding) == len(pattern.entities):
        if relationships_hold(graph, pattern, binding) and negations_hold(graph, pattern, binding):
            yield dict(binding)
        return
    rel, new, forward = _next_step(pattern, binding)
    anchor = binding[rel.source if forward else rel.target]
    adjacency = graph.successors(anchor) if forward else graph.predecessors(anchor)
    spec = pattern.specs[new]
    used = set(binding.values())
    candidates = [
        other
        for other, keyed in adjacency.items()
        if other not in used
        and (edge := keyed.get(rel.label)) is not None
        and not edge.get(IS_DELETED)
        and spec(graph.vertex(other))
    ]
    for other in candidates:
        binding[new] = other
        yield from _grow(graph, pattern, binding)
        del binding[new]


def _next_step(pattern: Pattern, binding: Binding) -> tuple[Relationship, str, bool]:
    """A relationship with exactly one bound side: (it, the entity to bind, outgoing?)."""
    for rel in pattern.relationships:
        if rel.source in binding and rel.target not in binding:
            return rel, rel.target, True
        if rel.target in binding and rel.source not in binding:
            return rel, rel.source, False
    raise AssertionError(f"{pattern}: positive terms not connected")  # validated at load


def relationships_hold(graph: EntityGraph, pattern: Pattern, binding: Binding) -> bool:
    return all(
        live_edge(graph, binding[r.source], binding[r.target], r.label)
        for r in pattern.relationships
    )


def negations_hold(graph: EntityGraph, pattern: Pattern, binding: Binding) -> bool:
    """No negated relationship is present (see the module docstring for unbound sides)."""
    for rel in pattern.negated:  # noqa: SIM110 (a loop, not all(): this runs per full match)
        if _negation_fails(graph, pattern, rel, binding):
            return False
    return True


def _negation_fails(
    graph: EntityGraph,
    pattern: Pattern,
    rel: Relationship,
    binding: Binding,
    unless: Sequence[EntityMatcher] = (),
) -> bool:
    """Whether ``not rel`` fails for ``binding`` and so for every match that contains it.

    Both sides bound: the edge is live. One side bound and the other free (an entity of
    the negation only): a vertex matching the free side, and none of ``unless`` (the
    entities still unbound, which it might yet become), has a live edge to the bound
    one. Otherwise (a side not bound yet) it cannot tell: False.
    """
    src, dst = binding.get(rel.source), binding.get(rel.target)
    if src is not None and dst is not None:
        return live_edge(graph, src, dst, rel.label)
    if (dst is not None and rel.source not in pattern.bound) or (
        src is not None and rel.target not in pattern.bound
    ):
        return _offended(graph, pattern, rel, src, dst, binding.values(), unless)
    return False


def _offended(
    graph: EntityGraph,
    pattern: Pattern,
    rel: Relationship,
    src: str | None,
    dst: str | None,
    used: Iterable[str],
    unless: Sequence[EntityMatcher] = (),
) -> bool:
    """For ``not rel`` with one side bound (``dst``, else ``src``): whether a vertex that
    matches the free side, and none of ``unless``, has a live edge to the bound one and
    is not in ``used`` (the match's vertices are exempt). A loop, not a generator: this
    runs for every full match."""
    if dst is not None:
        adjacency, free = graph.predecessors(dst), rel.source
    else:
        assert src is not None
        adjacency, free = graph.successors(src), rel.target
    spec = pattern.specs[free]
    for other, keyed in adjacency.items():
        edge = keyed.get(rel.label)
        if edge is None or edge.get(IS_DELETED) or other in used:
            continue
        attrs = graph.vertex(other)
        if spec(attrs) and not any(m(attrs) for m in unless):
            return True
    return False


def holds(graph: EntityGraph, pattern: Pattern, binding: Binding) -> bool:
    """Whether a recorded match still holds in the graph as it is now."""
    if binding.keys() != pattern.bound or len(set(binding.values())) != len(binding):
        return False
    for eid, vid in binding.items():
        if vid not in graph or not pattern.specs[eid](graph.vertex(vid)):
            return False
    return relationships_hold(graph, pattern, binding) and negations_hold(graph, pattern, binding)
