"""The reference run: the same event stream through one processor, no failure."""

from __future__ import annotations

from typing import Any

import orjson

from graph_service.evaluator import Evaluator, evaluation_trigger, run_pending, run_to_fixpoint
from graph_service.processor import Processor
from graph_service.templates import load_templates
from rca_common.events import decode_events

# A deduced alarm raised after a takeover (for a trigger whose follow-ups the old
# active never logged) is dated by the enabling, not by the trigger: same alarm.
IGNORED_ON_DEDUCED = ("vitrage_sample_timestamp",)


def reference_graph(events: list[dict[str, Any]], fresh_events: int) -> dict[str, Any]:
    """What one graph service that never fails builds from the same stream.

    The first ``fresh_events`` are the start-up get_all, processed with evaluators
    disabled and then evaluated as a whole (the fresh start, epoch 1); every later
    event is evaluated as it is processed. Returns the graph as the API shows it.
    """
    processor = Processor()
    templates, _ = load_templates()
    evaluator = Evaluator(templates)
    decoded = decode_events(orjson.dumps(events))
    for event in decoded[:fresh_events]:
        processor.process(event)
    if processor.clock is not None:
        trigger = evaluation_trigger("fresh/1", processor.clock)
        pending = evaluator.evaluate_all(processor.graph, processor.actions, trigger)
        run_pending(processor, evaluator, trigger, pending)
    for event in decoded[fresh_events:]:
        run_to_fixpoint(processor, evaluator, event)
    vertices = [attrs for _, attrs in processor.graph.vertices()]
    edges = [
        {"source": s, "target": t, **attrs, "relationship_type": k}
        for s, t, k, attrs in processor.graph.edges()
    ]
    # Through JSON, as the API's answer is.
    return orjson.loads(orjson.dumps({"vertices": vertices, "edges": edges}))  # type: ignore[no-any-return]


def compare_graphs(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Vertex by vertex, edge by edge, property by property; a few examples of each kind.

    Everything the datasources said must be identical, deleted vertices and edges
    included. Deduced alarms, their edges and ``causes`` edges (the evaluator's
    work) are compared by their live state:
    events drained while evaluators are disabled are evaluated together when they
    are enabled, so a deduced alarm raised and undone within that window never
    exists after a takeover — the live deductions are the same either way.
    """
    av, ae = _comparable_graph(actual)
    ev, ee = _comparable_graph(expected)
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


def _comparable_graph(
    graph: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str], dict[str, Any]]]:
    deduced = {v["vitrage_id"] for v in graph["vertices"] if v.get("vitrage_type") == "vitrage"}
    vertices = {}
    for v in graph["vertices"]:
        if v["vitrage_id"] in deduced:
            if v.get("vitrage_is_deleted"):
                continue
            v = {k: x for k, x in v.items() if k not in IGNORED_ON_DEDUCED}
        vertices[v["vitrage_id"]] = v
    edges = {}
    for e in graph["edges"]:
        made_by_evaluator = (
            e["source"] in deduced or e["target"] in deduced or e["relationship_type"] == "causes"
        )
        if made_by_evaluator and e.get("vitrage_is_deleted"):
            continue
        edges[(e["source"], e["target"], e["relationship_type"])] = e
    return vertices, edges
