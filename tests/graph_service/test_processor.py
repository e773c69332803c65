"""The processor: placeholders, staleness, moves, deletes, consistency, purge,
duplicates and malformed events, each checked against the graph it leaves."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from graph_service.entity_graph import (
    CATEGORY,
    DATASOURCE,
    IS_DELETED,
    IS_PLACEHOLDER,
    RELATIONSHIP,
    SAMPLE_TS,
    TYPE,
    EntityGraph,
)
from graph_service.processor import Outcome, Processor, RecentIds, Status, _Emitter
from graph_service.transformers import ATTACHED, CONTAINS, ON, MalformedEvent
from rca_common.events import Event
from tests.graph_service.core_helpers import (
    at,
    bookkeeping,
    end_snapshot,
    ev,
    graph_bytes,
    ts,
    vid,
)

H1, H2, H3, H4 = (vid("nova.host", h) for h in ("h1", "h2", "h3", "h4"))
I1, I2, I3 = (vid("nova.instance", i) for i in ("i1", "i2", "i3"))
Z1 = vid("nova.zone", "z1")


def applied(p: Processor, event: Event) -> Outcome:
    out = p.process(event)
    assert out.status is Status.APPLIED, out
    return out


def vertex(p: Processor, v: str) -> dict[str, Any]:
    attrs = p.graph.vertex(v)
    assert attrs is not None, v
    return attrs


def edge_keys(p: Processor) -> set[tuple[str, str, str]]:
    return {(s, d, k) for s, d, k, _ in p.graph.edges()}


def live_edges(p: Processor) -> set[tuple[str, str, str]]:
    return {(s, d, k) for s, d, k, a in p.graph.edges() if not a.get(IS_DELETED)}


def rebuilt(p: Processor, outcomes: list[Outcome]) -> bytes:
    """The graph rebuilt from the outcomes' changes alone (through JSON, like the log)."""
    g = EntityGraph()
    for out in outcomes:
        g.apply(orjson.loads(orjson.dumps(out.changes)))
    return pickle.dumps(g, protocol=5)


# ---------------------------------------------------------------- upserts
def test_new_vertex_and_update_diff() -> None:
    p = Processor()
    first = applied(p, ev("nova.host", "h1", 0, zone="z1", state="UP", rack="r1", cpu=8))
    assert [c[0] for c in first.changes] == ["v", "v", "e"]  # host, zone placeholder, edge
    assert first.changes[0][1] == H1
    second = applied(p, ev("nova.host", "h1", 10, zone="z1", state="DOWN", cpu=8))
    # Only what changed is set; what the payload no longer has is unset.
    [change] = second.changes
    assert change[0] == "v" and change[1] == H1
    assert change[2] == {
        "state": "DOWN",
        SAMPLE_TS: ts(10),
        "vitrage_operational_state": "ERROR",
        "vitrage_aggregated_state": "ERROR",
    }
    assert change[3] == ["rack"]
    v = vertex(p, H1)
    assert "rack" not in v and v["cpu"] == 8 and v["state"] == "DOWN"
    # Same time and same content: accepted, nothing to change.
    third = applied(p, ev("nova.host", "h1", 10, zone="z1", state="DOWN", cpu=8))
    assert third.changes == []
    assert rebuilt(p, [first, second, third]) == graph_bytes(p)


def test_an_update_keeps_our_properties_over_the_payloads_and_unsets_what_it_dropped() -> None:
    """A payload may name a property the transformer sets (here the aggregated state):
    ours wins, on creation and on every update, and a key the payload drops is unset."""
    p = Processor()
    applied(p, ev("nova.host", "h1", 0, state="UP", rack="r1", vitrage_aggregated_state="BAD"))
    assert vertex(p, H1)["vitrage_aggregated_state"] == "OK"
    out = applied(p, ev("nova.host", "h1", 10, state="UP", vitrage_aggregated_state="BAD"))
    [change] = out.changes
    assert change[2] == {SAMPLE_TS: ts(10)} and change[3] == ["rack"]
    v = vertex(p, H1)
    assert "rack" not in v and v["vitrage_aggregated_state"] == "OK"


