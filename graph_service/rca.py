"""Root-cause analysis on the live graph: an alarm's causes and effects.

``causes`` edges point from a cause to its effect. From the asked alarm we walk
them backwards (causes, their causes, ...) and forwards (effects), over live
edges only. Root causes are the alarms reached that nothing causes.
"""

from __future__ import annotations

from typing import Any

from graph_service.entity_graph import IS_DELETED, EntityGraph
from graph_service.transformers import CAUSES


def _live(attrs: dict[str, Any] | None) -> bool:
    return attrs is not None and not attrs.get(IS_DELETED)


def rca(graph: EntityGraph, alarm_vid: str) -> dict[str, Any]:
    """The causal subgraph around ``alarm_vid`` as vertices and edges, roots marked."""
    seen: dict[str, None] = {alarm_vid: None}
    edges: dict[tuple[str, str], None] = {}
    frontier = [alarm_vid]
    while frontier:
        nxt: list[str] = []
        for vid in frontier:
            for cause, keyed in graph.predecessors(vid).items():
                if _live(keyed.get(CAUSES)) and _live(graph.vertex(cause)):
                    edges[(cause, vid)] = None
                    if cause not in seen:
                        seen[cause] = None
                        nxt.append(cause)
            for effect, keyed in graph.successors(vid).items():
                if _live(keyed.get(CAUSES)) and _live(graph.vertex(effect)):
                    edges[(vid, effect)] = None
                    if effect not in seen:
                        seen[effect] = None
                        nxt.append(effect)
        frontier = nxt
    caused = {dst for _, dst in edges}
    roots = [vid for vid in seen if vid not in caused]
    vertices = []
    for vid in seen:
        attrs = dict(graph.vertex(vid) or {})
        attrs["is_root_cause"] = vid in roots
        attrs["is_requested"] = vid == alarm_vid
        vertices.append(attrs)
    return {
        "alarm": alarm_vid,
        "vertices": vertices,
        "edges": [{"source": s, "target": t, "relationship_type": CAUSES} for s, t in edges],
        "root_causes": roots,
    }
