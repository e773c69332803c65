"""Evaluator actions as processor state: the action registry and the graph it implies.

The evaluator never changes the graph. It emits ``vitrage`` events, one per
evaluation round, whose payload is ``{"steps": [...]}``: the round's bookkeeping
steps in order (each activates or deactivates one action for one match). The
processor handles them like any other event, so a round is one sequenced, logged
and replayed record, not one per step:

1. :meth:`ActionRegistry.apply_all` records the steps in order (in
   ``Processor._observe``, so replaying the log rebuilds the registry without
   running the evaluator) and says which *effects* they touched, in first-touch
   order;
2. :class:`EffectWriter` makes the graph agree with the registry for each of
   those effects, once per round, emitting ordinary graph changes (which the log
   records).

An effect is what several actions may share on the graph, and is counted:

* ``("alarm", D)``: the deduced alarm D, one per (target, alarm name) as in
  Vitrage, so overlapping templates raising the same alarm on the same target
  share it; it exists while any activation wants it, with the highest severity;
* ``("causes", S, T)``: a ``causes`` edge, wanted by add_causal_relationship
  activations and by raise_alarm activations with a causing alarm;
* ``("state", T)``: T's ``vitrage_state``, the highest-priority state wanted;
* ``("down", T)``: T's ``is_marked_down``.

Everything here is deterministic: the registry is plain dicts in the order the
steps happened, and what an effect writes does not depend on that order (ties
are broken by value, not by arrival). A round puts its activations before its
deactivations, so an effect is never unwanted in the middle of a round unless it
is at its end: writing the round's effects once, after all its steps, ends in the
same graph as writing them after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from graph_service.entity_graph import (
    ALARM,
    CATEGORY,
    DATASOURCE,
    IS_DELETED,
    IS_PLACEHOLDER,
    RELATIONSHIP,
    SAMPLE_TS,
    TYPE,
    VID,
    Change,
    EntityGraph,
    _own,
)
from graph_service.states import StateNormalizer
from graph_service.transformers import (
    AGGREGATED_SEVERITY,
    AGGREGATED_STATE,
    CAUSES,
    EVALUATOR_STATE,
    ON,
    OPERATIONAL_SEVERITY,
    OPERATIONAL_STATE,
    RESOURCE_TYPE,
    RESOURCE_VID,
    MalformedEvent,
    vertex_id,
)
from rca_common.events import EntityType
from rca_common.timestamps import format_timestamp

VITRAGE = EntityType.VITRAGE.value
MARKED_DOWN = "is_marked_down"

ACTIVATE = "activate"
DEACTIVATE = "deactivate"

RAISE_ALARM = "raise_alarm"
SET_STATE = "set_state"
ADD_CAUSAL_RELATIONSHIP = "add_causal_relationship"
MARK_DOWN = "mark_down"

# Fields of an activation beyond the keys, by action: (required, optional).
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RAISE_ALARM: (("alarm_name", "severity"), ("causing",)),
    SET_STATE: (("state",), ()),
    ADD_CAUSAL_RELATIONSHIP: (("source",), ()),
    MARK_DOWN: ((), ()),
}
_COMMON = ("template", "target")
# An activation's record: its keys, in this order, per action (replay builds one per step)
_RECORD_KEYS = {
    action: ("action", "scenario", "clause", "match", *_COMMON, *required, *optional)
    for action, (required, optional) in _FIELDS.items()
}

Effect = tuple[str, ...]
Pair = tuple[str, str]  # (action key, match key)
Record = dict[str, Any]


def deduced_alarm_vid(target: str, alarm_name: str) -> str:
    """The deduced alarm's vertex id: one per (target, alarm name), as in Vitrage."""
    return vertex_id(ALARM, VITRAGE, deduced_alarm_id(target, alarm_name))


def deduced_alarm_id(target: str, alarm_name: str) -> str:
    return f"{target}:{alarm_name}"


class Step:
    """One bookkeeping step; ``record`` is the activation (None for a deactivation).

    A plain class, not a frozen dataclass: replay builds one per logged step, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (compiled, actions.pxd makes the fields read-only)."""

    __slots__ = ("action_key", "match_key", "op", "record")

    def __init__(self, op: str, action_key: str, match_key: str, record: Record | None) -> None:
        self.op = op
        self.action_key = action_key
        self.match_key = match_key
        self.record = record

    def _fields(self) -> tuple[Any, ...]:
        return (self.op, self.action_key, self.match_key, self.record)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "Step(op=%r, action_key=%r, match_key=%r, record=%r)" % self._fields()  # noqa: UP031