def test_a_change_of_json_type_is_a_change() -> None:
    """1, 1.0 and True are equal in Python; as property values they differ."""
    p = Processor()
    applied(p, ev("nova.host", "h1", 0, flag=1, ratio=2, tags=[1]))
    out = applied(p, ev("nova.host", "h1", 0, flag=True, ratio=2.0, tags=[True]))
    assert out.changes[0][2] == {"flag": True, "ratio": 2.0, "tags": [True]}
    v = vertex(p, H1)
    assert v["flag"] is True and type(v["ratio"]) is float and v["tags"][0] is True


# ------------------------------------------------------------ placeholders
def test_placeholder_created_then_filled() -> None:
    p = Processor()
    applied(p, ev("nova.instance", "i1", 100, host="h1", state="ACTIVE"))
    ph = vertex(p, H1)
    assert ph[IS_PLACEHOLDER] is True
    assert ph[TYPE] == "nova.host" and ph["id"] == "h1" and ph[CATEGORY] == "RESOURCE"
    assert ph[SAMPLE_TS] == ts(100)
    assert DATASOURCE not in ph

    # The real host arrives with an OLDER timestamp than the placeholder's: still applied.
    out = applied(p, ev("nova.host", "h1", 50, zone="z1", state="UP", model="x1"))
    real = vertex(p, H1)
    assert real[IS_PLACEHOLDER] is False
    assert real[DATASOURCE] == "nova.host"
    assert real[SAMPLE_TS] == ts(50)
    assert real["model"] == "x1" and real["state"] == "UP"
    assert real["vitrage_aggregated_state"] == "OK"
    assert out.changes[0][2][IS_PLACEHOLDER] is False
    # The edge made for the placeholder is still there.
    assert p.graph.edge(H1, I1, CONTAINS) is not None
    assert p.graph.edge(Z1, H1, CONTAINS) is not None


def test_later_reference_does_not_overwrite_real_data() -> None:
    p = Processor()
    applied(p, ev("nova.host", "h1", 10, zone="z1", state="UP", model="x1"))
    before = dict(vertex(p, H1))
    out = applied(p, ev("nova.instance", "i1", 500, host="h1"))
    assert vertex(p, H1) == before
    assert not [c for c in out.changes if c[0] == "v" and c[1] == H1]
    # The host's own (older than the instance) update still applies: no placeholder time.
    applied(p, ev("nova.host", "h1", 20, zone="z1", state="DOWN", model="x1"))
    assert vertex(p, H1)["state"] == "DOWN"


def test_placeholder_never_makes_a_real_event_stale_even_on_delete() -> None:
    p = Processor()
    applied(p, ev("nova.instance", "i1", 100, host="h1"))
    out = applied(p, ev("nova.host", "h1", 1, action="delete"))
    assert vertex(p, H1)[IS_DELETED] is True
    assert out.changes[0] == ["v", H1, {IS_DELETED: True, SAMPLE_TS: ts(1)}, []]


def test_reference_to_a_placeholder_twice_makes_one_placeholder() -> None:
    p = Processor()
    applied(p, ev("nova.instance", "i1", 0, host="h1"))
    out = applied(p, ev("nova.instance", "i2", 5, host="h1"))
    assert [c[0] for c in out.changes] == ["v", "e"]
    assert vertex(p, H1)[SAMPLE_TS] == ts(0)  # the placeholder is not re-stamped
    assert len(p.graph) == 3


# ------------------------------------------------------------------- stale
def test_older_event_is_stale_and_changes_nothing() -> None:
    p = Processor()
    applied(p, ev("nova.instance", "i1", 100, host="h1", state="ACTIVE"))
    before = graph_bytes(p)
    out = p.process(ev("nova.instance", "i1", 99, host="h2", state="ERROR"))
    assert out.status is Status.STALE
    assert out.changes == []
    assert out.logged  # accepted and sequenced, just without changes
    assert graph_bytes(p) == before
    assert H2 not in p.graph
    # A stale delete is ignored too.
    out = p.process(ev("nova.instance", "i1", 50, action="delete"))
    assert out.status is Status.STALE and vertex(p, I1)[IS_DELETED] is False
    # The same timestamp is not older.
    assert applied(p, ev("nova.instance", "i1", 100, host="h1", state="PAUSED")).changes


