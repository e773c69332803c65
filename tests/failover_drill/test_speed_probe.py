"""The benchmarks' yardstick (failover_drill/speed_probe.py): fixed work, really done."""

from __future__ import annotations

import orjson

from failover_drill.speed_probe import json_document, probe, python_work


def test_python_work_does_all_of_its_operations() -> None:
    ops = 2500
    keys = [f"k{i % 997}" for i in range(ops)]
    assert python_work(ops) == sum(map(len, keys)) + len(set(keys))


def test_json_document_holds_the_copies_asked_for() -> None:
    records = orjson.loads(json_document(7))
    assert len(records) == 7
    assert records[0] == records[6]
    assert records[0]["changes"][0][0] == "v"


def test_probe_reports_both_speeds() -> None:
    figures = probe(rounds=1, ops=1000, copies=10)
    assert set(figures) == {"python_ns_per_op", "json_mb_per_s"}
    assert all(value > 0 for value in figures.values())
