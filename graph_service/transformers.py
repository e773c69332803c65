"""One transformer per entity type: an event in, the vertex it describes out.

A transformer is pure: it reads only the event, never the graph. It returns the
vertex's datasource-owned properties and its references to other entities; the
processor turns that into graph changes (placeholders, edges, moves).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from hashlib import sha1
from typing import Any, NamedTuple

from graph_service.entity_graph import (
    ALARM,
    CATEGORY,
    DATASOURCE,
    IS_DELETED,
    IS_PLACEHOLDER,
    RESOURCE,
    SAMPLE_TS,
    TYPE,
    VID,
)
from graph_service.states import StateNormalizer
from rca_common.events import ALARM_TYPES, EntityType, Event
from rca_common.timestamps import format_timestamp

VERTEX_NAMESPACE = uuid.UUID("6f1c1d8e-3c0a-5b7e-9a53-2f4d7c1e8b90")

CONTAINS = "contains"
ON = "on"
ATTACHED = "attached"
CAUSES = "causes"

OPERATIONAL_STATE = "vitrage_operational_state"
AGGREGATED_STATE = "vitrage_aggregated_state"
OPERATIONAL_SEVERITY = "vitrage_operational_severity"
AGGREGATED_SEVERITY = "vitrage_aggregated_severity"
EVALUATOR_STATE = "vitrage_state"
RESOURCE_VID = "vitrage_resource_id"
RESOURCE_TYPE = "vitrage_resource_type"

DEFAULT_CLUSTER = "openstack.cluster"

# Properties the evaluator owns: a datasource update never removes them.
EVALUATOR_OWNED = frozenset({EVALUATOR_STATE, "is_marked_down"})


_NAMESPACE_BYTES = VERTEX_NAMESPACE.bytes


def uuid5_vertex_id(category: str, vtype: str, entity_id: str) -> str:
    """Deterministic vertex id: uuid5 of category, type and datasource id.

    ``str(uuid.uuid5(VERTEX_NAMESPACE, name))`` written out: the UUID object's
    validation and int round trip cost more than the SHA-1 (new alarms miss the cache).
    """
    h = sha1(_NAMESPACE_BYTES + f"{category}:{vtype}:{entity_id}".encode()).hexdigest()
    # version 5 in the 13th hex digit; RFC 4122 variant (binary 10xx) in the 17th
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


# category -> type -> datasource id -> vertex id. Every event asks for its vertex's id:
# three lookups keyed by strings cost a fifth of what functools.lru_cache did (it packs
# the arguments into a tuple, hashes it and reorders its list; measured with callgrind,
# 1,560 instructions a call). A type's ids are dropped when it holds _VIDS_MAX.
_VIDS: dict[str, dict[str, dict[str, str]]] = {}
_VIDS_MAX = 1 << 18


def vertex_id(category: str, vtype: str, entity_id: str) -> str:
    """:func:`uuid5_vertex_id`, memoised."""
    by_type = _VIDS.get(category)
    if by_type is None:
        by_type = _VIDS[category] = {}
    by_id = by_type.get(vtype)
    if by_id is None:
        by_id = by_type[vtype] = {}
    vid = by_id.get(entity_id)
    if vid is None:
        if len(by_id) >= _VIDS_MAX:
            by_id.clear()
        vid = by_id[entity_id] = uuid5_vertex_id(category, vtype, entity_id)
    return vid


def clear_vertex_ids() -> None:
    """Forget the memoised vertex ids (a benchmark measuring the graph's own memory)."""
    _VIDS.clear()


# Entity types as plain strings: ``EntityType.HOST.value`` costs two slow lookups in
# Python 3.11 (the Enum class's ``__getattr__``, then the ``value`` property).
_CLUSTER, _ZONE, _HOST = EntityType.CLUSTER.value, EntityType.ZONE.value, EntityType.HOST.value
_INSTANCE, _NETWORK = EntityType.INSTANCE.value, EntityType.NETWORK.value

# Plain strings: membership of a str in a set of StrEnum members is slower.
_ALARM_CATEGORY_TYPES = frozenset(t.value for t in (*ALARM_TYPES, EntityType.VITRAGE))


def category_of(entity_type: str) -> str:
    return ALARM if entity_type in _ALARM_CATEGORY_TYPES else RESOURCE


class MalformedEvent(ValueError):
    """An event the processor cannot apply; ``reason`` goes to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RefFields(NamedTuple):
    vtype: str
    entity_id: str
    label: str
    outgoing: bool  # True: entity -> ref; False: ref -> entity
    vid: str  # derived from the fields above, computed once (the processor reads it often)


class Ref(_RefFields):
    """A reference from the event's entity to another entity, and the edge it implies.

    ``Ref(vtype, entity_id, label, outgoing)``; the referenced vertex id is computed
    on construction, so equal references are equal tuples.
    """

    __slots__ = ()

    def __new__(cls, vtype: str, entity_id: str, label: str, outgoing: bool) -> Ref:
        vid = vertex_id(category_of(vtype), vtype, entity_id)
        return tuple.__new__(cls, (vtype, entity_id, label, outgoing, vid))


# References by their fields: most events refer to a few hundred hosts, zones and
# networks, and building a Ref (a tuple subclass with a Python-level __new__) cost more
# than the rest of an instance event's references. Refs are immutable, so sharing one
# is safe. Cleared when full.
_REFS: dict[tuple[str, str, str, bool], Ref] = {}
_REFS_MAX = 1 << 16


def ref(vtype: str, entity_id: str, label: str, outgoing: bool) -> Ref:
    """``Ref(vtype, entity_id, label, outgoing)``, memoised."""
    key = (vtype, entity_id, label, outgoing)
    found = _REFS.get(key)
    if found is None:
        if len(_REFS) >= _REFS_MAX:
            _REFS.clear()
        found = _REFS[key] = Ref(vtype, entity_id, label, outgoing)
    return found


class Transformed:
    """What one event says about its entity.

    ``owned``: the edge kinds (label, outgoing, neighbour type) this entity's events
    define in full: an edge of such a kind that the event does not mention is
    removed. A neighbour type of None means any type (an alarm's one resource).

    A resource's transformer leaves ``props`` unbuilt: it gives its ``payload`` and
    the values of :data:`RESOURCE_KEYS` (``derived``), and ``props`` merges them when
    first read. The processor diffs an update of an existing vertex against the two
    without the merged dict (callgrind, the processor benchmark's updates: building and
    freeing it was 6 % of all instructions).
    """

    __slots__ = ("_props", "deleted", "derived", "owned", "payload", "refs", "vid")

    def __init__(
        self,
        vid: str,
        props: dict[str, Any] | None,
        refs: list[Ref] | None = None,
        owned: tuple[tuple[str, bool, str | None], ...] = (),
        deleted: bool = False,
        payload: dict[str, Any] | None = None,
        derived: tuple[Any, ...] | None = None,
    ) -> None:
        self.vid = vid
        self._props = props
        self.refs = [] if refs is None else refs
        self.owned = owned
        self.deleted = deleted
        self.payload = payload
        self.derived = derived

    @property
    def props(self) -> dict[str, Any]:
        """The vertex's datasource-owned properties: the payload's keys first, then
        ours (a payload key of the same name keeps its position and takes our value)."""
        if self._props is None:
            self._props = merged_props(self.payload or {}, self.derived or ())
        return self._props

    def _fields(self) -> tuple[Any, ...]:
        return (self.vid, self.props, self.refs, self.owned, self.deleted)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transformed) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "Transformed(vid=%r, props=%r, refs=%r, owned=%r, deleted=%r)" % self._fields()  # noqa: UP031


# The properties a resource's transformer sets itself, in the order they follow the
# payload's keys; ``Transformed.derived`` holds their values in this order.
RESOURCE_KEYS = (
    VID,
    CATEGORY,
    TYPE,
    "id",
    "name",
    "state",
    DATASOURCE,
    SAMPLE_TS,
    IS_DELETED,
    IS_PLACEHOLDER,
    OPERATIONAL_STATE,
)
RESOURCE_KEY_SET = frozenset(RESOURCE_KEYS)


def merged_props(payload: dict[str, Any], derived: tuple[Any, ...]) -> dict[str, Any]:
    """A resource's properties from its payload and :data:`RESOURCE_KEYS`' values (the
    key order is part of the logged change)."""
    props = dict(payload)
    keys = RESOURCE_KEYS
    for i in range(len(keys)):  # indexes, not zip(): compiled, no tuple per pair
        props[keys[i]] = derived[i]
    return props


# An event's fields are read from its ``__dict__`` (``Fields``), once: a pydantic
# model's attribute goes through ``BaseModel.__getattr__``'s slot, several times
# slower than a dict lookup (in Python and in the compiled module alike).
Fields = dict[str, Any]

# (the event's fields, states, its formatted sample_timestamp) -> what it says
Transformer = Callable[[Fields, StateNormalizer, str], Transformed]


def _require(payload: dict[str, Any], key: str, f: Fields) -> Any:
    value = payload.get(key)
    if value is None or value == "":
        raise MalformedEvent(f"{f['entity_type']} event {f['event_id']}: payload.{key} missing")
    return value


def _ref_id(f: Fields, key: str, value: Any) -> str:
    """A reference to another entity: its datasource id, which must be a string or
    an integer (checked here, before the processor changes any state)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MalformedEvent(
        f"{f['entity_type']} event {f['event_id']}: payload.{key} must be a non-empty "
        f"entity id, not {value!r}"[:300]
    )


def _derived(f: Fields, states: StateNormalizer, stamp: str) -> tuple[Any, ...]:
    """The values of :data:`RESOURCE_KEYS` for a resource's event."""
    payload = f["payload"]
    etype = f["entity_type"]
    eid = f["entity_id"]
    state = payload.get("state")
    return (
        vertex_id(RESOURCE, etype, eid),
        RESOURCE,
        etype,
        eid,
        payload.get("name", eid),
        state,
        f["source"],
        stamp,
        False,
        False,
        states.operational(etype, state),
    )


def _simple(
    refs_of: Callable[[Fields], list[Ref]], owned: tuple[tuple[str, bool, str], ...]
) -> Transformer:
    def transform(f: Fields, states: StateNormalizer, stamp: str) -> Transformed:
        derived = _derived(f, states, stamp)
        return Transformed(
            derived[0], None, refs_of(f), owned, payload=f["payload"], derived=derived
        )

    return transform


def _zone_refs(f: Fields) -> list[Ref]:
    cluster = _ref_id(f, "cluster", f["payload"].get("cluster") or DEFAULT_CLUSTER)
    return [ref(_CLUSTER, cluster, CONTAINS, False)]


def _host_refs(f: Fields) -> list[Ref]:
    zone = f["payload"].get("zone")
    return [ref(_ZONE, _ref_id(f, "zone", zone), CONTAINS, False)] if zone else []


def _instance_refs(f: Fields) -> list[Ref]:
    host = f["payload"].get("host")
    return [ref(_HOST, _ref_id(f, "host", host), CONTAINS, False)] if host else []


def _port_refs(f: Fields) -> list[Ref]:
    refs = []
    payload = f["payload"]
    if net := payload.get("network_id"):
        refs.append(ref(_NETWORK, _ref_id(f, "network_id", net), CONTAINS, False))
    if dev := payload.get("device_id"):
        refs.append(ref(_INSTANCE, _ref_id(f, "device_id", dev), ATTACHED, True))
    return refs


def _volume_refs(f: Fields) -> list[Ref]:
    attached = f["payload"].get("attached_to") or []
    if isinstance(attached, str):
        attached = [attached]
    if not isinstance(attached, list):
        raise MalformedEvent(f"cinder.volume event {f['event_id']}: attached_to must be a list")
    return [ref(_INSTANCE, _ref_id(f, "attached_to", i), ATTACHED, True) for i in attached]


def _no_refs(f: Fields) -> list[Ref]:
    return []


def _alarm(f: Fields, states: StateNormalizer, stamp: str) -> Transformed:
    payload = f["payload"]
    etype = f["entity_type"]
    name = _require(payload, "name", f)
    rtype = _require(payload, "resource_type", f)
    if not isinstance(rtype, str):
        raise MalformedEvent(
            f"{etype} event {f['event_id']}: payload.resource_type must be a string"
        )
    rid = _ref_id(f, "resource_id", _require(payload, "resource_id", f))
    status = str(payload.get("status", "firing")).lower()
    if status not in ("firing", "resolved"):
        raise MalformedEvent(f"{etype} event {f['event_id']}: status must be firing or resolved")
    severity = payload.get("severity")
    op_sev = states.operational(etype, severity)
    eid = f["entity_id"]
    vid = vertex_id(ALARM, etype, eid)
    resource = ref(rtype, rid, ON, True)
    props: dict[str, Any] = {
        **payload,
        VID: vid,
        CATEGORY: ALARM,
        TYPE: etype,
        "id": eid,
        "name": name,
        "state": "Active" if status == "firing" else "Inactive",
        DATASOURCE: f["source"],
        SAMPLE_TS: stamp,
        IS_DELETED: False,
        IS_PLACEHOLDER: False,
        OPERATIONAL_SEVERITY: op_sev,
        AGGREGATED_SEVERITY: op_sev,
        RESOURCE_VID: resource.vid,
        RESOURCE_TYPE: rtype,
    }
    # The alarm owns its "on" edge whatever the resource type: an alarm moved to a
    # resource of another type must not keep the old edge.
    return Transformed(vid, props, [resource], ((ON, True, None),), deleted=status == "resolved")


TRANSFORMERS: dict[str, Transformer] = {
    EntityType.CLUSTER: _simple(_no_refs, ()),
    EntityType.ZONE: _simple(_zone_refs, ((CONTAINS, False, EntityType.CLUSTER.value),)),
    EntityType.HOST: _simple(_host_refs, ((CONTAINS, False, EntityType.ZONE.value),)),
    EntityType.INSTANCE: _simple(_instance_refs, ((CONTAINS, False, EntityType.HOST.value),)),
    EntityType.NETWORK: _simple(_no_refs, ()),
    EntityType.PORT: _simple(
        _port_refs,
        ((CONTAINS, False, EntityType.NETWORK.value), (ATTACHED, True, EntityType.INSTANCE.value)),
    ),
    EntityType.VOLUME: _simple(_volume_refs, ((ATTACHED, True, EntityType.INSTANCE.value),)),
    EntityType.ZABBIX: _alarm,
    EntityType.PROMETHEUS: _alarm,
    EntityType.AODH: _alarm,
    # No transformer for ``vitrage``: those events are evaluator actions, handled by
    # the processor's action path (graph_service/actions.py).
}


def transform(event: Event, states: StateNormalizer, stamp: str | None = None) -> Transformed:
    """Run the event's transformer; unknown types and bad payloads raise MalformedEvent.

    ``stamp`` is ``format_timestamp(event.sample_timestamp)`` when the caller has it
    already (the processor formats each event's time once).
    """
    return transform_fields(event.__dict__, states, stamp)


def transform_fields(f: Fields, states: StateNormalizer, stamp: str | None = None) -> Transformed:
    """:func:`transform` given the event's fields (its ``__dict__``)."""
    etype = f["entity_type"]
    fn = TRANSFORMERS.get(etype)
    if not f["entity_id"]:
        raise MalformedEvent(f"event {f['event_id']}: entity_id is required for {f['action']}")
    if fn is None:
        raise MalformedEvent(f"event {f['event_id']}: no transformer for {etype!r}")
    if stamp is None:
        stamp = format_timestamp(f["sample_timestamp"])
    return fn(f, states, stamp)