@pytest.mark.parametrize(
    ("stored", "incoming", "status"),
    [
        # +02:00 10:00 is 08:00Z: older than 09:00Z although it sorts later as a string.
        ("2026-01-01T09:00:00Z", "2026-01-01T10:00:00+02:00", Status.STALE),
        ("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z", Status.APPLIED),
        # -05:00 04:00 is 09:00Z: newer than 08:30Z although it sorts earlier.
        ("2026-01-01T08:30:00Z", "2026-01-01T04:00:00-05:00", Status.APPLIED),
        ("2026-01-01T09:00:00.000001Z", "2026-01-01T11:00:00+02:00", Status.STALE),
        ("2026-01-01T09:00:00Z", "2026-01-01T11:00:00.000001+02:00", Status.APPLIED),
    ],
)
def test_staleness_compares_instants_not_strings(
    stored: str, incoming: str, status: Status
) -> None:
    p = Processor()
    applied(p, ev("nova.host", "h1", stored, state="UP"))
    out = p.process(ev("nova.host", "h1", incoming, state="DOWN"))
    assert out.status is status
    assert vertex(p, H1)["state"] == ("DOWN" if status is Status.APPLIED else "UP")


def test_stored_timestamp_is_normalised_to_utc() -> None:
    p = Processor()
    applied(p, ev("nova.host", "h1", "2026-01-01T10:00:00+02:00"))
    assert vertex(p, H1)[SAMPLE_TS] == "2026-01-01T08:00:00.000000Z"


# ------------------------------------------------------------------- moves
def test_instance_moves_to_another_host() -> None:
    p = Processor()
    applied(p, ev("nova.host", "h1", 0))
    applied(p, ev("nova.host", "h2", 0))
    applied(p, ev("nova.instance", "i1", 1, host="h1"))
    assert edge_keys(p) == {(H1, I1, CONTAINS)}
    out = applied(p, ev("nova.instance", "i1", 2, host="h2"))
    assert ["E", H1, I1, CONTAINS] in out.changes
    assert edge_keys(p) == {(H2, I1, CONTAINS)}
    assert H1 in p.graph and not vertex(p, H1)[IS_DELETED]  # the old host stays
    # Leaving the host field out removes the relationship.
    applied(p, ev("nova.instance", "i1", 3))
    assert edge_keys(p) == set()


def test_move_keeps_edges_of_other_kinds() -> None:
    p = Processor()
    applied(p, ev("nova.instance", "i1", 0, host="h1"))
    applied(p, ev("neutron.port", "p1", 0, network_id="n1", device_id="i1"))
    applied(p, ev("cinder.volume", "v1", 0, attached_to=["i1"]))
    applied(p, ev("zabbix", "a1", 0, name="x", resource_type="nova.instance", resource_id="i1"))
    applied(p, ev("nova.instance", "i1", 1, host="h2"))
    P1, V1, N1 = vid("neutron.port", "p1"), vid("cinder.volume", "v1"), vid("neutron.network", "n1")
    A1 = vid("zabbix", "a1")
    assert edge_keys(p) == {
        (H2, I1, CONTAINS),
        (N1, P1, CONTAINS),
        (P1, I1, ATTACHED),
        (V1, I1, ATTACHED),
        (A1, I1, ON),
    }


def test_volume_attach_and_detach_lists() -> None:
    p = Processor()
    V1 = vid("cinder.volume", "v1")
    applied(p, ev("cinder.volume", "v1", 0, attached_to=["i1", "i2"]))
    assert edge_keys(p) == {(V1, I1, ATTACHED), (V1, I2, ATTACHED)}
    out = applied(p, ev("cinder.volume", "v1", 1, attached_to=["i2", "i3"]))
    assert ["E", V1, I1, ATTACHED] in out.changes
    assert edge_keys(p) == {(V1, I2, ATTACHED), (V1, I3, ATTACHED)}
    applied(p, ev("cinder.volume", "v1", 2, attached_to=[]))
    assert edge_keys(p) == set()
    applied(p, ev("cinder.volume", "v1", 3, attached_to="i1"))
    assert edge_keys(p) == {(V1, I1, ATTACHED)}
    assert {I1, I2, I3} <= {v for v, _ in p.graph.vertices()}  # instances are not touched


