"""The replay's per-record loop: a chunk of logged rows applied to a processor.

Plain, synchronous code (compiled with the pure core, setup.py): the takeover's
and the hot standby's replay spend their time here, one record after another,
and each record's work is small enough for the interpreter's own overhead per
record to show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from graph_service.processor import Processor

# (seq, epoch, the record's event in wire form, its changes) of each applied record
OnRecord = Callable[[int, int, dict[str, Any], list[Any]], None]


class ReplayGap(RuntimeError):
    """The log has a hole after the snapshot: replay cannot rebuild the graph exactly."""


def replay_rows(
    processor: Processor,
    rows: Iterable[Any],
    expected: int,
    min_epoch: int,
    on_record: OnRecord | None = None,
) -> tuple[int, int, int]:
    """Apply rows ``(seq, epoch, record)`` in order, from seq ``expected`` on.

    ``record`` is the log's JSON of ``{"event": ..., "changes": [...]}``. Rows of an
    epoch older than ``min_epoch`` are a dead leader's seqs that a newer leader
    reused: skipped and counted. A seq other than the expected one raises
    :class:`ReplayGap` (the rows before it are applied).

    Returns (the next expected seq, records applied, stale rows skipped).
    """
    done = 0
    skipped = 0
    loads = orjson.loads
    for seq, epoch, record in rows:
        if epoch < min_epoch:
            skipped += 1
            continue
        if seq != expected:
            raise ReplayGap(f"log gap: expected seq {expected}, found {seq}")
        data = loads(record)
        event = data["event"]
        changes = data["changes"]
        processor.replay_wire(event, changes)
        if on_record is not None:
            on_record(seq, epoch, event, changes)
        expected = seq + 1
        done += 1
    return expected, done, skipped
