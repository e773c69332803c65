"""How long the active waits between snapshots (graph_service.snapshot_schedule)."""

from __future__ import annotations

from graph_service.snapshot_schedule import next_wait


def test_the_next_snapshot_is_due_before_the_last_one_is_too_old() -> None:
    """A takeover refuses snapshots older than SNAPSHOT_INTERVAL: the next one must be
    stored before that, with a margin for taking and storing it."""
    wait = next_wait(600.0, stored=7)
    assert 0 < wait < 600.0
    assert 600.0 - wait >= 60.0  # a minute at the default interval


def test_a_failed_snapshot_is_retried_sooner() -> None:
    assert next_wait(600.0, stored=None) < next_wait(600.0, stored=7) / 5


def test_a_slow_snapshot_is_started_early_enough() -> None:
    """When taking one takes longer than the margin allows, start the next earlier."""
    assert next_wait(600.0, stored=7, took_s=5.0) == next_wait(600.0, stored=7)
    assert next_wait(600.0, stored=7, took_s=100.0) == 400.0
    assert next_wait(10.0, stored=7, took_s=30.0) == 0.0