def test_port_detach_keeps_network_and_host_moves_zone() -> None:
    p = Processor()
    P1, N1 = vid("neutron.port", "p1"), vid("neutron.network", "n1")
    applied(p, ev("neutron.port", "p1", 0, network_id="n1", device_id="i1"))
    applied(p, ev("neutron.port", "p1", 1, network_id="n1"))
    assert edge_keys(p) == {(N1, P1, CONTAINS)}
    applied(p, ev("nova.host", "h1", 0, zone="z1"))
    applied(p, ev("nova.host", "h1", 1, zone="z2"))
    assert (Z1, H1, CONTAINS) not in edge_keys(p)
    assert (vid("nova.zone", "z2"), H1, CONTAINS) in edge_keys(p)


def test_alarm_moves_to_another_resource() -> None:
    p = Processor()
    A1 = vid("prometheus", "a1")
    applied(p, ev("prometheus", "a1", 0, name="x", resource_type="nova.host", resource_id="h1"))
    out = applied(
        p, ev("prometheus", "a1", 1, name="x", resource_type="nova.instance", resource_id="i1")
    )
    assert ["E", A1, H1, ON] in out.changes
    assert edge_keys(p) == {(A1, I1, ON)}
    assert vertex(p, A1)["vitrage_resource_id"] == I1
    # Another alarm's edges, and edges of other labels, are not the alarm's to remove.
    A2 = vid("prometheus", "a2")
    applied(p, ev("prometheus", "a2", 2, name="y", resource_type="nova.host", resource_id="h1"))
    p.graph.apply([["e", A1, A2, "causes", {"relationship_type": "causes"}, []]])
    applied(p, ev("prometheus", "a1", 3, name="x", resource_type="nova.host", resource_id="h1"))
    assert edge_keys(p) == {(A1, H1, ON), (A2, H1, ON), (A1, A2, "causes")}


# ----------------------------------------------------------------- deletes
def build_instance_neighbourhood(p: Processor) -> None:
    applied(p, ev("nova.host", "h1", 0, zone="z1"))
    applied(p, ev("nova.instance", "i1", 0, host="h1"))
    applied(p, ev("neutron.port", "p1", 0, network_id="n1", device_id="i1"))
    applied(p, ev("cinder.volume", "v1", 0, attached_to=["i1"]))
    applied(
        p,
        ev(
            "aodh",
            "a1",
            0,
            name="x",
            severity="low",
            resource_type="nova.instance",
            resource_id="i1",
        ),
    )


def test_delete_marks_vertex_and_its_edges() -> None:
    p = Processor()
    build_instance_neighbourhood(p)
    out = applied(p, ev("nova.instance", "i1", 30, action="delete"))
    v = vertex(p, I1)
    assert v[IS_DELETED] is True
    assert v[SAMPLE_TS] == ts(30)
    touching = {(s, d, k) for s, d, k in edge_keys(p) if I1 in (s, d)}
    assert len(touching) == 4
    for s, d, k, attrs in p.graph.edges():
        assert attrs[IS_DELETED] is (I1 in (s, d)), (s, d, k)
        assert attrs[RELATIONSHIP] == k
    # Neighbours themselves are not deleted.
    deleted = {x for x, a in p.graph.vertices() if a.get(IS_DELETED)}
    assert deleted == {I1}
    assert [c[0] for c in out.changes] == ["v", "e", "e", "e", "e"]
    # Deleting again, or deleting something unknown, changes nothing.
    assert applied(p, ev("nova.instance", "i1", 31, action="delete")).changes == []
    assert applied(p, ev("nova.instance", "nope", 31, action="delete")).changes == []
    assert "nope" not in {a["id"] for _, a in p.graph.vertices()}


def test_recreate_after_delete() -> None:
    p = Processor()
    build_instance_neighbourhood(p)
    applied(p, ev("nova.instance", "i1", 30, action="delete"))
    applied(p, ev("nova.instance", "i1", 40, host="h1", state="ACTIVE"))
    assert vertex(p, I1)[IS_DELETED] is False
    assert p.graph.edge(H1, I1, CONTAINS)[IS_DELETED] is False  # type: ignore[index]
    # Edges this event does not describe stay deleted until their owner says otherwise.
    P1 = vid("neutron.port", "p1")
    assert p.graph.edge(P1, I1, ATTACHED)[IS_DELETED] is True  # type: ignore[index]
    applied(p, ev("neutron.port", "p1", 41, network_id="n1", device_id="i1"))
    assert p.graph.edge(P1, I1, ATTACHED)[IS_DELETED] is False  # type: ignore[index]
    assert p.graph.deleted_before(at(10**9)) == []


