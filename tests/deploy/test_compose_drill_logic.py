"""The container drill's checks (deploy/compose_drill.py), on made-up graphs."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest

from tests.deploy.containers import ROOT

_spec = importlib.util.spec_from_file_location("compose_drill", ROOT / "deploy/compose_drill.py")
assert _spec is not None and _spec.loader is not None
drill = importlib.util.module_from_spec(_spec)
sys.modules["compose_drill"] = drill
_spec.loader.exec_module(drill)


def v(vid: str, ts: str = "2026-01-01T00:00:00+00:00", **props: Any) -> dict[str, Any]:
    return {"vitrage_id": vid, "vitrage_sample_timestamp": ts, **props}


def e(src: str, dst: str, label: str = "contains") -> dict[str, Any]:
    return {"source": src, "target": dst, "relationship_type": label}


OLD = {"vertices": [v("h1"), v("i1"), v("i2")], "edges": [e("h1", "i1"), e("h1", "i2")]}
LATER = "2026-01-01T00:00:05+00:00"


def test_equal_graphs_are_preserved_in_both_modes() -> None:
    for strict in (True, False):
        assert drill.compare(OLD, OLD, strict)["preserved"]


def test_a_lost_vertex_or_edge_is_caught() -> None:
    no_vertex = {"vertices": OLD["vertices"][:2], "edges": OLD["edges"][:1]}
    out = drill.compare(OLD, no_vertex, strict=False)
    assert not out["preserved"] and out["lost_vertices"] == 1
    no_edge = {"vertices": OLD["vertices"], "edges": OLD["edges"][:1]}
    out = drill.compare(OLD, no_edge, strict=False)
    assert not out["preserved"] and out["lost_edges"] == 1


def test_updates_since_are_allowed_only_with_a_newer_sample_timestamp() -> None:
    updated = {
        "vertices": [v("h1"), v("i1"), v("i2", LATER, state="ERROR"), v("i3", LATER)],
        "edges": [e("h1", "i1"), e("h1", "i3")],  # i2 moved away from h1: i2 was updated
    }
    out = drill.compare(OLD, updated, strict=False)
    assert out["preserved"], out
    assert out["vertices_updated_since"] == 1 and out["edges_removed_by_updates"] == 1
    assert out["vertices_added_since"] == 1 and out["edges_added_since"] == 1
    assert not drill.compare(OLD, updated, strict=True)["preserved"]

    silent = {"vertices": [v("h1"), v("i1", state="ERROR"), v("i2")], "edges": OLD["edges"]}
    out = drill.compare(OLD, silent, strict=False)
    assert not out["preserved"] and out["changed_without_update"] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T05:49:51.981642613Z", 1795758591.981642),
        ("2026-11-27T05:49:51Z", 1795758591.0),
        ("2026-11-27T06:49:51.5+01:00", 1795758591.5),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
    ],
)
def test_engine_times_parse_with_nanoseconds(value: str, expected: float | None) -> None:
    got = drill.parse_engine_time(value)
    assert got == pytest.approx(expected) if expected is not None else got is None
