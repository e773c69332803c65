"""The benchmarks' yardstick (failover_drill/speed_probe.py): fixed work, really done."""

from __future__ import annotations

import orjson

from failover_drill.speed_probe import chase, json_document, probe, python_work, zeros


def test_python_work_does_all_of_its_operations() -> None:
    ops = 2500
    keys = [f"k{i % 997}" for i in range(ops)]
    assert python_work(ops) == sum(map(len, keys)) + len(set(keys))


def test_json_document_holds_the_copies_asked_for() -> None:
    records = orjson.loads(json_document(7))
    assert len(records) == 7
    assert records[0] == records[6]
    assert records[0]["changes"][0][0] == "v"


def test_the_memory_walk_reads_every_place_and_uses_what_it_reads() -> None:
    table = zeros(16)
    assert len(table) == 16 and not any(table)
    # a full-period walk: 16 steps end in 16 different places
    assert {chase(table, steps) for steps in range(1, 17)} == set(range(16))
    # each step adds the value it read: change one and the walk goes elsewhere
    before = [chase(table, steps) for steps in range(1, 17)]
    table[before[0]] = 3
    assert [chase(table, steps) for steps in range(1, 17)] != before


def test_probe_reports_three_speeds() -> None:
    figures = probe(rounds=1, ops=1000, copies=10, memory_slots=1 << 12, memory_steps=1000)
    assert set(figures) == {"python_ns_per_op", "json_mb_per_s", "memory_ns_per_read"}
    assert figures["python_ns_per_op"] > 0 and figures["json_mb_per_s"] > 0
    assert figures["memory_ns_per_read"] >= 0