def test_alarm_resolve_deletes_alarm_and_refire_restores_it() -> None:
    p = Processor()
    A1 = vid("zabbix", "a1")
    alarm = {"name": "down", "severity": "high", "resource_type": "nova.host", "resource_id": "h1"}
    applied(p, ev("zabbix", "a1", 0, status="firing", **alarm))
    assert p.graph.edge(A1, H1, ON)[IS_DELETED] is False  # type: ignore[index]
    applied(p, ev("zabbix", "a1", 5, status="resolved", **alarm))
    assert vertex(p, A1)[IS_DELETED] is True
    assert vertex(p, A1)[SAMPLE_TS] == ts(5)
    assert p.graph.edge(A1, H1, ON)[IS_DELETED] is True  # type: ignore[index]
    assert vertex(p, H1)[IS_DELETED] is False
    applied(p, ev("zabbix", "a1", 9, status="firing", **alarm))
    assert vertex(p, A1)[IS_DELETED] is False
    assert vertex(p, A1)["state"] == "Active"
    assert p.graph.edge(A1, H1, ON)[IS_DELETED] is False  # type: ignore[index]
    # Resolving an alarm never seen creates nothing.
    out = applied(p, ev("zabbix", "a2", 10, status="resolved", **alarm))
    assert out.changes == [] and vid("zabbix", "a2") not in p.graph


# ------------------------------------------------------------- consistency
def consistency_fixture() -> Processor:
    p = Processor()
    for h in ("h1", "h2", "h3"):
        applied(p, ev("nova.host", h, 0, zone="z1"))
    applied(p, ev("nova.instance", "i1", 0, host="h4"))  # h4: a placeholder
    applied(p, ev("nova.zone", "z1", 0))  # another source
    applied(p, ev("zabbix", "a1", 0, name="x", resource_type="nova.host", resource_id="h3"))
    return p


def test_end_snapshot_deletes_what_the_round_did_not_see() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h1", 10, "init_snapshot", zone="z1"))
    applied(p, ev("nova.host", "h2", 11, "snapshot", zone="z1"))
    out = applied(p, end_snapshot("nova.host", 12))
    assert vertex(p, H3)[IS_DELETED] is True
    assert vertex(p, H3)[SAMPLE_TS] == ts(12)
    for x in (H1, H2, H4, Z1, I1, vid("zabbix", "a1")):
        assert vertex(p, x)[IS_DELETED] is False, x
    assert vertex(p, H4)[IS_PLACEHOLDER] is True
    # h3's edges (zone -> h3, alarm -> h3) are deleted with it.
    assert p.graph.edge(Z1, H3, CONTAINS)[IS_DELETED] is True  # type: ignore[index]
    assert p.graph.edge(vid("zabbix", "a1"), H3, ON)[IS_DELETED] is True  # type: ignore[index]
    assert out.changes[0] == ["v", H3, {IS_DELETED: True, SAMPLE_TS: ts(12)}, []]
    assert p._round == {}  # the round is closed


def test_update_during_the_round_counts_as_seen() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h1", 10, "init_snapshot", zone="z1"))
    applied(p, ev("nova.host", "h3", 11, "update", zone="z1"))  # live update mid-round
    applied(p, end_snapshot("nova.host", 12))
    assert vertex(p, H3)[IS_DELETED] is False
    assert vertex(p, H2)[IS_DELETED] is True
    assert vertex(p, H1)[IS_DELETED] is False


def test_update_before_the_round_does_not_count() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h2", 5, zone="z1"))  # before the round began
    applied(p, ev("nova.host", "h1", 10, "snapshot", zone="z1"))
    applied(p, end_snapshot("nova.host", 12))
    assert vertex(p, H2)[IS_DELETED] is True
    assert vertex(p, H3)[IS_DELETED] is True


