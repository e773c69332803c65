"""The benchmark's polling: sparse while far from the target, close near it."""

from __future__ import annotations

import pytest

from failover_drill.bench_deployment import Progress


def test_without_a_rate_it_polls_at_the_callers_interval() -> None:
    progress = Progress(1000)
    assert not progress.done(0, 10.0)
    assert progress.next_poll(0.02) == 0.02
    assert not progress.done(0, 10.1)  # not moving yet
    assert progress.next_poll(0.02) == 0.02


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (100, 0.45),  # 900 left at 1000/s: half of 0.9 s
        (500, 0.25),  # 500 left: half of 0.5 s
        (990, 0.02),  # 10 left: the caller's interval
    ],
)
def test_the_interval_is_half_the_remaining_time_at_the_latest_rate(
    count: int, expected: float
) -> None:
    progress = Progress(1000)
    progress.done(count - 100, 1.0)
    assert not progress.done(count, 1.1)  # 1000 events/s
    assert progress.next_poll(0.02) == pytest.approx(expected)


def test_far_from_the_target_it_polls_at_most_every_max_poll() -> None:
    progress = Progress(1_000_000)
    progress.done(0, 1.0)
    progress.done(100, 1.1)
    assert progress.next_poll(0.02) == Progress.MAX_POLL


def test_it_is_done_at_the_target() -> None:
    progress = Progress(1000)
    assert progress.done(1000, 1.0) and progress.done(1200, 1.1)
