"""How fast this machine is right now, measured on fixed work that no change to the
project alters: the yardstick for comparing benchmark figures across runs.

Machines of this kind vary by a third, some hours by half (README, Benchmarks): the
same code gave 97k and 63k processor events/s an hour apart. A figure is worth comparing
with another only next to the probe taken beside it; ``benchmarks/run.py`` takes one
before and one after each benchmark.

Three probes, each the best of a few short rounds (the best is the least disturbed):
``python_ns_per_op``, interpreter work like the processor's (dict lookups and
updates, small strings); ``json_mb_per_s``, decoding a fixed JSON document with
orjson (C code, like a replay's decoding); and ``memory_ns_per_read``, the latency of
a read from main memory, which the other two (their data in the caches) do not see
and a 100k-vertex graph's dicts wait on (a third of an update's time, README).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

import orjson

PYTHON_OPS = 200_000
JSON_COPIES = 400
ROUNDS = 5
MEMORY_SLOTS = 1 << 23  # 64 MB of int64: far beyond the caches
CACHED_SLOTS = 1 << 11  # 16 KB: within them
MEMORY_STEPS = 100_000


def python_work(ops: int) -> int:
    """Fixed interpreter work; returns a checksum so that it cannot be skipped."""
    counts: dict[str, int] = {}
    total = 0
    for i in range(ops):
        key = f"k{i % 997}"
        counts[key] = counts.get(key, 0) + 1
        total += len(key)
    return total + len(counts)


def chase(table: array[int], steps: int) -> int:
    """``steps`` reads of ``table`` (a power of two long, all zeros), each at a place
    that depends on the value read before: the next cannot start until the last is in.
    Returns the last place (a checksum)."""
    mask = len(table) - 1
    i = 0
    for _ in range(steps):
        i = (i * 1103515245 + 12345 + table[i]) & mask  # a full-period walk
    return i


def zeros(slots: int) -> array[int]:
    """An int64 array of zeros in memory of its own (copied: not the shared zero page)."""
    return array("q", bytes(8 * slots))


def json_document(copies: int) -> bytes:
    """A fixed document shaped like a log record (ids, timestamps, small dicts)."""
    record = {
        "event": {
            "event_id": "probe-1",
            "entity_type": "nova.instance",
            "sample_timestamp": "2026-01-01T00:00:00.000001Z",
            "payload": {"name": "vm-1", "state": "ACTIVE", "host": "host-1"},
        },
        "changes": [
            ["v", "5bba6ff8-9a7d-504d-91ef-1c5532053ec0", {"state": "ACTIVE"}, []],
            ["e", "a", "b", "contains", {"relationship_type": "contains"}, []],
        ],
    }
    return orjson.dumps([record] * copies)


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def probe(
    rounds: int = ROUNDS,
    ops: int = PYTHON_OPS,
    copies: int = JSON_COPIES,
    memory_slots: int = MEMORY_SLOTS,
    memory_steps: int = MEMORY_STEPS,
) -> dict[str, float]:
    """The three probes (under a second in all at the defaults)."""
    doc = json_document(copies)
    python_s = _best(lambda: python_work(ops), rounds)
    json_s = _best(lambda: orjson.loads(doc), rounds * 4)
    far, near = zeros(memory_slots), zeros(CACHED_SLOTS)
    # the same walk through a table in the caches: what is left is waiting on memory
    far_s = _best(lambda: chase(far, memory_steps), rounds)
    near_s = _best(lambda: chase(near, memory_steps), rounds)
    return {
        "python_ns_per_op": round(python_s / ops * 1e9, 1),
        "json_mb_per_s": round(len(doc) / json_s / 1e6, 1),
        "memory_ns_per_read": round(max(0.0, far_s - near_s) / memory_steps * 1e9, 1),
    }


if __name__ == "__main__":
    print(orjson.dumps(probe()).decode())