def test_stale_snapshot_event_counts_as_seen() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h2", 50, zone="z1"))
    assert p.process(ev("nova.host", "h2", 10, "snapshot", zone="z1")).status is Status.STALE
    applied(p, ev("nova.host", "h1", 10, "snapshot", zone="z1"))
    applied(p, end_snapshot("nova.host", 12))
    assert vertex(p, H2)[IS_DELETED] is False
    assert vertex(p, H3)[IS_DELETED] is True


def test_rounds_are_per_source() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h1", 10, "init_snapshot", zone="z1"))
    applied(p, ev("nova.zone", "z1", 10, "init_snapshot"))
    applied(p, end_snapshot("nova.zone", 11))  # closes only the zone round
    assert vertex(p, H2)[IS_DELETED] is False and vertex(p, Z1)[IS_DELETED] is False
    assert list(p._round) == ["nova.host"]
    applied(p, ev("nova.host", "h2", 12, "snapshot", zone="z1"))
    applied(p, end_snapshot("nova.host", 13))
    assert [vertex(p, h)[IS_DELETED] for h in (H1, H2, H3)] == [False, False, True]
    assert vertex(p, vid("zabbix", "a1"))[IS_DELETED] is False  # zabbix had no round


def test_alarms_missing_from_their_snapshot_are_deleted() -> None:
    p = consistency_fixture()
    applied(
        p,
        ev(
            "zabbix",
            "a2",
            10,
            "init_snapshot",
            name="y",
            resource_type="nova.host",
            resource_id="h1",
        ),
    )
    applied(p, end_snapshot("zabbix", 11))
    assert vertex(p, vid("zabbix", "a1"))[IS_DELETED] is True
    assert vertex(p, vid("zabbix", "a2"))[IS_DELETED] is False


def test_each_round_starts_afresh() -> None:
    p = consistency_fixture()
    applied(p, ev("nova.host", "h1", 10, "snapshot", zone="z1"))
    applied(p, ev("nova.host", "h2", 10, "snapshot", zone="z1"))
    applied(p, ev("nova.host", "h3", 10, "snapshot", zone="z1"))
    applied(p, end_snapshot("nova.host", 11))
    assert not any(vertex(p, h)[IS_DELETED] for h in (H1, H2, H3))
    applied(p, ev("nova.host", "h1", 20, "snapshot", zone="z1"))
    applied(p, end_snapshot("nova.host", 21))
    assert [vertex(p, h)[IS_DELETED] for h in (H1, H2, H3)] == [False, True, True]
    # Already deleted vertices are not deleted again (their time stays).
    applied(p, end_snapshot("nova.host", 30))
    assert vertex(p, H2)[SAMPLE_TS] == ts(21)
    assert vertex(p, H1)[SAMPLE_TS] == ts(30)


def test_end_snapshot_of_an_empty_get_all_deletes_the_whole_source() -> None:
    p = consistency_fixture()
    applied(p, end_snapshot("nova.host", 12))
    assert all(vertex(p, h)[IS_DELETED] for h in (H1, H2, H3))
    assert not vertex(p, H4)[IS_DELETED] and not vertex(p, Z1)[IS_DELETED]


# ------------------------------------------------------------------- purge
# Times in 2001: were the wall clock used anywhere, everything would purge at once.
OLD = datetime(2001, 1, 1, tzinfo=UTC)


def old(seconds: float) -> datetime:
    return OLD + timedelta(seconds=seconds)


def test_purge_after_min_time_to_delete_of_event_time() -> None:
    p = Processor(min_time_to_delete=60)
    applied(p, ev("nova.host", "h1", old(0)))
    applied(p, ev("nova.instance", "i1", old(0), host="h1"))
    applied(p, ev("nova.instance", "i1", old(100), action="delete"))
    out = applied(p, ev("nova.host", "h1", old(160)))  # clock == deletion + 60: not yet
    assert I1 in p.graph and not [c for c in out.changes if c[0] == "V"]
    out = applied(p, ev("nova.host", "h1", old(160.000001)))
    assert ["V", I1] in out.changes
    assert I1 not in p.graph
    assert p.graph.edge_count == 0
    assert p.graph.deleted_before(old(10**6)) == []
    # A later reference re-creates it as a placeholder.
    applied(p, ev("cinder.volume", "v1", old(200), attached_to=["i1"]))
    assert vertex(p, I1)[IS_PLACEHOLDER] is True