def parse_steps(payload: dict[str, Any], event_id: str) -> list[Step]:
    """Validate a live ``vitrage`` event's payload, every step of it, before any state
    changes: a round is applied whole or not at all."""
    steps = payload.get("steps")
    if payload.keys() != {"steps"} or not isinstance(steps, list) or not steps:
        raise MalformedEvent(
            f"vitrage event {event_id}: payload must be {{'steps': [...]}}, a non-empty list"
        )
    return [_parse_step(s, f"vitrage event {event_id}: steps[{n}]") for n, s in enumerate(steps)]


def _parse_step(payload: Any, where: str) -> Step:
    def bad(why: str) -> MalformedEvent:
        return MalformedEvent(f"{where}{why}"[:300])

    if not isinstance(payload, dict):
        raise bad(" must be an object")
    op = payload.get("op")
    if op not in (ACTIVATE, DEACTIVATE):
        raise bad(".op must be 'activate' or 'deactivate' (evaluator actions only)")
    action = payload.get("action")
    if action not in _FIELDS:
        raise bad(f": unknown action {action!r}")
    for key in ("action_key", "match_key"):
        if not _text(payload.get(key)):
            raise bad(f".{key} must be a non-empty string")
    if op == DEACTIVATE:
        return Step(op, payload["action_key"], payload["match_key"], None)
    required, optional = _FIELDS[action]
    for key in (*_COMMON, *required):
        if not _text(payload.get(key)):
            raise bad(f".{key} must be a non-empty string")
    for key in optional:
        if key in payload and not _text(payload[key]):
            raise bad(f".{key} must be a non-empty string")
    for key in ("scenario", "clause"):
        value = payload.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f".{key} must be a non-negative integer")
    match = payload.get("match")
    if not isinstance(match, dict) or not match or not all(map(_text, match.values())):
        raise bad(".match must map entity ids to vertex ids")
    bound = set(match.values())
    for key in ("target", "source", "causing"):
        if key in payload and payload[key] not in bound:
            raise bad(f".{key} is not a vertex of the match")
    return _step(payload)


def _step(payload: dict[str, Any]) -> Step:
    """The step of a logged payload (validated when it was first processed)."""
    if payload["op"] == DEACTIVATE:
        return Step(DEACTIVATE, payload["action_key"], payload["match_key"], None)
    return Step(ACTIVATE, payload["action_key"], payload["match_key"], _record(payload))


def _record(payload: dict[str, Any]) -> Record:
    """The activation record of a logged activation step (one lookup per key: replay
    builds one per logged activation)."""
    record = {}
    for k in _RECORD_KEYS[payload["action"]]:
        value = payload.get(k, _ABSENT)
        if value is not _ABSENT:
            record[k] = _own(value)
    return record


_ABSENT = object()  # a dict.get default that no payload value is


def steps_of(payload: dict[str, Any]) -> list[Step]:
    """The steps a logged ``vitrage`` event carries (replay: no validation, no evaluator)."""
    return [_step(s) for s in payload["steps"]]


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def effects_of(record: Record) -> list[Effect]:
    """The shared graph effects one activation contributes to (see the module docstring)."""
    action, target = record["action"], record["target"]
    if action == RAISE_ALARM:
        alarm = deduced_alarm_vid(target, record["alarm_name"])
        causing = record.get("causing")
        return [("alarm", alarm)] + ([("causes", causing, alarm)] if causing else [])
    if action == SET_STATE:
        return [("state", target)]
    if action == MARK_DOWN:
        return [("down", target)]
    return [("causes", record["source"], target)]


