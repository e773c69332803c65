"""EntityGraph: the change language, the deletion index, deterministic pickles."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest

from graph_service.entity_graph import IS_DELETED, SAMPLE_TS, TYPE, EntityGraph
from tests.graph_service.core_helpers import at, ts


def v(vid: str, t: float = 0, deleted: bool = False, vtype: str = "thing") -> list[object]:
    return ["v", vid, {SAMPLE_TS: ts(t), IS_DELETED: deleted, TYPE: vtype}, []]


def small() -> EntityGraph:
    g = EntityGraph()
    g.apply(
        [
            v("a", vtype="host"),
            v("b", vtype="instance"),
            v("c", vtype="instance"),
            ["e", "a", "b", "contains", {"relationship_type": "contains"}, []],
            ["e", "a", "c", "contains", {"relationship_type": "contains"}, []],
            ["e", "b", "c", "attached", {"relationship_type": "attached"}, []],
        ]
    )
    return g


def test_vertex_upsert_sets_and_unsets() -> None:
    g = EntityGraph()
    g.apply([["v", "x", {"a": 1, "b": "two", "c": [1, 2]}, []]])
    assert g.vertex("x") == {"a": 1, "b": "two", "c": [1, 2]}
    g.apply([["v", "x", {"a": 3, "d": None}, ["b", "missing"]]])
    assert g.vertex("x") == {"a": 3, "c": [1, 2], "d": None}
    assert len(g) == 1 and "x" in g and "y" not in g
    assert g.vertex("y") is None


def test_edge_upsert_keyed_by_label() -> None:
    g = small()
    assert g.edge_count == 3
    g.apply([["e", "a", "b", "contains", {"w": 1}, ["relationship_type"]]])
    assert g.edge("a", "b", "contains") == {"w": 1}
    g.apply([["e", "a", "b", "other", {"relationship_type": "other"}, []]])
    assert g.edge_count == 4  # a second label between the same pair is a second edge
    assert sorted(k for _, _, k, _ in g.out_edges("a")) == ["contains", "contains", "other"]
    assert [(s, k) for s, _, k, _ in g.in_edges("c")] == [("a", "contains"), ("b", "attached")]
    assert g.edge("b", "a", "contains") is None
    assert g.edge("zz", "a", "contains") is None


def test_edge_removal() -> None:
    g = small()
    g.apply([["E", "a", "b", "contains"]])
    assert g.edge("a", "b", "contains") is None
    assert "b" not in g.successors("a") and "a" not in g.predecessors("b")
    assert g.edge_count == 2
    g.apply([["E", "a", "b", "contains"], ["E", "nope", "b", "x"], ["E", "a", "c", "other"]])
    assert g.edge_count == 2  # removing what is not there is a no-op


def test_vertex_removal_takes_its_edges_and_its_deletion_entry() -> None:
    g = small()
    g.apply([["v", "b", {IS_DELETED: True, SAMPLE_TS: ts(5)}, []]])
    assert g.deleted_before(at(6)) == ["b"]
    g.apply([["V", "b"]])
    assert "b" not in g
    assert g.edge_count == 1
    assert g.edge("a", "c", "contains") is not None
    assert g.deleted_before(at(1000)) == []
    g.apply([["V", "b"], ["V", "never"]])  # idempotent
    assert len(g) == 2


def test_unknown_op_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown change op 'x'"):
        EntityGraph().apply([["x", "a"]])


def test_graph_owns_its_values() -> None:
    """A change's containers are copied: mutating the change later cannot alter the graph."""
    nested = {"k": [1, {"deep": "x"}]}
    change = ["v", "x", {"n": nested, "l": [1, 2]}, []]
    g = EntityGraph()
    g.apply([change])
    nested["k"][1]["deep"] = "changed"  # type: ignore[index]
    change[2]["l"].append(3)  # type: ignore[index]
    assert g.vertex("x") == {"n": {"k": [1, {"deep": "x"}]}, "l": [1, 2]}


def test_str_subclasses_are_stored_as_plain_str() -> None:
    from enum import StrEnum

    class Kind(StrEnum):
        HOST = "nova.host"

    g = EntityGraph()
    g.apply([["v", "x", {TYPE: Kind.HOST, "l": [Kind.HOST]}, []]])
    assert type(g.vertex("x")[TYPE]) is str
    assert type(g.vertex("x")["l"][0]) is str


