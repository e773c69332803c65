"""Which replayed records a new leader re-evaluates (graph_service.evaluation.ReplayDirt)."""

from __future__ import annotations

from graph_service.evaluation import Evaluation, ReplayDirt

DS = {"entity_type": "nova.host"}
ACT = {"entity_type": "vitrage"}


def _v(vid: str) -> list[list[object]]:
    return [["v", vid, {}, []]]


def _run(enabled: dict[int, int], records: list[tuple]) -> set[str]:  # type: ignore[type-arg]
    evaluation = Evaluation(None)
    dirt = ReplayDirt(evaluation.dirty, enabled)
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
    assert _run({2: 10}, records) == {"c", "d"}


def test_a_leader_that_never_enabled_leaves_all_its_records_dirty() -> None:
    records = [(11, 2, DS, _v("a")), (12, 3, DS, _v("x")), (13, 3, DS, _v("y"))]
    assert _run({2: 10}, records) == {"a", "x", "y"}


def test_records_before_an_enabling_pass_are_covered_by_it() -> None:
    records = [(5, 2, DS, _v("drained")), (8, 2, ACT, _v("pass")), (11, 2, DS, _v("live"))]
    assert _run({2: 8}, records) == {"live"}


def test_an_enabling_pass_not_fully_in_the_log_does_not_count() -> None:
    records = [(5, 2, DS, _v("drained")), (6, 2, ACT, _v("half-pass"))]
    assert _run({2: 8}, records) == {"drained", "half-pass"}


def test_a_later_enabling_pass_forgets_what_it_covered() -> None:
    """A hot standby learns the enabling passes as it follows the log."""
    dirty: dict[str, None] = {}
    dirt = ReplayDirt(dirty, {})
    dirt(1, 2, DS, _v("a"))
    dirt(2, 2, DS, _v("b"))
    assert set(dirty) == {"a", "b"}  # epoch 2 has not enabled its evaluators (yet)
    dirt.advance({2: 3})
    assert set(dirty) == {"a", "b"}  # its pass is not in the log replayed yet
    dirt(3, 2, ACT, _v("pass"))
    assert dirty == {}  # the pass at seq 3 evaluated everything up to it
    dirt(4, 2, DS, _v("live"))
    dirt.finish()
    assert set(dirty) == {"live"}  # the last trigger's group, as after any replay


def test_a_pass_learned_late_still_sorts_the_records_after_it() -> None:
    """One read of the log can cross a pass the standby learned of only before it."""
    dirty: dict[str, None] = {}
    dirt = ReplayDirt(dirty, {2: 3})
    for seq, event, vid in ((1, DS, "a"), (2, DS, "b"), (3, ACT, "pass"), (4, DS, "x"),
                            (5, ACT, "x-round"), (6, DS, "y")):  # fmt: skip
        dirt(seq, 2, event, _v(vid))
    dirt.finish()
    assert set(dirty) == {"y"}


def test_an_enabling_pass_keeps_what_came_after_it() -> None:
    dirty: dict[str, None] = {}
    dirt = ReplayDirt(dirty, {2: 5})
    dirt(4, 2, DS, _v("before"))
    dirt(6, 3, DS, _v("other-epoch"))  # a leader after epoch 2 that never enabled
    # no record of epoch 2 at seq 5 or later was replayed: its pass does not count
    assert set(dirty) == {"before", "other-epoch"}


def test_a_pass_learned_after_it_was_replayed_counts_at_once() -> None:
    dirty: dict[str, None] = {}
    dirt = ReplayDirt(dirty, {})
    dirt(1, 2, DS, _v("a"))
    dirt(2, 2, ACT, _v("pass"))
    assert set(dirty) == {"a", "pass"}
    dirt.advance({2: 2})  # the leader's row said so only now
    assert dirty == {}


def test_a_pass_whose_seqs_another_leader_reused_does_not_count() -> None:
    """Epoch 2 recorded its pass at seq 5 and died before its records reached the log;
    epoch 3 took over below 5 and never enabled: none of its records was evaluated."""
    records = [(4, 3, DS, _v("a")), (5, 3, DS, _v("b")), (6, 3, DS, _v("c"))]
    assert _run({2: 5}, records) == {"a", "b", "c"}


def test_a_pass_counts_at_the_first_record_of_its_epoch_after_it() -> None:
    """A leader that took over at seq 5 and enabled at once (pass at 5, a record of
    the leader before it): the pass counts at its own first record."""
    records = [(4, 2, DS, _v("drained")), (5, 2, DS, _v("drained-too")), (6, 3, DS, _v("live"))]
    assert _run({3: 5}, records) == {"live"}