class ActionRegistry:
    """Which actions are active for which matches, with the indexes the evaluator and
    the effects need. Only ``_active`` is state; the indexes are derived from it."""

    def __init__(self) -> None:
        self._active: dict[str, dict[str, Record]] = {}
        self._by_vertex: dict[str, dict[Pair, None]] = {}
        self._by_effect: dict[Effect, dict[Pair, None]] = {}

    # ------------------------------------------------------------- transitions
    def apply(self, step: Step) -> list[Effect]:
        """Record one step; the effects it touched (empty for a no-op step)."""
        ak, mk = _own(step.action_key), _own(step.match_key)
        if step.op == ACTIVATE:
            matches = self._active.get(ak)
            if matches is not None and mk in matches:
                return []  # already active: a repeated activation changes nothing
            assert step.record is not None
            self._add(ak, mk, step.record)
            return effects_of(step.record)
        matches = self._active.get(ak)
        record = matches.pop(mk, None) if matches is not None else None
        if record is None:
            return []  # not active: nothing to undo
        if not matches:
            del self._active[ak]
        pair = (ak, mk)
        for vid in dict.fromkeys(record["match"].values()):
            index = self._by_vertex[vid]
            del index[pair]
            if not index:
                del self._by_vertex[vid]
        effects = effects_of(record)
        for effect in effects:
            index = self._by_effect[effect]
            del index[pair]
            if not index:
                del self._by_effect[effect]
        return effects

    def _add(self, ak: str, mk: str, record: Record) -> None:
        self._active.setdefault(ak, {})[mk] = record
        self._index(ak, mk, record)

    def _index(self, ak: str, mk: str, record: Record) -> None:
        pair = (ak, mk)
        for vid in dict.fromkeys(record["match"].values()):
            self._by_vertex.setdefault(vid, {})[pair] = None
        for effect in effects_of(record):
            self._by_effect.setdefault(effect, {})[pair] = None

    def record_logged(self, payload: dict[str, Any]) -> None:
        """A logged round's steps (its payload, as :func:`steps_of` reads it), recorded
        as :meth:`apply_all` records them, but into ``_active`` only: the indexes are
        left stale until :meth:`reindex`. For a takeover's replay, which reads nothing
        from the registry until it ends and spent a third of its time on rounds keeping
        the indexes current.

        Straight from the payload's dicts, without a :class:`Step` per step, and a key
        is made the registry's own only when it is added: most steps of a replayed
        round deactivate, or activate what is active already."""
        active = self._active
        for step in payload["steps"]:
            ak, mk = step["action_key"], step["match_key"]
            matches = active.get(ak)
            if step["op"] == DEACTIVATE:
                if matches is not None and matches.pop(mk, None) is not None and not matches:
                    del active[ak]
                continue
            if matches is None:
                matches = active[_own(ak)] = {}
            if mk not in matches:
                matches[_own(mk)] = _record(step)

    def reindex(self) -> None:
        """Rebuild the indexes from ``_active`` (as a snapshot restore builds them)."""
        self._by_vertex, self._by_effect = {}, {}
        for ak, matches in self._active.items():
            for mk, record in matches.items():
                self._index(ak, mk, record)

    def apply_all(self, steps: Iterable[Step]) -> list[Effect]:
        """Record a round's steps in order; the effects they touched, each once, in
        first-touch order (what the graph must then be made to agree with)."""
        touched: dict[Effect, None] = {}
        for step in steps:
            touched.update(dict.fromkeys(self.apply(step)))
        return list(touched)

    # ----------------------------------------------------------------- reading
    def __len__(self) -> int:
        return sum(len(m) for m in self._active.values())

    def is_active(self, action_key: str, match_key: str) -> bool:
        matches = self._active.get(action_key)
        return matches is not None and match_key in matches

    def record(self, action_key: str, match_key: str) -> Record | None:
        matches = self._active.get(action_key)
        return matches.get(match_key) if matches is not None else None

    def involving(self, vid: str) -> Iterable[Pair]:
        """The active (action, match) pairs whose match binds ``vid`` (do not mutate)."""
        return self._by_vertex.get(vid, {}).keys()

    def pairs(self) -> list[Pair]:
        return [(ak, mk) for ak, matches in self._active.items() for mk in matches]

    def wanting(self, effect: Effect) -> list[Record]:
        """The activations that want an effect."""
        pairs = self._by_effect.get(effect, {})
        return [self._active[ak][mk] for ak, mk in pairs]

    # --------------------------------------------------------------- snapshots
    def export(self) -> dict[str, dict[str, Record]]:
        """The registry as plain dicts (part of ``Processor.export_state``)."""
        return self._active

    @classmethod
    def from_export(cls, data: dict[str, dict[str, Record]], index: bool = True) -> ActionRegistry:
        """The registry :meth:`export` gave; ``index=False`` leaves its indexes to a
        later :meth:`reindex` (a takeover's replay indexes the registry once, at its end)."""
        registry = cls()
        registry._active = {
            _own(ak): {_own(mk): _own(record) for mk, record in matches.items()}
            for ak, matches in data.items()
        }
        if index:
            registry.reindex()
        return registry