def test_purge_is_driven_by_the_largest_time_seen() -> None:
    p = Processor(min_time_to_delete=60)
    applied(p, ev("nova.host", "h1", old(0)))
    applied(p, ev("nova.host", "h1", old(10), action="delete"))
    applied(p, ev("nova.zone", "z9", old(1000)))  # the clock jumps
    assert H1 not in p.graph
    p2 = Processor(min_time_to_delete=60)
    applied(p2, ev("nova.zone", "z9", old(1000)))
    applied(p2, ev("nova.host", "h1", old(0)))
    out = applied(p2, ev("nova.host", "h1", old(10), action="delete"))
    # Deleted and purged in the same event: the clock is already far ahead.
    assert [c[0] for c in out.changes] == ["v", "V"]
    assert H1 not in p2.graph


def test_out_of_order_deletion_is_purged_on_its_own_time() -> None:
    """Sources' clocks differ: a deletion stamped earlier than one already queued must
    not wait for that one to expire."""
    p = Processor(min_time_to_delete=60)
    applied(p, ev("nova.host", "h1", old(0)))
    applied(p, ev("nova.host", "h2", old(0)))
    applied(p, ev("nova.host", "h1", old(100), action="delete"))
    applied(p, ev("nova.host", "h2", old(50), action="delete"))  # earlier, queued later
    assert H2 in p.graph  # clock 100: cutoff 40 < 50
    out = applied(p, ev("nova.zone", "z1", old(111)))  # cutoff 51 > 50, < 100
    assert ["V", H2] in out.changes and H2 not in p.graph
    assert H1 in p.graph and ["V", H1] not in out.changes
    applied(p, ev("nova.zone", "z1", old(161)))
    assert H1 not in p.graph


def test_clock_is_the_largest_time_seen_and_never_goes_back() -> None:
    p = Processor()
    assert p.clock is None
    applied(p, ev("nova.host", "h1", 100))
    assert p.process(ev("nova.host", "h1", 50)).status is Status.STALE
    assert p.clock == at(100)
    applied(p, ev("nova.host", "h2", 70))
    assert p.clock == at(100)
    applied(p, ev("nova.host", "h2", at(200).astimezone(timezone(timedelta(hours=5)))))
    assert p.clock == at(200)
    applied(p, end_snapshot("nova.zone", 300))
    assert p.clock == at(300)


# --------------------------------------------------------------- duplicates
def test_duplicate_event_id_changes_nothing() -> None:
    p = Processor()
    first = ev("nova.instance", "i1", 0, host="h1", event_id="dup-1")
    applied(p, first)
    state = (graph_bytes(p), bookkeeping(p))
    again = p.process(first)
    assert again.status is Status.DUPLICATE
    assert again.changes == [] and not again.logged
    # Same id, different content and a later time (a broken redelivery): still a duplicate.
    other = ev("nova.instance", "i1", 999, host="h2", event_id="dup-1")
    assert p.process(other).status is Status.DUPLICATE
    assert (graph_bytes(p), bookkeeping(p)) == state
    # A duplicate end_snapshot does not run consistency again.
    applied(p, ev("nova.instance", "i1", 1, "snapshot", host="h1"))
    applied(p, end_snapshot("nova.instance", 2, event_id="end-1"))
    applied(p, ev("nova.instance", "i2", 3, host="h1"))
    assert p.process(end_snapshot("nova.instance", 4, event_id="end-1")).status is Status.DUPLICATE
    assert vertex(p, I2)[IS_DELETED] is False


def test_stale_events_are_remembered_for_dedup() -> None:
    p = Processor()
    applied(p, ev("nova.host", "h1", 10))
    stale = ev("nova.host", "h1", 5, event_id="s1")
    assert p.process(stale).status is Status.STALE
    assert p.process(stale).status is Status.DUPLICATE


def test_recent_ids_have_a_capacity() -> None:
    p = Processor(recent_capacity=3)
    events = [ev("nova.host", f"h{i}", i, event_id=f"id-{i}") for i in range(5)]
    for e in events:
        applied(p, e)
    assert list(p.recent._order) == ["id-2", "id-3", "id-4"]
    assert len(p.recent) == 3
    assert "id-1" not in p.recent and "id-4" in p.recent
    assert p.process(events[4]).status is Status.DUPLICATE
    # Forgotten ids are processed again (the capacity bounds the dedup window).
    assert p.process(events[0]).status is Status.APPLIED


