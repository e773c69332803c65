"""The graph service's use of the cyclic garbage collector (graph_service/gc_policy.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from graph_service import gc_policy
from graph_service.gc_policy import GcTimer, freeze_heap
from graph_service.metrics import Metrics


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_configure_raises_only_the_young_threshold(thresholds: None) -> None:
    gc.set_threshold(700, 11, 12)
    gc_policy.configure()
    assert gc.get_threshold() == (gc_policy.GEN0_THRESHOLD, 11, 12)


def test_freeze_heap_moves_live_objects_out_of_the_collectors_sight() -> None:
    kept = [{"n": [i]} for i in range(1000)]  # tracked: lists inside dicts

    def walked() -> set[int]:  # what a full collection walks, by identity
        return {id(o) for o in gc.get_objects()}

    assert not gc_policy.heap_frozen()  # (tests/conftest.py thaws after each test)
    assert id(kept[0]) in walked()
    freeze_heap("test")
    assert gc_policy.heap_frozen()
    assert gc.get_freeze_count() >= len(kept)
    assert not {id(x) for x in kept} & walked()
    gc_policy.thaw()
    assert not gc_policy.heap_frozen()
    assert {id(x) for x in kept} <= walked()


def test_timer_counts_and_reports_every_collection() -> None:
    seen: list[tuple[int, float]] = []
    timer = GcTimer()
    try:
        gc.collect(0)
        gc.collect()
        assert not seen  # the callback observes nothing itself: drain() does
        status = timer.status()
        assert status["threshold"] == list(gc.get_threshold())
        assert status["heap_frozen"] is False
    finally:
        timer.close()
    counted = list(timer.collections)
    gc.collect()
    assert timer.collections == counted  # closed: no longer called
    assert counted[0] >= 1 and counted[2] >= 1
    timer.drain(lambda generation, seconds: seen.append((generation, seconds)))
    assert len(seen) == sum(counted)  # each pause once, with its generation
    assert [sum(1 for g, _ in seen if g == n) for n in range(3)] == counted
    assert timer.seconds[2] == pytest.approx(sum(s for g, s in seen if g == 2))
    assert all(s >= 0 for _, s in seen)
    timer.drain(lambda generation, seconds: seen.append((generation, seconds)))
    assert len(seen) == sum(counted)  # drained: nothing twice


def test_timer_feeds_the_pause_histogram() -> None:
    metrics = Metrics()
    timer = GcTimer()
    try:
        gc.collect()
    finally:
        timer.close()
    timer.drain(metrics.observe_gc)
    count = metrics.registry.get_sample_value("rca_gc_pause_seconds_count", {"generation": "2"})
    assert count is not None and count >= 1


def test_gc_pause_nests() -> None:
    with gc_policy.gc_paused():
        with gc_policy.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
