"""The processor: a deterministic function of (graph, event) to a list of changes.

``process`` is the live path (transform, diff against the graph, apply);
``replay`` is the recovery path (apply logged changes, no transformer runs).
Both end with the same graph and the same bookkeeping (recent event ids, the
logical clock, the per-source snapshot round), which is what makes a standby
that replays the log identical to the active that wrote it.

Evaluator actions (``entity_type=vitrage``) take their own path: each is one
evaluation round, the steps of the action registry (``self.actions``, recorded in
``_observe`` so that replay rebuilds it) plus the graph changes that make the
graph agree with them (graph_service/actions.py).

No wall clock, no randomness: time is the largest ``sample_timestamp`` seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from graph_service.actions import (
    VITRAGE,
    ActionRegistry,
    EffectWriter,
    Step,
    parse_steps,
    steps_of,
)
from graph_service.entity_graph import (
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
)
from graph_service.states import StateNormalizer
from graph_service.transformers import (
    AGGREGATED_STATE,
    EVALUATOR_OWNED,
    EVALUATOR_STATE,
    OPERATIONAL_STATE,
    RESOURCE_KEY_SET,
    RESOURCE_KEYS,
    MalformedEvent,
    Ref,
    category_of,
    transform_fields,
    vertex_id,
)
from rca_common.events import Action, Event
from rca_common.timestamps import format_timestamp, parse_timestamp, time_order

SNAPSHOT_ACTIONS = (Action.INIT_SNAPSHOT, Action.SNAPSHOT)


class Status(StrEnum):
    APPLIED = "applied"  # accepted: logged with a seq (its change list may be empty)
    STALE = "stale"  # accepted but older than the vertex: logged, no changes
    DUPLICATE = "duplicate"  # already applied (redelivery): not logged


# Enum members read per event, as module constants: in Python 3.11 an Enum class's
# attribute goes through ``EnumType.__getattr__`` (about 0.1 µs, not specialised).
_APPLIED, _STALE, _DUPLICATE = Status.APPLIED, Status.STALE, Status.DUPLICATE
_DELETE, _END_SNAPSHOT, _UPDATE = Action.DELETE, Action.END_SNAPSHOT, Action.UPDATE


class Outcome:
    """What :meth:`Processor.process` did with one event: its status and its changes."""

    __slots__ = ("changes", "event", "status")

    def __init__(self, event: Event, status: Status, changes: list[Change] | None = None) -> None:
        self.event = event
        self.status = status
        self.changes = [] if changes is None else changes

    def __repr__(self) -> str:
        return f"Outcome(event={self.event!r}, status={self.status!r}, changes={self.changes!r})"

    @property
    def logged(self) -> bool:
        return self.status is not _DUPLICATE


class EventKey:
    """The fields of an event that bookkeeping reads: all replay needs of a record.

    A plain class (compiled, processor.pxd makes its fields read-only): replay builds
    one per logged evaluator round, and a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``."""

    __slots__ = (
        "action",
        "entity_id",
        "entity_type",
        "event_id",
        "payload",
        "sample_timestamp",
        "source",
    )

    def __init__(
        self,
        event_id: str,
        source: str,
        entity_type: str,
        entity_id: str,
        action: Action,
        sample_timestamp: datetime,
        payload: dict[str, Any] | None = None,  # kept for evaluator actions only
    ) -> None:
        self.event_id = event_id
        self.source = source
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.action = action
        self.sample_timestamp = sample_timestamp
        self.payload = payload

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EventKey:
        etype = data["entity_type"]
        return cls(
            data["event_id"],
            data["source"],
            etype,
            data.get("entity_id", ""),
            Action(data["action"]),
            parse_timestamp(data["sample_timestamp"]),
            data.get("payload") if etype == VITRAGE else None,
        )


class RecentIds:
    """The last N event ids, in arrival order (deterministic when pickled)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def restore(cls, capacity: int, ids: list[str]) -> RecentIds:
        """From :meth:`Processor.export_state`'s list (distinct ids, oldest first), in
        bulk: a restore rebuilds hundreds of thousands of them."""
        recent = cls(capacity)
        distinct = dict.fromkeys(ids)  # on a takeover's critical path: built once
        if len(distinct) != len(ids):  # not distinct: the slow, exact way
            for event_id in ids:
                recent.add(event_id)
            return recent
        if len(ids) > capacity:
            ids = ids[-capacity:] if capacity else []
            distinct = dict.fromkeys(ids)
        recent._order = deque(ids)
        recent._ids = distinct
        return recent

    def add(self, event_id: str) -> None:
        ids = self._ids
        if event_id in ids:
            return
        order = self._order
        order.append(event_id)
        ids[event_id] = None
        if len(order) > self.capacity:
            del ids[order.popleft()]