# ---------------------------------------------------------------- malformed
@pytest.mark.parametrize(
    "bad",
    [
        ev("nova.hypervisor", "x", 500),
        ev("nova.host", "", 500),
        ev("zabbix", "a9", 500, name="n", severity="high", resource_type="nova.host"),
        ev("zabbix", "a9", 500, name="n", resource_type="nova.host", resource_id="h1", status="?"),
        ev("nova.instance", "i1", 500, host=["h1", "h2"]),
        ev("cinder.volume", "v9", 500, attached_to=[["i1"]]),
        ev("neutron.port", "p9", 500, network_id={"id": "n"}, source="nova.host"),
        ev("nova.host", "h1", 500, "snapshot", zone=["z"]),
        ev("nova.host", "h1", 500, "delete", zone=["z"]),
    ],
)
def test_malformed_event_changes_no_state(bad: Event) -> None:
    p = Processor(min_time_to_delete=10)
    applied(p, ev("nova.host", "h1", 0, zone="z1"))
    applied(p, ev("nova.instance", "i1", 0, host="h1"))
    applied(p, ev("nova.instance", "i2", 0, host="h1"))
    applied(p, ev("nova.instance", "i2", 1, action="delete"))  # purgeable once clock > 11
    applied(p, ev("nova.host", "h2", 2, "init_snapshot"))  # an open round
    before = (graph_bytes(p), bookkeeping(p))
    with pytest.raises(MalformedEvent):
        p.process(bad)
    assert (graph_bytes(p), bookkeeping(p)) == before
    assert bad.event_id not in p.recent
    assert p.clock == at(2)
    # The same event id can still be used by a corrected event.
    fixed = Event(
        **{**bad.model_dump(), "entity_type": "nova.host", "entity_id": "h1", "payload": {}}
    )
    assert p.process(fixed).status is Status.APPLIED


@pytest.mark.parametrize(
    ("capacity", "ids"),
    [
        (5, ["a", "b", "c"]),
        (2, ["a", "b", "c", "d"]),
        (0, ["a"]),
        (3, ["a", "b", "a", "c", "d"]),  # not distinct: restored exactly anyway
    ],
)
def test_recent_ids_restore_in_bulk_equals_adding_one_by_one(capacity: int, ids: list[str]) -> None:
    one_by_one = RecentIds(capacity)
    for event_id in ids:
        one_by_one.add(event_id)
    bulk = RecentIds.restore(capacity, ids)
    assert list(bulk._order) == list(one_by_one._order)
    assert list(bulk._ids) == list(one_by_one._ids)
    bulk.add("z")
    one_by_one.add("z")
    assert list(bulk._order) == list(one_by_one._order)


def test_delete_marks_edges_in_networkx_order_self_loop_included() -> None:
    """_mark_deleted walks the adjacency dicts itself: out-edges then in-edges, in the
    order networkx lists them (a self-loop, which an alarm on itself makes, twice)."""
    p = Processor()
    applied(p, ev("nova.host", "h1", 0, zone="z1", state="UP"))
    for i in range(3):
        applied(p, ev("nova.instance", f"i{i}", 1, host="h1"))
    applied(p, ev("zabbix", "a1", 2, name="n", resource_type="nova.host", resource_id="h1"))
    a1 = vid("zabbix", "a1")
    applied(p, ev("zabbix", "a2", 3, name="n", resource_type="zabbix", resource_id="a2"))
    a2 = vid("zabbix", "a2")
    for target in (H1, a2):
        g = p.graph
        expected = [(s, d, k) for s, d, k, _ in (*g.out_edges(target), *g.in_edges(target))]
        assert len(expected) == (5 if target == H1 else 2)
        changes: list[Any] = []
        p._mark_deleted(target, at(9), _Emitter(g, changes))
        assert changes[0] == ["v", target, {IS_DELETED: True, SAMPLE_TS: ts(9)}, []]
        assert [tuple(c[1:4]) for c in changes[1:]] == expected
        assert all(c[4] == {IS_DELETED: True} for c in changes[1:])
    assert p.graph.edge(a1, H1, ON) == {RELATIONSHIP: ON, IS_DELETED: True}