# ------------------------------------------------------------- deletion index
def test_deletion_index_tracks_delete_and_undelete() -> None:
    g = EntityGraph()
    g.apply([v("a", 0), v("b", 0)])
    assert g.deleted_before(at(10**6)) == []
    g.apply([["v", "a", {IS_DELETED: True, SAMPLE_TS: ts(100)}, []]])
    assert g.deleted_before(at(100)) == []  # strictly before the cutoff
    assert g.deleted_before(at(100.5)) == ["a"]
    # Another change to a deleted vertex keeps its deletion time.
    g.apply([["v", "a", {"note": "x", SAMPLE_TS: ts(500)}, []]])
    assert g.deleted_before(at(101)) == ["a"]
    # Un-deleting (a recreate) takes it out of the index.
    g.apply([["v", "a", {IS_DELETED: False, SAMPLE_TS: ts(200)}, []]])
    assert g.deleted_before(at(10**6)) == []


def test_deletion_index_is_ordered_by_deletion_time_not_arrival() -> None:
    """Event times are not monotonic across sources: a deletion older than the last
    one queued must still come out when its own time is past the cutoff."""
    g = EntityGraph()
    g.apply([v(x, 0) for x in "abcde"])
    for vid, t in [("a", 100), ("b", 300), ("c", 50), ("d", 300), ("e", 200)]:
        g.apply([["v", vid, {IS_DELETED: True, SAMPLE_TS: ts(t)}, []]])
    assert g.deleted_before(at(60)) == ["c"]
    assert g.deleted_before(at(250)) == ["c", "a", "e"]
    assert g.deleted_before(at(301)) == ["c", "a", "e", "b", "d"]  # ties keep arrival order


def test_deletion_index_answers_none_due_without_missing_an_older_deletion() -> None:
    """deleted_before remembers the oldest deletion its last scan saw and answers
    "none due" below it without a scan; a deletion queued later that is older than
    that (or one that is not purged after being reported) must still come out."""
    g = EntityGraph()
    g.apply([v(x, 0) for x in "abc"])
    g.apply([["v", "a", {IS_DELETED: True, SAMPLE_TS: ts(100)}, []]])
    assert g.deleted_before(at(50)) == []  # remembers: nothing before 100
    g.apply([["v", "b", {IS_DELETED: True, SAMPLE_TS: ts(20)}, []]])  # older, queued later
    assert g.deleted_before(at(50)) == ["b"]
    assert g.deleted_before(at(50)) == ["b"]  # reported, not purged: reported again
    g.apply([["V", "b"]])
    assert g.deleted_before(at(50)) == []
    assert g.deleted_before(at(101)) == ["a"]
    g.apply([["V", "a"]])
    assert g.deleted_before(at(10**6)) == []  # empty: remembers nothing is queued
    g.apply([["v", "c", {IS_DELETED: True, SAMPLE_TS: ts(30)}, []]])
    assert g.deleted_before(at(31)) == ["c"]


def test_deleted_vertex_created_deleted_is_indexed() -> None:
    g = EntityGraph()
    g.apply([v("a", 7, deleted=True)])
    assert g.deleted_before(at(8)) == ["a"]


# ------------------------------------------------------------------- pickles
def test_pickle_round_trip_restores_graph_and_index() -> None:
    g = small()
    g.apply([["v", "c", {IS_DELETED: True, SAMPLE_TS: ts(9)}, []]])
    blob = pickle.dumps(g, protocol=5)
    h = pickle.loads(blob)
    assert pickle.dumps(h, protocol=5) == blob
    assert list(h.vertices()) == list(g.vertices())
    assert list(h.edges()) == list(g.edges())
    assert h.deleted_before(at(10)) == ["c"]
    # The restored graph is fully working, including networkx's own algorithms.
    h.apply([["V", "c"], ["e", "b", "a", "x", {}, []]])
    assert h.edge_count == 2 and len(h) == 2
    assert g.edge_count == 3  # the original is independent


def test_pickle_holds_no_networkx_classes() -> None:
    g = small()
    list(g.vertices())  # touch networkx's cached views
    list(g.edges())
    blob = pickle.dumps(g, protocol=5)
    assert b"networkx" not in blob
    assert b"graph_service.entity_graph" in blob


def test_pickle_does_not_depend_on_object_sharing() -> None:
    """The same changes, built from shared or from fresh objects (a JSON round trip),
    give byte-identical pickles."""
    shared_list = ["x", "y"]
    label = "contains"
    changes = [
        ["v", "a", {"tags": shared_list, "name": "n" * 3, TYPE: "host"}, []],
        ["v", "b", {"tags": shared_list, "name": "nnn", TYPE: "host"}, []],
        ["e", "a", "b", label, {"relationship_type": label}, []],
    ]
    g1, g2, g3 = EntityGraph(), EntityGraph(), EntityGraph()
    g1.apply(changes)
    g2.apply(orjson.loads(orjson.dumps(changes)))
    g3.apply(copy.deepcopy(changes))
    assert pickle.dumps(g1) == pickle.dumps(g2) == pickle.dumps(g3)