class Processor:
    """Owns the entity graph and every piece of state that replay must rebuild."""

    def __init__(
        self,
        states: StateNormalizer | None = None,
        min_time_to_delete: float = 600.0,
        recent_capacity: int = 200_000,
    ) -> None:
        self.graph = EntityGraph()
        self.states = states or StateNormalizer.load()
        self.min_time_to_delete = timedelta(seconds=min_time_to_delete)
        self.recent = RecentIds(recent_capacity)
        self.clock: datetime | None = None
        # source -> vertices seen since that source's snapshot round began
        self._round: dict[str, dict[str, None]] = {}
        # which evaluator actions are active for which matches (see actions.py)
        self.actions = ActionRegistry()
        self._index_later = False  # see registry_indexed_after

    # ---------------------------------------------------------------- live path
    def process(self, event: Event) -> Outcome:
        """Apply one event; raises MalformedEvent (before touching any state) if it is bad."""
        # The fields are read from the model's __dict__, each once: an attribute of a
        # pydantic model goes through BaseModel.__getattr__'s slot (see transformers).
        f = event.__dict__
        event_id = f["event_id"]
        if event_id in self.recent._ids:
            return Outcome(event, _DUPLICATE)
        etype = f["entity_type"]
        if etype == VITRAGE:
            return self._process_action(event)
        action = f["action"]
        if action is _END_SNAPSHOT:
            if f["source"] == VITRAGE:
                # Deduced alarms belong to the evaluator's bookkeeping, not to a round.
                raise MalformedEvent(f"event {event_id}: no snapshot rounds for {VITRAGE!r}")
            seen = self._observe(event)
            changes: list[Change] = []
            emit = _Emitter(self.graph, changes)
            self._end_snapshot(event, seen or {}, emit)
            self._purge(emit)
            return Outcome(event, _APPLIED, changes)
        ts = f["sample_timestamp"]
        stamp = format_timestamp(ts)  # once per event: the transformer and deletions use it
        tf = transform_fields(f, self.states, stamp)
        self._bookkeep(event_id, f["source"], etype, f["entity_id"], action, ts)  # _observe
        changes = []
        status = _APPLIED
        vid = tf.vid
        g = self.graph
        old = g.vertex(vid)
        if old is not None and _is_newer(old, time_order(stamp)):
            status = _STALE
        elif action is _DELETE or tf.deleted:
            if old is not None and not old.get(IS_DELETED):
                self._mark_deleted_at(vid, stamp, _Emitter(g, changes))
        elif old is not None and tf.derived is not None:  # a resource known already
            self._update_resource(vid, tf.payload, tf.derived, old, changes)
            if tf.refs or tf.owned:
                self._link(vid, tf.refs, tf.owned, stamp, changes)
        else:
            self._upsert(vid, tf.props, old, changes)
            if tf.refs or tf.owned:
                self._link(vid, tf.refs, tf.owned, stamp, changes)
        for purged in self._due_for_purge():  # _purge without an emitter
            ch: Change = ["V", purged]
            g.apply((ch,))
            changes.append(ch)
        return Outcome(event, status, changes)

    def _process_action(self, event: Event) -> Outcome:
        """An evaluation round: all its registry steps, then the graph made to agree with
        the registry once for every effect they touched."""
        if event.action is not _UPDATE:
            raise MalformedEvent(f"vitrage event {event.event_id}: action must be update")
        steps = parse_steps(event.payload, event.event_id)
        effects = self._observe(event, steps)
        changes: list[Change] = []
        emit = _Emitter(self.graph, changes)
        ts = event.sample_timestamp
        EffectWriter(
            self.graph,
            self.states,
            self.actions,
            ts,
            emit,
            lambda vid: self._mark_deleted(vid, ts, emit),
        ).write(effects)
        self._purge(emit)
        return Outcome(event, _APPLIED, changes)

    # ------------------------------------------------------------ recovery path
    def replay(self, event: Event, changes: Iterable[Sequence[Any]]) -> None:
        """Re-apply a logged event: its recorded changes, then its bookkeeping."""
        self.graph.apply(changes)
        self._observe(event)

    def replay_wire(self, event: dict[str, Any], changes: Iterable[Sequence[Any]]) -> None:
        """:meth:`replay` for a logged record, without building a pydantic Event: the
        recovery hot path, so a datasource event's bookkeeping reads the dict as is."""
        self.graph.apply(changes)
        etype = event["entity_type"]
        if etype == VITRAGE:
            self._observe(EventKey.from_wire(event))  # type: ignore[arg-type]
            return
        self._bookkeep(
            event["event_id"],
            event["source"],
            etype,
            event.get("entity_id", ""),
            event["action"],
            parse_timestamp(event["sample_timestamp"]),
        )

    @contextmanager
    def registry_indexed_after(self) -> Iterator[None]:
        """Restore and replay logged rounds into the action registry without keeping its
        indexes current, and index it once at the end (a takeover's replay: nothing reads
        the registry before the evaluators are enabled, after it)."""
        self._index_later = True
        try:
            yield
        finally:
            self._index_later = False
            self.actions.reindex()

    # ---------------------------------------------------------------- snapshots
    def export_state(self) -> dict[str, Any]:
        """Everything replay must continue from, as plain builtins and datetimes.

        The snapshot codec pickles this; keeping it free of project classes keeps
        the restricted unpickler's allow-list short.
        """
        return {
            "graph": self.graph.__getstate__(),
            "recent": list(self.recent._order),
            "recent_capacity": self.recent.capacity,
            "clock": self.clock,
            "round": self._round,
            "actions": self.actions.export(),
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`export_state` (replaces this processor's state). Within
        :meth:`registry_indexed_after`, the registry is indexed when that ends, not here."""
        graph = EntityGraph.__new__(EntityGraph)
        graph.__setstate__(state["graph"])
        self.graph = graph
        self.recent = RecentIds.restore(self.recent.capacity, state["recent"])
        self.clock = state["clock"]
        self._round = state["round"]
        self.actions = ActionRegistry.from_export(
            state.get("actions", {}), index=not self._index_later
        )

    # ------------------------------------------------------------- bookkeeping
    def _observe(self, event: Event, steps: list[Step] | None = None) -> Any:
        """Record the event id, advance the clock, track the snapshot round, and record
        an evaluation round's steps in the action registry (``steps``: already parsed
        by the live path; replay reads them from the payload).

        Returns, for an end_snapshot, the vertices seen in the round it closes; for an
        evaluator action, the effects its steps touched (first-touch order).
        """
        if event.entity_type == VITRAGE:
            self._bookkeep(event.event_id, VITRAGE, VITRAGE, "", "", event.sample_timestamp)
            if self._index_later and steps is None:  # a replayed round: nothing reads effects
                self.actions.record_logged(event.payload)
                return []
            return self.actions.apply_all(steps if steps is not None else steps_of(event.payload))
        return self._bookkeep(
            event.event_id,
            event.source,
            event.entity_type,
            event.entity_id,
            event.action,
            event.sample_timestamp,
        )

    def _bookkeep(
        self, event_id: str, source: str, etype: str, entity_id: str, action: str, ts: datetime
    ) -> dict[str, None] | None:
        """What every event leaves behind: its id, the clock, and its source's snapshot
        round (the vertices an end_snapshot will keep; returned by the end_snapshot)."""
        self.recent.add(event_id)
        if self.clock is None or ts > self.clock:
            # plain datetime.timezone: snapshot-safe (most events are UTC already)
            self.clock = ts if ts.tzinfo is UTC else ts.astimezone(UTC)
        if etype == VITRAGE:
            return None
        if action == _END_SNAPSHOT:
            return self._round.pop(source, {})
        if action in SNAPSHOT_ACTIONS:
            self._round.setdefault(source, {})[vertex_id(category_of(etype), etype, entity_id)] = (
                None
            )
        elif source in self._round:
            self._round[source][vertex_id(category_of(etype), etype, entity_id)] = None
        return None

    # ------------------------------------------------------------------ changes
    # The live path applies each change as soon as it is made (later decisions see
    # earlier changes, as with :class:`_Emitter`) but inline: ``apply((ch,))`` and
    # ``changes.append(ch)`` without a call through the emitter per change.
    def _upsert(
        self, vid: str, props: dict[str, Any], old: dict[str, Any] | None, changes: list[Change]
    ) -> None:
        if OPERATIONAL_STATE in props:
            props[AGGREGATED_STATE] = self._aggregated(props[TYPE], props[OPERATIONAL_STATE], old)
        if old is None:
            ch: Change = ["v", vid, props, []]
        else:
            changed = {}
            shared = 0  # keys of props that old has too
            for k, v in props.items():
                shared += _compare(old, k, v, changed)
            if shared == len(old):  # old has no key that props lacks: the usual case
                removed = []
            else:
                removed = [k for k in old if k not in props and k not in EVALUATOR_OWNED]
            if not changed and not removed:
                return
            ch = ["v", vid, changed, removed]
        self.graph.apply((ch,))
        changes.append(ch)

    def _aggregated(self, etype: str, operational: str, old: dict[str, Any] | None) -> str:
        """The aggregated state of a vertex whose datasource state is ``operational``.
        Without a state set by the evaluator (most vertices) it is that state: no method
        call per event for that."""
        evaluator_state = old.get(EVALUATOR_STATE) if old else None
        if evaluator_state:
            return self.states.aggregate(etype, operational, evaluator_state)  # type: ignore[no-any-return]
        return operational

    def _update_resource(
        self,
        vid: str,
        payload: dict[str, Any],
        derived: tuple[Any, ...],
        old: dict[str, Any],
        changes: list[Change],
    ) -> None:
        """:meth:`_upsert` of an existing vertex from a resource's payload and derived
        values (see ``Transformed``), without merging them into one dict first. The
        changed keys come in another order than :meth:`_upsert` would give them (the
        payload's own, then ours): as deterministic, and replay applies them as logged."""
        changed: dict[str, Any] = {}
        shared = 0  # keys of the properties that old has too
        keys = RESOURCE_KEYS
        ours = RESOURCE_KEY_SET
        for k, v in payload.items():
            if k not in ours and k != AGGREGATED_STATE:  # ours win: compared below
                shared += _compare(old, k, v, changed)
        for i in range(len(keys)):
            shared += _compare(old, keys[i], derived[i], changed)
        aggregated = self._aggregated(derived[_TYPE_AT], derived[_OPERATIONAL_AT], old)
        shared += _compare(old, AGGREGATED_STATE, aggregated, changed)
        if shared == len(old):  # old has no key that the event lacks: the usual case
            removed = []
        else:
            removed = [
                k
                for k in old
                if k not in payload
                and k not in ours
                and k != AGGREGATED_STATE
                and k not in EVALUATOR_OWNED
            ]
        if not changed and not removed:
            return
        ch: Change = ["v", vid, changed, removed]
        self.graph.apply((ch,))
        changes.append(ch)

    def _link(
        self,
        vid: str,
        refs: list[Ref],
        owned: tuple[tuple[str, bool, str | None], ...],
        stamp: str,
        changes: list[Change],
    ) -> None:
        # Methods are called on ``g``, not through local aliases: compiled, an alias
        # of a cpdef method would build a Python wrapper per call.
        g = self.graph
        wanted: set[tuple[str, str, str]] = set()
        for ref in refs:
            nid = ref.vid
            label = ref.label
            if g.vertex(nid) is None:
                ch: Change = ["v", nid, _placeholder(nid, ref, stamp), []]
                g.apply((ch,))
                changes.append(ch)
            src, dst = (vid, nid) if ref.outgoing else (nid, vid)
            wanted.add((src, dst, label))
            keyed = g.successors(src).get(dst)
            edge = None if keyed is None else keyed.get(label)
            if edge is None:
                ch = ["e", src, dst, label, {RELATIONSHIP: label, IS_DELETED: False}, []]
            elif edge.get(IS_DELETED):
                ch = ["e", src, dst, label, {IS_DELETED: False}, []]
            else:
                continue
            g.apply((ch,))
            changes.append(ch)
        if not owned:
            return
        stale: list[tuple[str, str, str]] = []
        for label, outgoing, ntype in owned:
            adjacency = g.successors(vid) if outgoing else g.predecessors(vid)
            for other, keyed in adjacency.items():
                if label not in keyed:
                    continue
                edge_id = (vid, other, label) if outgoing else (other, vid, label)
                if edge_id in wanted:
                    continue
                if ntype is None or g.vertex(other).get(TYPE) == ntype:  # type: ignore[union-attr]
                    stale.append(edge_id)
        for src, dst, key in stale:  # a move: the old edge goes
            ch = ["E", src, dst, key]
            g.apply((ch,))
            changes.append(ch)

    def _mark_deleted(self, vid: str, ts: datetime, emit: _Emitter) -> None:
        self._mark_deleted_at(vid, format_timestamp(ts), emit)

    def _mark_deleted_at(self, vid: str, stamp: str, emit: _Emitter) -> None:
        """:meth:`_mark_deleted` given the deleting event's time already formatted."""
        g = self.graph
        emit(["v", vid, {IS_DELETED: True, SAMPLE_TS: stamp}, []])
        # out-edges then in-edges, as networkx lists them (a self-loop is in both)
        edges = [
            (vid, dst, key)
            for dst, keyed in g.successors(vid).items()
            for key, a in keyed.items()
            if not a.get(IS_DELETED)
        ]
        edges += [
            (src, vid, key)
            for src, keyed in g.predecessors(vid).items()
            for key, a in keyed.items()
            if not a.get(IS_DELETED)
        ]
        for src, dst, key in edges:
            emit(["e", src, dst, key, {IS_DELETED: True}, []])

    def _end_snapshot(self, event: Event, seen: dict[str, None], emit: _Emitter) -> None:
        """Consistency: the source's entities missing from its snapshot are deleted."""
        source = event.source
        missing = [
            vid
            for vid, attrs in self.graph.vertices()
            if attrs.get(DATASOURCE) == source
            and vid not in seen
            and not attrs.get(IS_DELETED)
            and not attrs.get(IS_PLACEHOLDER)
        ]
        if missing:
            stamp = format_timestamp(event.sample_timestamp)
            for vid in missing:
                self._mark_deleted_at(vid, stamp, emit)

    def _purge(self, emit: _Emitter) -> None:
        """Physically remove vertices deleted longer than MIN_TIME_TO_DELETE ago (event time)."""
        for vid in self._due_for_purge():
            emit(["V", vid])

    def _due_for_purge(self) -> list[str]:
        """The deleted vertices :meth:`_purge` removes now (the live path emits them inline).
        Cheap when none is due: the top of the purge queue says so (EntityGraph)."""
        if self.clock is None:
            return []
        return self.graph.deleted_before(self.clock - self.min_time_to_delete)


class _Emitter:
    """Applies each change as it is made, so later decisions see earlier changes."""

    __slots__ = ("changes", "graph")

    def __init__(self, graph: EntityGraph, changes: list[Change]) -> None:
        self.graph = graph
        self.changes = changes

    def __call__(self, change: Change) -> None:
        self.graph.apply((change,))
        self.changes.append(change)


_CONTAINERS = frozenset((list, dict))
_MISSING = object()  # a dict.get default that no property value is
# where Transformed.derived holds a resource's type and operational state
_TYPE_AT = RESOURCE_KEYS.index(TYPE)
_OPERATIONAL_AT = RESOURCE_KEYS.index(OPERATIONAL_STATE)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type: ``1``, ``1.0`` and ``True`` are equal in Python
    but are different property values (a change from one to another must be applied)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    if type(a) is dict:
        if a.keys() != b.keys():
            return False
        for k, v in a.items():  # noqa: SIM110 (compiled: a generator would be a closure)
            if not _same(v, b[k]):
                return False
        return True
    return bool(a == b)


def _compare(old: dict[str, Any], k: str, v: Any, changed: dict[str, Any]) -> int:
    """Put ``k: v`` in ``changed`` unless ``old`` holds it already; returns 1 if ``old``
    has ``k`` at all (the callers count those, to know whether a key went away)."""
    ov = old.get(k, _MISSING)
    if ov is _MISSING:
        changed[k] = v
        return 0
    if ov is not v and _differs(ov, v):
        changed[k] = v
    return 1


def _differs(ov: Any, v: Any) -> bool:
    """Whether a property's new value ``v`` differs from its old one ``ov``: unchanged
    only if equal *and* of the same JSON type, all the way down (see _same); the cheap
    != first, as most values are unchanged."""
    return bool(
        ov != v or (t := type(v)) is not type(ov) or (t in _CONTAINERS and not _same(ov, v))
    )


def _is_newer(attrs: dict[str, Any], order: int) -> bool:
    """True when the vertex holds data newer than the time whose :func:`time_order` is
    ``order`` (placeholders never do)."""
    if attrs.get(IS_PLACEHOLDER):
        return False
    current = attrs.get(SAMPLE_TS)
    return current is not None and time_order(current) > order


def _placeholder(vid: str, ref: Ref, stamp: str) -> dict[str, Any]:
    return {
        VID: vid,
        CATEGORY: category_of(ref.vtype),
        TYPE: ref.vtype,
        "id": ref.entity_id,
        IS_PLACEHOLDER: True,
        IS_DELETED: False,
        SAMPLE_TS: stamp,
    }


__all__ = ["MalformedEvent", "Outcome", "Processor", "Status"]
