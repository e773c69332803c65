"""Which replayed records a new leader re-evaluates (graph_service.evaluation.ReplayDirt)."""

from __future__ import annotations

from graph_service.evaluation import Evaluation, ReplayDirt

DS = {"entity_type": "nova.host"}
ACT = {"entity_type": "vitrage"}


def _v(vid: str) -> list[list[object]]:
    return [["v", vid, {}, []]]


def _run(enabled: dict[int, int], upto: int, records: list[tuple]) -> set[str]:  # type: ignore[type-arg]
    evaluation = Evaluation(None)
    dirt = ReplayDirt(evaluation, enabled, upto)
    for seq, epoch, event, changes in records:
        dirt(seq, epoch, event, changes)
    dirt.finish()
    return set(evaluation.dirty)


def test_live_evaluated_records_are_clean_but_the_last_trigger_group() -> None:
    records = [
        (11, 2, DS, _v("a")),
        (12, 2, ACT, _v("b")),
        (13, 2, DS, _v("c")),
        (14, 2, ACT, _v("d")),
    ]
    assert _run({2: 10}, 14, records) == {"c", "d"}


def test_a_leader_that_never_enabled_leaves_all_its_records_dirty() -> None:
    records = [(11, 2, DS, _v("a")), (12, 3, DS, _v("x")), (13, 3, DS, _v("y"))]
    assert _run({2: 10}, 13, records) == {"a", "x", "y"}


def test_records_before_an_enabling_pass_are_covered_by_it() -> None:
    records = [(5, 2, DS, _v("drained")), (8, 2, ACT, _v("pass")), (11, 2, DS, _v("live"))]
    assert _run({2: 8}, 11, records) == {"live"}


def test_an_enabling_pass_not_fully_in_the_log_does_not_count() -> None:
    records = [(5, 2, DS, _v("drained")), (6, 2, ACT, _v("half-pass"))]
    assert _run({2: 8}, 6, records) == {"drained", "half-pass"}
