"""State normalisation: raw -> operational, defaults, priorities and aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph_service.processor import Processor
from graph_service.states import UNKNOWN, StateConfigError, StateNormalizer
from graph_service.transformers import AGGREGATED_STATE, EVALUATOR_STATE, OPERATIONAL_STATE
from tests.graph_service.core_helpers import ev, vid

STATES = StateNormalizer.load()


def test_load_reads_every_shipped_file() -> None:
    assert set(STATES.by_type) == {
        "aodh",
        "cinder.volume",
        "neutron.network",
        "neutron.port",
        "nova.host",
        "nova.instance",
        "nova.zone",
        "openstack.cluster",
        "prometheus",
        "vitrage",
        "zabbix",
    }


@pytest.mark.parametrize(
    ("etype", "raw", "expected"),
    [
        ("nova.instance", "ACTIVE", "OK"),
        ("nova.instance", "active", "OK"),
        ("nova.instance", "Shutoff", "SUBOPTIMAL"),
        ("nova.instance", "crashed", "ERROR"),
        ("nova.instance", "hard_reboot", "TRANSIENT"),
        ("nova.instance", "soft_deleted", "DELETED"),
        ("nova.host", "down", "ERROR"),
        ("nova.host", "Maintenance", "SUBOPTIMAL"),
        ("nova.zone", "unavailable", "ERROR"),
        ("cinder.volume", "in-use", "OK"),
        ("cinder.volume", "Error_Attaching", "ERROR"),
        ("neutron.port", "build", "TRANSIENT"),
        ("neutron.network", "Up", "OK"),
        ("zabbix", "Not Classified", "OK"),
        ("zabbix", "high", "CRITICAL"),
        ("zabbix", "Average", "SEVERE"),
        ("prometheus", "page", "CRITICAL"),
        ("aodh", "moderate", "SEVERE"),
    ],
)
def test_raw_to_operational_is_case_insensitive(etype: str, raw: str, expected: str) -> None:
    assert STATES.operational(etype, raw) == expected


@pytest.mark.parametrize(
    ("etype", "raw", "expected"),
    [
        ("nova.instance", "EXPLODED", UNKNOWN),
        ("nova.instance", None, UNKNOWN),
        ("nova.host", "", UNKNOWN),
        ("openstack.cluster", "weird", "OK"),  # this file's default is OK
        ("openstack.cluster", None, "OK"),
        ("no.such.type", "ACTIVE", UNKNOWN),  # no file: fallback table
    ],
)
def test_unknown_raw_state_gives_the_default(etype: str, raw: str | None, expected: str) -> None:
    assert STATES.operational(etype, raw) == expected


def test_aggregate_keeps_the_higher_priority_state() -> None:
    # nova.instance: ERROR 40 > SUBOPTIMAL 30 > TRANSIENT 20 > OK 10 > DELETED 5
    assert STATES.aggregate("nova.instance", "OK", "ERROR") == "ERROR"
    assert STATES.aggregate("nova.instance", "OK", "suboptimal") == "SUBOPTIMAL"
    assert STATES.aggregate("nova.instance", "ERROR", "SUBOPTIMAL") == "ERROR"
    assert STATES.aggregate("nova.instance", "TRANSIENT", "ok") == "TRANSIENT"
    assert STATES.aggregate("nova.instance", "DELETED", "OK") == "OK"
    assert STATES.aggregate("nova.instance", "OK", None) == "OK"
    assert STATES.aggregate("nova.instance", "OK", "") == "OK"
    # An unknown evaluator state has no priority and never wins over a known one.
    assert STATES.aggregate("nova.instance", "OK", "BANANAS") == "OK"
    # Equal priorities keep the datasource's state.
    assert STATES.aggregate("nova.instance", "ERROR", "error") == "ERROR"


def test_load_rejects_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("operational:\n  OK: {priority: high}\n")
    with pytest.raises(StateConfigError, match=r"a\.yaml.*integer 'priority'"):
        StateNormalizer.load(tmp_path)
    (tmp_path / "a.yaml").write_text("just a string\n")
    with pytest.raises(StateConfigError, match="mapping 'operational'"):
        StateNormalizer.load(tmp_path)
    (tmp_path / "a.yaml").write_text("operational: [\n")
    with pytest.raises(StateConfigError, match="not valid YAML"):
        StateNormalizer.load(tmp_path)


def test_load_custom_directory(tmp_path: Path) -> None:
    (tmp_path / "my.type.yaml").write_text(
        "operational:\n"
        "  BAD: {priority: 9, raw: [broken, Kaput]}\n"
        "  FINE: {priority: 1, raw: [ok]}\n"
        "default: fine\n"
    )
    states = StateNormalizer.load(tmp_path)
    assert list(states.by_type) == ["my.type"]
    assert states.operational("my.type", "KAPUT") == "BAD"
    assert states.operational("my.type", "???") == "FINE"
    assert states.aggregate("my.type", "FINE", "bad") == "BAD"


# ------------------------------------------------ aggregation in the processor
def test_datasource_update_keeps_the_evaluator_state_and_aggregates() -> None:
    p = Processor()
    iid = vid("nova.instance", "i1")
    p.process(ev("nova.instance", "i1", 0, host="h1", state="active"))
    v = p.graph.vertex(iid)
    assert v is not None
    assert v[OPERATIONAL_STATE] == "OK"
    assert v[AGGREGATED_STATE] == "OK"
    assert EVALUATOR_STATE not in v

    # The evaluator sets a state (a graph change, as its set_state action would).
    p.graph.apply([["v", iid, {EVALUATOR_STATE: "SUBOPTIMAL"}, []]])

    out = p.process(ev("nova.instance", "i1", 10, host="h1", state="ACTIVE"))
    v = p.graph.vertex(iid)
    assert v[EVALUATOR_STATE] == "SUBOPTIMAL"  # not removed by the datasource update
    assert v[OPERATIONAL_STATE] == "OK"
    assert v[AGGREGATED_STATE] == "SUBOPTIMAL"
    [change] = [c for c in out.changes if c[0] == "v" and c[1] == iid]
    assert change[2][AGGREGATED_STATE] == "SUBOPTIMAL"
    assert EVALUATOR_STATE not in change[3]

    # A worse datasource state beats the evaluator's.
    p.process(ev("nova.instance", "i1", 20, host="h1", state="error"))
    v = p.graph.vertex(iid)
    assert (v[OPERATIONAL_STATE], v[AGGREGATED_STATE]) == ("ERROR", "ERROR")
    assert v[EVALUATOR_STATE] == "SUBOPTIMAL"

    # The evaluator clears its state: the next update aggregates to the datasource's.
    p.graph.apply([["v", iid, {}, [EVALUATOR_STATE]]])
    p.process(ev("nova.instance", "i1", 30, host="h1", state="paused"))
    v = p.graph.vertex(iid)
    assert (v[OPERATIONAL_STATE], v[AGGREGATED_STATE]) == ("SUBOPTIMAL", "SUBOPTIMAL")


def test_is_marked_down_is_evaluator_owned_too() -> None:
    p = Processor()
    hid = vid("nova.host", "h1")
    p.process(ev("nova.host", "h1", 0, state="UP", zone="z1"))
    p.graph.apply([["v", hid, {"is_marked_down": True}, []]])
    p.process(ev("nova.host", "h1", 1, state="UP", zone="z1"))
    assert p.graph.vertex(hid)["is_marked_down"] is True


def test_cached_normalisation_is_the_uncached_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import graph_service.states as states

    monkeypatch.setattr(states, "_CACHE_MAX", 4)  # clearing when full changes nothing
    fresh = StateNormalizer.load()
    raws: list[object] = ["ACTIVE", "active", "error", "bogus", None, True, 1, "TRUE", "1", 1.0]
    for _ in range(3):
        for etype in ["nova.instance", "nova.host", "zabbix", "no.such.type"]:
            for raw in raws:
                table = fresh.table(etype)
                assert fresh.operational(etype, raw) == table.operational(raw), (etype, raw)
    assert len(fresh._cache) <= 4
    # Only str raws are cached: True and 1 hash alike but are different raw states.
    assert all(type(raw) is str for _, raw in fresh._cache)
