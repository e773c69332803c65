"""The in-memory entity graph and the one way it changes: lists of changes.

Every mutation, live or replayed, goes through :meth:`EntityGraph.apply`, so a
graph rebuilt from logged changes is identical to the one that produced them,
down to the bytes of its pickle. A change is a short list, JSON-ready as is:

* ``["v", vid, {set...}, [unset...]]``  upsert a vertex (created if missing)
* ``["V", vid]``                         remove a vertex and its edges
* ``["e", src, dst, label, {set...}, [unset...]]``  upsert an edge
* ``["E", src, dst, label]``              remove an edge

Edges are keyed by their label (``relationship_type``), as in Vitrage.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from heapq import heappop, heappush
from typing import Any

import networkx as nx

from rca_common.timestamps import parse_timestamp

Change = list[Any]
Props = dict[str, Any]

# Vertex property names (Vitrage vocabulary).
VID = "vitrage_id"
CATEGORY = "vitrage_category"
TYPE = "vitrage_type"
IS_DELETED = "vitrage_is_deleted"
IS_PLACEHOLDER = "vitrage_is_placeholder"
SAMPLE_TS = "vitrage_sample_timestamp"
DATASOURCE = "vitrage_datasource_name"
RELATIONSHIP = "relationship_type"

RESOURCE = "RESOURCE"
ALARM = "ALARM"

_intern = sys.intern

# Property names, interned, by name: the names a graph uses are few, and a lookup
# here is cheaper than interning again (sys.intern looks the string up in the
# interpreter's table of every interned string, every time, unless it is that very
# object: names decoded from a record are orjson's own cached strings). Cleared when
# full: payload fields are the collectors' to choose.
_KEYS: dict[str, str] = {}
_KEYS_MAX = 4096


def _key(name: str) -> str:
    """``name`` interned (a property name)."""
    key = _KEYS.get(name)
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        key = _KEYS[name] = _intern(name)
    return key


def _own(value: Any) -> Any:
    """A private, canonical copy of a property value.

    Strings are interned and containers copied, so that the pickle of a graph
    does not depend on which objects happened to be shared on the way in.
    """
    if type(value) is str:
        return _intern(value)
    if isinstance(value, str):  # str enums and other subclasses become plain str
        return _intern(str.__str__(value))
    if isinstance(value, list):
        return [_own(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _own(v) for k, v in value.items()}
    return value


def _update(attrs: Props, setting: dict[str, Any], unsetting: Sequence[str]) -> None:
    for key, value in setting.items():
        t = type(value)
        if t is str:
            attrs[_key(key)] = _intern(value)
        elif t is bool or t is int or t is float or value is None:
            attrs[_key(key)] = value
        else:
            attrs[_key(key)] = _own(value)
    for key in unsetting:
        attrs.pop(key, None)


class EntityGraph:
    """A networkx MultiDiGraph behind a small API, plus the index of deleted vertices."""

    def __init__(self) -> None:
        self._adopt(nx.MultiDiGraph())
        # vid -> time of deletion, in the order deletions happened: the state (pickled).
        self._deleted: dict[str, datetime] = {}
        self._edges = 0  # networkx counts edges in O(V + E); /status asks often
        self._index_queue()

    def _index_queue(self) -> None:
        """The purge queue, derived from ``_deleted`` (not pickled): a heap of
        (deletion time, deletion order, vid), so that a deletion older than those
        queued goes in in O(log n). Event times are not monotonic across sources: a
        source whose clock lags another's deletes "in the past" all the time, and
        keeping ``_deleted`` itself sorted moved every later entry for each such
        deletion (measured: 15k deletions queued, 106 late ones took a second).

        Entries are not removed when a vertex is purged or recreated; an entry is
        live while ``_order_of`` still gives its vid that order, and dead ones are
        dropped when they reach the top or when they outnumber the live ones."""
        self._order_of: dict[str, int] = {}
        self._queue: list[tuple[datetime, int, str]] = []
        self._counter = 0
        for vid, when in self._deleted.items():
            self._push_deleted(vid, when)

    def _adopt(self, g: nx.MultiDiGraph) -> None:
        """Hold ``g`` and its three dicts: networkx never replaces them, and the hot path
        reads them on every change (an attribute lookup each, through ``g``)."""
        self._g = g
        self._nodes: dict[str, Props] = g._node
        self._succ: dict[str, dict[str, dict[str, Props]]] = g._succ
        self._pred: dict[str, dict[str, dict[str, Props]]] = g._pred

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Plain dicts only: no networkx classes (cached views would make the bytes
        depend on which views were used) and nothing a restricted unpickler must allow."""
        g = self._g
        return {
            "attrs": g.graph,
            "node": g._node,
            "succ": g._succ,
            "pred": g._pred,
            "deleted": self._deleted,
            "edges": self._edges,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        g = nx.MultiDiGraph()
        g.graph = state["attrs"]
        g._node = state["node"]
        g._adj = g._succ = state["succ"]
        g._pred = state["pred"]
        self._adopt(g)
        self._deleted = state["deleted"]
        self._index_queue()
        edges = state.get("edges")  # counted when saved: counting here walks the graph
        self._edges = g.number_of_edges() if edges is None else edges

    # ----------------------------------------------------------------- mutation
    def apply(self, changes: Iterable[Sequence[Any]]) -> None:
        """Apply changes in order. The only way the graph changes.

        Works on networkx's adjacency dicts directly: this is the hot path of
        both processing and replay. Ids are interned only where they become
        keys (an existing vertex keeps its key object), which is all the pickle
        needs to be the same whoever built the graph.
        """
        nodes, succ, pred = self._nodes, self._succ, self._pred
        deleted = self._deleted
        for ch in changes:
            op = ch[0]
            if op == "v":
                vid = ch[1]
                attrs = nodes.get(vid)
                if attrs is None:
                    vid = _intern(vid)
                    attrs = nodes[vid] = {}
                    succ[vid] = {}
                    pred[vid] = {}
                _update(attrs, ch[2], ch[3])
                if attrs.get(IS_DELETED) or vid in deleted:
                    self._track_deleted(_intern(vid), attrs)
            elif op == "e":
                src, dst, label = ch[1], ch[2], ch[3]
                out = succ[src]
                keys = out.get(dst)
                if keys is None:
                    keys = out[_intern(dst)] = {}
                    pred[dst][_intern(src)] = keys
                attrs = keys.get(label)
                if attrs is None:
                    attrs = keys[_key(label)] = {}
                    self._edges += 1
                _update(attrs, ch[4], ch[5])
            elif op == "V":
                vid = ch[1]
                if vid in nodes:
                    self._edges -= sum(map(len, succ[vid].values())) + sum(
                        map(len, pred[vid].values())
                    )
                    self._g.remove_node(vid)
                if deleted.pop(vid, None) is not None:
                    del self._order_of[vid]
            elif op == "E":
                src, dst, label = ch[1], ch[2], ch[3]
                keys = succ.get(src, {}).get(dst)
                if keys is not None and label in keys:
                    del keys[label]
                    self._edges -= 1
                    if not keys:
                        del succ[src][dst]
                        del pred[dst][src]
            else:
                raise ValueError(f"unknown change op {op!r}")
        if len(self._queue) > 1024 and len(self._queue) > 2 * len(deleted):
            self._index_queue()  # more dead entries than live ones (amortised O(1))

    def _track_deleted(self, vid: str, attrs: Props) -> None:
        if attrs.get(IS_DELETED):
            if vid not in self._deleted:
                when = parse_timestamp(attrs[SAMPLE_TS])
                self._deleted[vid] = when
                self._push_deleted(vid, when)
        elif vid in self._deleted:
            del self._deleted[vid]
            del self._order_of[vid]

    def _push_deleted(self, vid: str, when: datetime) -> None:
        order = self._counter
        self._counter = order + 1
        self._order_of[vid] = order
        heappush(self._queue, (when, order, vid))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def __contains__(self, vid: object) -> bool:
        return vid in self._g

    @property
    def edge_count(self) -> int:
        return self._edges

    def vertex(self, vid: str) -> Props | None:
        """The vertex's properties (a live dict: do not mutate), or None."""
        return self._nodes.get(vid)

    def edge(self, src: str, dst: str, label: str) -> Props | None:
        try:
            return self._g[src][dst][label]
        except KeyError:
            return None

    def vertices(self) -> Iterator[tuple[str, Props]]:
        return iter(self._g.nodes(data=True))

    def edges(self) -> Iterator[tuple[str, str, str, Props]]:
        return iter(self._g.edges(keys=True, data=True))

    def out_edges(self, vid: str) -> Iterator[tuple[str, str, str, Props]]:
        return iter(self._g.out_edges(vid, keys=True, data=True))

    def in_edges(self, vid: str) -> Iterator[tuple[str, str, str, Props]]:
        return iter(self._g.in_edges(vid, keys=True, data=True))

    def successors(self, vid: str) -> dict[str, dict[str, Props]]:
        """Raw adjacency: neighbour -> label -> edge properties (do not mutate)."""
        return self._succ[vid]

    def predecessors(self, vid: str) -> dict[str, dict[str, Props]]:
        return self._pred[vid]

    def deleted_before(self, cutoff: datetime) -> list[str]:
        """Deleted vertices whose deletion time is before ``cutoff``, oldest first (ties
        in the order they were deleted). Reading does not dequeue: a vertex comes out
        again until it is purged or recreated. Cheap when none is due (the top of the
        queue says so): run on every event."""
        queue = self._queue
        order_of = self._order_of
        out: list[str] = []
        due: list[tuple[datetime, int, str]] = []
        while queue and queue[0][0] < cutoff:
            entry = heappop(queue)
            if order_of.get(entry[2]) == entry[1]:  # live: not purged, not recreated since
                due.append(entry)
                out.append(entry[2])
        for entry in due:  # reported, not purged: still queued
            heappush(queue, entry)
        return out

    def subgraph(self, root: str, depth: int) -> tuple[list[str], list[tuple[str, str, str]]]:
        """Vertex ids within ``depth`` hops of ``root`` (either direction) and their edges."""
        seen = {root: 0}
        order = [root]
        frontier = [root]
        for d in range(depth):
            nxt: list[str] = []
            for vid in frontier:
                for n in (*self._g.successors(vid), *self._g.predecessors(vid)):
                    if n not in seen:
                        seen[n] = d + 1
                        order.append(n)
                        nxt.append(n)
            frontier = nxt
        edges = [
            (s, t, k) for s in order for _, t, k in self._g.out_edges(s, keys=True) if t in seen
        ]
        return order, edges

    def counts_by_type(self, include_deleted: bool = False) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, attrs in self._g.nodes(data=True):
            if attrs.get(IS_DELETED) and not include_deleted:
                continue
            t = attrs.get(TYPE, "?")
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))
