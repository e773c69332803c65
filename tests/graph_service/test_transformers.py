"""Per-entity-type transformers: the vertex each event describes and its edges."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from graph_service.entity_graph import (
    ALARM,
    CATEGORY,
    DATASOURCE,
    IS_DELETED,
    IS_PLACEHOLDER,
    RELATIONSHIP,
    RESOURCE,
    SAMPLE_TS,
    TYPE,
    VID,
)
from graph_service.processor import Processor, Status
from graph_service.states import StateNormalizer
from graph_service.transformers import (
    AGGREGATED_SEVERITY,
    AGGREGATED_STATE,
    ATTACHED,
    CONTAINS,
    ON,
    OPERATIONAL_SEVERITY,
    OPERATIONAL_STATE,
    RESOURCE_TYPE,
    RESOURCE_VID,
    VERTEX_NAMESPACE,
    MalformedEvent,
    Ref,
    transform,
    uuid5_vertex_id,
    vertex_id,
)
from rca_common.timestamps import format_timestamp
from tests.graph_service.core_helpers import ev, ts, vid

STATES = StateNormalizer.load()


def expected_vid(category: str, etype: str, eid: str) -> str:
    return str(uuid.uuid5(VERTEX_NAMESPACE, f"{category}:{etype}:{eid}"))


def test_vertex_id_is_str_of_uuid5_for_any_name() -> None:
    # vertex_id computes the uuid5 itself (faster than uuid.uuid5): same strings.
    for eid in ["", "h1", "é-ü", "🙂:x:y", "a" * 300, "12345", "-:-"]:
        for category, etype in [(RESOURCE, "nova.host"), (ALARM, "zabbix")]:
            assert uuid5_vertex_id(category, etype, eid) == expected_vid(category, etype, eid)
            assert uuid.UUID(vertex_id(category, etype, eid)).version == 5


def test_vertex_id_is_memoised_per_category_and_type() -> None:
    first = vertex_id(RESOURCE, "nova.host", "memo-h1")
    assert vertex_id(RESOURCE, "nova.host", "memo-h1") is first  # the memo's object
    # the same datasource id under another category or type is another vertex
    others = {vertex_id(ALARM, "nova.host", "memo-h1"), vertex_id(RESOURCE, "nova.zone", "memo-h1")}
    assert first not in others and len(others) == 2
    assert others == {
        uuid5_vertex_id(ALARM, "nova.host", "memo-h1"),
        uuid5_vertex_id(RESOURCE, "nova.zone", "memo-h1"),
    }


def test_ref_carries_the_vertex_id_it_points_to() -> None:
    ref = Ref("nova.host", "h1", CONTAINS, False)
    assert ref.vid == expected_vid(RESOURCE, "nova.host", "h1")
    assert Ref("zabbix", "a1", ON, True).vid == expected_vid(ALARM, "zabbix", "a1")
    assert ref == Ref("nova.host", "h1", CONTAINS, False) != Ref("nova.host", "h2", CONTAINS, False)
    fields = (ref.vtype, ref.entity_id, ref.label, ref.outgoing)
    assert fields == ("nova.host", "h1", CONTAINS, False)
    with pytest.raises(AttributeError):
        ref.vtype = "nova.zone"  # type: ignore[misc]


def test_transform_with_a_preformatted_stamp_is_the_same() -> None:
    for event in [
        ev("nova.instance", "i1", 3.5, host="h1", state="ACTIVE"),
        ev("zabbix", "a1", 7, name="x", resource_type="nova.host", resource_id="h1"),
    ]:
        plain = transform(event, STATES)
        stamped = transform(event, STATES, format_timestamp(event.sample_timestamp))
        assert list(plain.props.items()) == list(stamped.props.items())
        assert plain == stamped


def test_payload_keys_come_first_and_ours_overwrite_in_place() -> None:
    event = ev("nova.host", "h1", 0, zz="last?", state="up", vitrage_id="forged", name="n")
    keys = list(transform(event, STATES).props)
    assert keys[:4] == ["zz", "state", VID, "name"]  # the payload's order, ours overwritten
    assert transform(event, STATES).props[VID] == vid("nova.host", "h1")


def test_vertex_id_is_deterministic_uuid5() -> None:
    a = vertex_id(RESOURCE, "nova.host", "h1")
    assert a == expected_vid(RESOURCE, "nova.host", "h1")
    assert uuid.UUID(a).version == 5
    assert a == vertex_id(RESOURCE, "nova.host", "h1")
    assert a != vertex_id(RESOURCE, "nova.instance", "h1")  # type is part of the id
    assert a != vertex_id(ALARM, "nova.host", "h1")  # and the category
    assert a != vertex_id(RESOURCE, "nova.host", "h2")
    # Pinned value: the id must not change between releases (snapshots, logs hold it).
    assert a == str(
        uuid.uuid5(uuid.UUID("6f1c1d8e-3c0a-5b7e-9a53-2f4d7c1e8b90"), "RESOURCE:nova.host:h1")
    )


# Per resource type: payload, expected raw->operational state, expected refs.
RESOURCES: list[tuple[str, dict[str, Any], str, list[Ref]]] = [
    ("openstack.cluster", {"state": "available"}, "OK", []),
    (
        "nova.zone",
        {"state": "available", "cluster": "c1"},
        "OK",
        [Ref("openstack.cluster", "c1", CONTAINS, False)],
    ),
    (
        "nova.host",
        {"state": "down", "zone": "z1"},
        "ERROR",
        [Ref("nova.zone", "z1", CONTAINS, False)],
    ),
    (
        "nova.instance",
        {"state": "SHUTOFF", "host": "h1"},
        "SUBOPTIMAL",
        [Ref("nova.host", "h1", CONTAINS, False)],
    ),
    ("neutron.network", {"state": "build"}, "TRANSIENT", []),
    (
        "neutron.port",
        {"state": "ACTIVE", "network_id": "n1", "device_id": "i1"},
        "OK",
        [Ref("neutron.network", "n1", CONTAINS, False), Ref("nova.instance", "i1", ATTACHED, True)],
    ),
    (
        "cinder.volume",
        {"state": "in-use", "attached_to": ["i1", "i2"]},
        "OK",
        [Ref("nova.instance", "i1", ATTACHED, True), Ref("nova.instance", "i2", ATTACHED, True)],
    ),
]


@pytest.mark.parametrize(("etype", "payload", "op_state", "refs"), RESOURCES)
def test_resource_transformer(
    etype: str, payload: dict[str, Any], op_state: str, refs: list[Ref]
) -> None:
    event = ev(etype, "e1", 5, name="the-name", custom={"nested": [1, "x"]}, flag=True, **payload)
    tf = transform(event, STATES)
    assert tf.vid == expected_vid(RESOURCE, etype, "e1")
    p = tf.props
    assert p[VID] == tf.vid
    assert p[CATEGORY] == RESOURCE
    assert p[TYPE] == etype
    assert p["id"] == "e1"
    assert p["name"] == "the-name"
    assert p["state"] == payload["state"]
    assert p[OPERATIONAL_STATE] == op_state
    assert p[SAMPLE_TS] == ts(5)
    assert p[DATASOURCE] == etype
    assert p[IS_DELETED] is False
    assert p[IS_PLACEHOLDER] is False
    assert p["custom"] == {"nested": [1, "x"]}  # unknown payload fields are kept
    assert p["flag"] is True
    for key, value in payload.items():
        assert p[key] == value
    assert tf.refs == refs
    assert tf.deleted is False


def test_resource_name_defaults_to_entity_id_and_datasource_is_the_source() -> None:
    tf = transform(ev("nova.host", "h9", 0, source="nova-compute-collector"), STATES)
    assert tf.props["name"] == "h9"
    assert tf.props[DATASOURCE] == "nova-compute-collector"
    assert tf.props["state"] is None
    assert tf.props[OPERATIONAL_STATE] == "N/A"
    assert tf.refs == []  # a host without zone references nothing


def test_zone_without_cluster_belongs_to_the_default_cluster() -> None:
    tf = transform(ev("nova.zone", "z1", 0), STATES)
    assert tf.refs == [Ref("openstack.cluster", "openstack.cluster", CONTAINS, False)]


def test_volume_attached_to_a_single_string_and_none() -> None:
    assert transform(ev("cinder.volume", "v", 0, attached_to="i1"), STATES).refs == [
        Ref("nova.instance", "i1", ATTACHED, True)
    ]
    assert transform(ev("cinder.volume", "v", 0, attached_to=None), STATES).refs == []
    assert transform(ev("cinder.volume", "v", 0, attached_to=[]), STATES).refs == []
    with pytest.raises(MalformedEvent, match="attached_to must be a list"):
        transform(ev("cinder.volume", "v", 0, attached_to={"i1": True}), STATES)


def test_timestamp_with_offset_is_stored_in_utc() -> None:
    tf = transform(ev("nova.host", "h", "2026-01-01T10:00:00+02:00"), STATES)
    assert tf.props[SAMPLE_TS] == "2026-01-01T08:00:00.000000Z"


@pytest.mark.parametrize(
    ("etype", "severity", "op_sev", "rtype"),
    [
        ("zabbix", "High", "CRITICAL", "nova.host"),
        ("prometheus", "warning", "WARNING", "nova.instance"),
        ("aodh", "moderate", "SEVERE", "neutron.port"),
    ],
)
def test_alarm_transformer(etype: str, severity: str, op_sev: str, rtype: str) -> None:
    event = ev(
        etype,
        "a1",
        7,
        name="Host is unreachable",
        severity=severity,
        resource_type=rtype,
        resource_id="r1",
        status="firing",
        runbook="http://x",
    )
    tf = transform(event, STATES)
    assert tf.vid == expected_vid(ALARM, etype, "a1")
    p = tf.props
    assert p[VID] == tf.vid
    assert p[CATEGORY] == ALARM
    assert p[TYPE] == etype
    assert p["id"] == "a1"
    assert p["name"] == "Host is unreachable"
    assert p["state"] == "Active"
    assert p["severity"] == severity
    assert p[OPERATIONAL_SEVERITY] == op_sev
    assert p[AGGREGATED_SEVERITY] == op_sev
    assert p[RESOURCE_VID] == expected_vid(RESOURCE, rtype, "r1")
    assert p[RESOURCE_TYPE] == rtype
    assert p[SAMPLE_TS] == ts(7)
    assert p[DATASOURCE] == etype
    assert p[IS_DELETED] is False and p[IS_PLACEHOLDER] is False
    assert p["runbook"] == "http://x"
    assert tf.refs == [Ref(rtype, "r1", ON, True)]
    assert tf.deleted is False


def test_alarm_defaults_to_firing_and_resolved_means_deleted() -> None:
    base = {"name": "n", "severity": "high", "resource_type": "nova.host", "resource_id": "h"}
    assert transform(ev("zabbix", "a", 0, **base), STATES).deleted is False
    resolved = transform(ev("zabbix", "a", 0, status="RESOLVED", **base), STATES)
    assert resolved.deleted is True
    assert resolved.props["state"] == "Inactive"
    with pytest.raises(MalformedEvent, match="firing or resolved"):
        transform(ev("zabbix", "a", 0, status="maybe", **base), STATES)


def test_alarm_resource_id_integer_is_an_id() -> None:
    tf = transform(
        ev("zabbix", "a", 0, name="n", resource_type="nova.host", resource_id=17), STATES
    )
    assert tf.refs == [Ref("nova.host", "17", ON, True)]
    assert tf.props[RESOURCE_VID] == vid("nova.host", "17")


def test_alarm_on_an_alarm_links_alarm_vertices() -> None:
    tf = transform(ev("aodh", "d1", 0, name="n", resource_type="zabbix", resource_id="a"), STATES)
    assert tf.props[RESOURCE_VID] == expected_vid(ALARM, "zabbix", "a")
    assert tf.refs[0].vid == expected_vid(ALARM, "zabbix", "a")


def test_vitrage_events_have_no_transformer() -> None:
    """They are evaluator actions, handled by the processor's action path."""
    with pytest.raises(MalformedEvent, match="no transformer for 'vitrage'"):
        transform(
            ev("vitrage", "d1", 0, name="n", resource_type="nova.host", resource_id="h"), STATES
        )


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev("nova.hypervisor", "x", 0), "no transformer for 'nova.hypervisor'"),
        (ev("nova.host", "", 0), "entity_id is required"),
        (ev("zabbix", "a", 0, name="n", resource_type="nova.host"), "payload.resource_id missing"),
        (ev("zabbix", "a", 0, name="n", resource_id="h"), "payload.resource_type missing"),
        (ev("zabbix", "a", 0, resource_type="nova.host", resource_id="h"), "payload.name missing"),
        (ev("aodh", "a", 0, name="n", resource_type="x", resource_id=""), "resource_id missing"),
        (ev("aodh", "a", 0, name="n", resource_type=["x"], resource_id="h"), "resource_type"),
        (ev("aodh", "a", 0, name="n", resource_type="x", resource_id=[1]), "resource_id"),
        (ev("nova.host", "h", 0, zone=["z1"]), "payload.zone"),
        (ev("nova.instance", "i", 0, host={"id": "h"}), "payload.host"),
        (ev("nova.zone", "z", 0, cluster=["c"]), "payload.cluster"),
        (ev("neutron.port", "p", 0, network_id=["n"]), "payload.network_id"),
        (ev("neutron.port", "p", 0, device_id=1.5), "payload.device_id"),
        (ev("cinder.volume", "v", 0, attached_to=["i1", None]), "payload.attached_to"),
        (ev("cinder.volume", "v", 0, attached_to=[{"id": "i1"}]), "payload.attached_to"),
        (ev("nova.instance", "i", 0, host=True), "payload.host"),
    ],
)
def test_malformed_events(event: Any, reason: str) -> None:
    with pytest.raises(MalformedEvent) as err:
        transform(event, STATES)
    assert reason in err.value.reason
    assert event.event_id in err.value.reason