def test_pickle_depends_on_order_of_changes_only_through_content() -> None:
    g1, g2 = EntityGraph(), EntityGraph()
    g1.apply([["v", "a", {"x": 1}, []], ["v", "b", {"x": 1}, []]])
    g2.apply([["v", "b", {"x": 1}, []], ["v", "a", {"x": 1}, []]])
    # Same content, different insertion order: different bytes (order is state).
    assert pickle.dumps(g1) != pickle.dumps(g2)


# ------------------------------------------------------------------- reading
def test_subgraph_and_counts() -> None:
    g = small()
    g.apply([v("d", vtype="zone"), ["e", "d", "a", "contains", {}, []]])
    order, edges = g.subgraph("b", 1)
    assert order == ["b", "c", "a"]
    assert sorted(edges) == [("a", "b", "contains"), ("a", "c", "contains"), ("b", "c", "attached")]
    order, _ = g.subgraph("b", 2)
    assert order == ["b", "c", "a", "d"]
    g.apply([["v", "c", {IS_DELETED: True}, []]])
    assert g.counts_by_type() == {"host": 1, "instance": 1, "zone": 1}
    assert g.counts_by_type(include_deleted=True) == {"host": 1, "instance": 2, "zone": 1}


def test_restored_edge_count_is_saved_not_recounted() -> None:
    g = small()
    state = g.__getstate__()
    assert state["edges"] == 3
    restored = EntityGraph.__new__(EntityGraph)
    restored.__setstate__({**state, "edges": 7})  # trusted as saved: no walk of the graph
    assert restored.edge_count == 7
    older = {k: v for k, v in state.items() if k != "edges"}  # a snapshot from before
    restored.__setstate__(older)
    assert restored.edge_count == 3


def test_the_purge_queue_drops_its_dead_entries_as_vertices_are_purged() -> None:
    """Purging leaves the queue's entry behind (a heap is not searched); once dead
    entries outnumber live ones, the queue is rebuilt from the deleted vertices."""
    g = EntityGraph()
    g.apply([v(f"x{i}", t=i, deleted=True) for i in range(3000)])
    for i in range(2500):
        g.apply([["V", f"x{i}"]])
    assert len(g._deleted) == 500
    assert len(g._queue) <= max(1024, 2 * len(g._deleted))
    assert g.deleted_before(at(2600)) == [f"x{i}" for i in range(2500, 2600)]
    assert len(g) == 500
    restored = pickle.loads(pickle.dumps(g, protocol=5))
    assert restored.deleted_before(at(3000)) == [f"x{i}" for i in range(2500, 3000)]


def test_deletions_late_by_their_own_clock_are_queued_in_time_order() -> None:
    """A source whose clock lags deletes "in the past" all the time: each such
    deletion goes into the purge queue by its time, while the state (``_deleted``,
    what a snapshot holds) keeps the order in which deletions happened."""
    g = EntityGraph()
    n = 2000
    g.apply([v(f"x{i}", 0) for i in range(n)])
    for i in range(n):  # newest first: every deletion is older than all queued
        g.apply([["v", f"x{i}", {IS_DELETED: True, SAMPLE_TS: ts(n - i)}, []]])
    assert list(g._deleted) == [f"x{i}" for i in range(n)]
    assert g.deleted_before(at(11)) == [f"x{i}" for i in range(n - 1, n - 11, -1)]
    restored = pickle.loads(pickle.dumps(g, protocol=5))
    assert restored.deleted_before(at(n + 1)) == g.deleted_before(at(n + 1))
    assert restored.deleted_before(at(n + 1)) == [f"x{i}" for i in reversed(range(n))]


def test_a_vertex_deleted_again_after_a_recreate_is_queued_once_at_its_new_time() -> None:
    g = EntityGraph()
    g.apply([v("a", 0), v("b", 0)])
    g.apply([["v", "a", {IS_DELETED: True, SAMPLE_TS: ts(100)}, []]])
    g.apply([["v", "a", {IS_DELETED: False, SAMPLE_TS: ts(150)}, []]])  # recreated
    g.apply([["v", "b", {IS_DELETED: True, SAMPLE_TS: ts(100)}, []]])
    g.apply([["v", "a", {IS_DELETED: True, SAMPLE_TS: ts(300)}, []]])  # deleted again
    assert g.deleted_before(at(200)) == ["b"]  # a's first entry is dead
    assert g.deleted_before(at(301)) == ["b", "a"]
    g.apply([["v", "a", {IS_DELETED: False, SAMPLE_TS: ts(310)}, []]])
    g.apply([["v", "a", {IS_DELETED: True, SAMPLE_TS: ts(100)}, []]])  # at an older time
    assert g.deleted_before(at(301)) == ["b", "a"]  # once, ties in deletion order
    assert list(g._deleted) == ["b", "a"]