class EffectWriter:
    """Makes the graph agree with the registry for the effects a round touched."""

    def __init__(
        self,
        graph: EntityGraph,
        states: StateNormalizer,
        registry: ActionRegistry,
        when: datetime,
        emit: Callable[[Change], None],
        mark_deleted: Callable[[str], None],
    ) -> None:
        self.graph = graph
        self.states = states
        self.registry = registry
        self.stamp = format_timestamp(when)
        self.emit = emit
        self.mark_deleted = mark_deleted

    def write(self, effects: list[Effect]) -> None:
        for effect in effects:
            kind = effect[0]
            if kind == "alarm":
                self._alarm(effect)
            elif kind == "causes":
                self._causes(effect)
            elif kind == "state":
                self._state(effect)
            else:
                self._down(effect)

    def _alarm(self, effect: Effect) -> None:
        vid = effect[1]
        wanting = self.registry.wanting(effect)
        attrs = self.graph.vertex(vid)
        if not wanting:
            if attrs is not None and not attrs.get(IS_DELETED):
                self.mark_deleted(vid)
            return
        target, name = wanting[0]["target"], wanting[0]["alarm_name"]
        target_attrs = self.graph.vertex(target)
        if target_attrs is None:
            return  # purged while evaluators were off; the evaluator deactivates it
        table = self.states.table(VITRAGE)
        severity = max((r["severity"] for r in wanting), key=lambda s: (table.rank(s), s))
        level = table.operational(severity)
        props = {
            VID: vid,
            CATEGORY: ALARM,
            TYPE: VITRAGE,
            "id": deduced_alarm_id(target, name),
            "name": name,
            "severity": severity,
            "state": "Active",
            DATASOURCE: VITRAGE,
            IS_DELETED: False,
            IS_PLACEHOLDER: False,
            OPERATIONAL_SEVERITY: level,
            AGGREGATED_SEVERITY: level,
            RESOURCE_VID: target,
            RESOURCE_TYPE: target_attrs.get(TYPE),
        }
        if attrs is None or attrs.get(IS_DELETED):
            props[SAMPLE_TS] = self.stamp  # raised (again) now
        self._upsert(vid, props, attrs)
        self._edge(vid, target, ON, wanted=True)

    def _causes(self, effect: Effect) -> None:
        _, src, dst = effect
        self._edge(src, dst, CAUSES, wanted=bool(self.registry.wanting(effect)))

    def _state(self, effect: Effect) -> None:
        vid = effect[1]
        attrs = self.graph.vertex(vid)
        if attrs is None:
            return
        vtype = attrs.get(TYPE, "")
        table = self.states.table(vtype)
        states = [r["state"] for r in self.registry.wanting(effect)]
        state = max(states, key=lambda s: (table.rank(s), s)) if states else None
        operational = attrs.get(OPERATIONAL_STATE) or table.default
        aggregated = self.states.aggregate(vtype, operational, state)
        if state is not None:
            self._upsert(vid, {EVALUATOR_STATE: state, AGGREGATED_STATE: aggregated}, attrs)
        elif EVALUATOR_STATE in attrs or attrs.get(AGGREGATED_STATE) != aggregated:
            self.emit(["v", vid, {AGGREGATED_STATE: aggregated}, [EVALUATOR_STATE]])

    def _down(self, effect: Effect) -> None:
        vid = effect[1]
        attrs = self.graph.vertex(vid)
        if attrs is None:
            return
        if self.registry.wanting(effect):
            self._upsert(vid, {MARKED_DOWN: True}, attrs)
        elif MARKED_DOWN in attrs:
            self.emit(["v", vid, {}, [MARKED_DOWN]])

    # ----------------------------------------------------------------- helpers
    def _upsert(self, vid: str, props: dict[str, Any], attrs: dict[str, Any] | None) -> None:
        if attrs is not None:
            props = {
                k: v
                for k, v in props.items()
                if k not in attrs or attrs[k] != v or type(attrs[k]) is not type(v)
            }
        if props:
            self.emit(["v", vid, props, []])

    def _edge(self, src: str, dst: str, label: str, wanted: bool) -> None:
        """A wanted edge is live when both ends exist and are live; an unwanted one is
        marked deleted (like every deletion in the graph)."""
        edge = self.graph.edge(src, dst, label)
        if not wanted:
            if edge is not None and not edge.get(IS_DELETED):
                self.emit(["e", src, dst, label, {IS_DELETED: True}, []])
            return
        ends = self.graph.vertex(src), self.graph.vertex(dst)
        if any(a is None or a.get(IS_DELETED) for a in ends):
            return
        if edge is None:
            self.emit(["e", src, dst, label, {RELATIONSHIP: label, IS_DELETED: False}, []])
        elif edge.get(IS_DELETED):
            self.emit(["e", src, dst, label, {IS_DELETED: False}, []])