# ------------------------------------------------------- edges in the graph
EDGES: list[tuple[str, dict[str, Any], list[tuple[str, str, str, str, str]]]] = [
    # (type, payload, [(src type, src id, dst type, dst id, label)])
    ("nova.zone", {"cluster": "c1"}, [("openstack.cluster", "c1", "nova.zone", "e", CONTAINS)]),
    ("nova.host", {"zone": "z1"}, [("nova.zone", "z1", "nova.host", "e", CONTAINS)]),
    ("nova.instance", {"host": "h1"}, [("nova.host", "h1", "nova.instance", "e", CONTAINS)]),
    (
        "neutron.port",
        {"network_id": "n1", "device_id": "i1"},
        [
            ("neutron.network", "n1", "neutron.port", "e", CONTAINS),
            ("neutron.port", "e", "nova.instance", "i1", ATTACHED),
        ],
    ),
    (
        "cinder.volume",
        {"attached_to": ["i1", "i2"]},
        [
            ("cinder.volume", "e", "nova.instance", "i1", ATTACHED),
            ("cinder.volume", "e", "nova.instance", "i2", ATTACHED),
        ],
    ),
    (
        "zabbix",
        {"name": "n", "severity": "high", "resource_type": "nova.host", "resource_id": "h1"},
        [("zabbix", "e", "nova.host", "h1", ON)],
    ),
    (
        "prometheus",
        {"name": "n", "severity": "page", "resource_type": "nova.instance", "resource_id": "i1"},
        [("prometheus", "e", "nova.instance", "i1", ON)],
    ),
    (
        "aodh",
        {"name": "n", "severity": "low", "resource_type": "neutron.port", "resource_id": "p1"},
        [("aodh", "e", "neutron.port", "p1", ON)],
    ),
]


