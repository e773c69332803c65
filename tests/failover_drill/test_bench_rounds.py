"""The benchmark's snapshot-failover rounds: which round is reported, and the option."""

from __future__ import annotations

import shutil
from typing import Any

from failover_drill.bench import BenchConfig, median_round, parse_args, round_facts


def rnd(seconds: float, rate: int) -> dict[str, Any]:
    return {"kill_to_ready_s": seconds, "replay_rate": rate, "mode": "snapshot", "extra": 1}


def test_the_median_round_is_reported_whatever_the_order() -> None:
    rounds = [rnd(0.9, 60_000), rnd(0.6, 90_000), rnd(0.7, 80_000)]
    assert median_round(rounds) is rounds[2]
    assert median_round(list(reversed(rounds))) is rounds[2]


def test_of_an_even_count_the_lower_middle_round_is_reported() -> None:
    rounds = [rnd(0.9, 1), rnd(0.6, 2), rnd(0.7, 3), rnd(0.8, 4)]
    assert median_round(rounds)["kill_to_ready_s"] == 0.7
    assert median_round(rounds[:1]) is rounds[0]


def test_each_round_is_listed_with_its_own_figures_only() -> None:
    facts = round_facts(rnd(0.6, 90_000))
    assert facts["kill_to_ready_s"] == 0.6 and facts["replay_rate"] == 90_000
    assert "extra" not in facts


def rounds_of(argv: list[str]) -> int:
    cfg: BenchConfig = parse_args(argv)
    shutil.rmtree(cfg.workdir, ignore_errors=True)  # made for the run's logs
    return cfg.snapshot_rounds


def test_rounds_default_to_three_and_never_drop_below_one() -> None:
    assert rounds_of(["--sizes", "10k"]) == 3
    assert rounds_of(["--snapshot-rounds", "5"]) == 5
    assert rounds_of(["--snapshot-rounds", "0"]) == 1
