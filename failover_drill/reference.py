"""The reference run: the same event stream through one processor, no failure."""

from __future__ import annotations

from typing import Any

import orjson

from graph_service.processor import Processor
from rca_common.events import decode_events


def reference_graph(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Process the wire events in order; return the graph as the API shows it."""
    processor = Processor()
    for event in decode_events(orjson.dumps(events)):
        processor.process(event)
    vertices = [attrs for _, attrs in processor.graph.vertices()]
    edges = [
        {"source": s, "target": t, **attrs, "relationship_type": k}
        for s, t, k, attrs in processor.graph.edges()
    ]
    # Through JSON, as the API's answer is.
    return orjson.loads(orjson.dumps({"vertices": vertices, "edges": edges}))  # type: ignore[no-any-return]


def compare_graphs(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Vertex by vertex, edge by edge, property by property; a few examples of each kind."""
    av = {v["vitrage_id"]: v for v in actual["vertices"]}
    ev = {v["vitrage_id"]: v for v in expected["vertices"]}
    ae = {(e["source"], e["target"], e["relationship_type"]): e for e in actual["edges"]}
    ee = {(e["source"], e["target"], e["relationship_type"]): e for e in expected["edges"]}
    differing = [vid for vid in ev.keys() & av.keys() if av[vid] != ev[vid]]
    differing_edges = [k for k in ee.keys() & ae.keys() if ae[k] != ee[k]]
    missing_v, extra_v = ev.keys() - av.keys(), av.keys() - ev.keys()
    missing_e, extra_e = ee.keys() - ae.keys(), ae.keys() - ee.keys()
    equal = not (differing or differing_edges or missing_v or extra_v or missing_e or extra_e)
    out: dict[str, Any] = {
        "equal": equal,
        "vertices": len(av),
        "edges": len(ae),
        "expected_vertices": len(ev),
        "expected_edges": len(ee),
    }
    if not equal:
        out.update(
            missing_vertices=sorted(missing_v)[:5],
            extra_vertices=sorted(extra_v)[:5],
            missing_edges=[list(k) for k in sorted(missing_e)[:5]],
            extra_edges=[list(k) for k in sorted(extra_e)[:5]],
            differing_vertices=[
                {"vid": vid, "actual": av[vid], "expected": ev[vid]} for vid in differing[:3]
            ],
            differing_edges=[list(k) for k in differing_edges[:5]],
            counts={
                "missing_vertices": len(missing_v),
                "extra_vertices": len(extra_v),
                "differing_vertices": len(differing),
                "missing_edges": len(missing_e),
                "extra_edges": len(extra_e),
                "differing_edges": len(differing_edges),
            },
        )
    return out