@pytest.mark.parametrize(("etype", "payload", "edges"), EDGES)
def test_edges_direction_and_label(
    etype: str, payload: dict[str, Any], edges: list[tuple[str, str, str, str, str]]
) -> None:
    p = Processor()
    out = p.process(ev(etype, "e", 3, **payload))
    assert out.status is Status.APPLIED
    assert p.graph.edge_count == len(edges)
    for st, si, dt, di, label in edges:
        src, dst = vid(st, si), vid(dt, di)
        attrs = p.graph.edge(src, dst, label)
        assert attrs == {RELATIONSHIP: label, IS_DELETED: False}, (st, si, dt, di)
        assert p.graph.edge(dst, src, label) is None  # the direction matters
    # Every neighbour was unknown: it is a placeholder carrying the event's time.
    me = vid(etype, "e")
    for st, si, dt, di, _ in edges:
        other_type, other_id = (dt, di) if vid(st, si) == me else (st, si)
        other = p.graph.vertex(vid(other_type, other_id))
        assert other is not None
        assert other[IS_PLACEHOLDER] is True
        assert other[TYPE] == other_type
        assert other["id"] == other_id
        assert other[IS_DELETED] is False
        assert other[SAMPLE_TS] == ts(3)
        assert DATASOURCE not in other
        assert other[CATEGORY] == (ALARM if other_type == "zabbix" else RESOURCE)


@pytest.mark.parametrize(("etype", "payload", "op_state", "refs"), RESOURCES)
def test_vertex_in_graph_has_aggregated_state(
    etype: str, payload: dict[str, Any], op_state: str, refs: list[Ref]
) -> None:
    p = Processor()
    p.process(ev(etype, "e1", 0, **payload))
    v = p.graph.vertex(vid(etype, "e1"))
    assert v is not None
    assert v[OPERATIONAL_STATE] == op_state
    assert v[AGGREGATED_STATE] == op_state
    assert len(p.graph) == 1 + len(refs)
