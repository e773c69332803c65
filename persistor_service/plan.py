"""What one batch does to the log, decided before touching PostgreSQL.

Planning is a pure function of the persistor's :class:`LogState` and the
batch's records in stream order. The new state is applied only after the
transaction commits, so a failed commit is retried by planning again from the
same state: retries never double-count or move the fence early.

The fence (Kleppmann's fencing token) is ``current_epoch``: it rises at a
barrier, or at the first record of a newer epoch. A record of an older epoch
after that point is a zombie's *suspect*; the store keeps it out of the log
unless the very same (seq, epoch) is already there, which means it is a
redelivery of a record committed before the barrier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rca_common.records import KIND_BARRIER, LogRecord

# One ``events`` row: (seq, epoch, processed_at, event_id, record bytes).
Row = tuple[int, int, float, str, bytes]


@dataclass(frozen=True, slots=True)
class LogState:
    """What the persistor knows about the log between batches."""

    current_epoch: int = 0  # the fence: records of older epochs are zombies'
    last_seq: int = 0  # seq of the last event record written
    last_epoch: int = 0  # epoch of that record


class Discontinuity(StrEnum):
    GAP = "gap"  # a seq was skipped
    RESTART = "restart"  # the sequence went backwards (a new epoch reusing seqs)


@dataclass(frozen=True, slots=True)
class SeqJump:
    kind: Discontinuity
    expected: int
    actual: int
    epoch: int
    previous_epoch: int


@dataclass(slots=True)
class Segment:
    """Rows written together, then the barrier (if any) that closed them. ``new``: every
    row's seq is past the log's end as this persistor knew it, so that the rows can be
    copied straight into the log (no row can collide, unless the log moved under us)."""

    rows: list[Row]
    barrier: LogRecord | None = None
    new: bool = False


@dataclass(slots=True)
class BatchPlan:
    segments: list[Segment]
    suspects: list[LogRecord] = field(default_factory=list)
    jumps: list[SeqJump] = field(default_factory=list)
    epoch_raises: list[tuple[int, int, int]] = field(default_factory=list)  # (old, new, seq)
    stale_barriers: list[int] = field(default_factory=list)
    redeliveries: int = 0
    state: LogState = field(default_factory=LogState)

    @property
    def rows(self) -> int:
        return sum(len(s.rows) for s in self.segments)

    @property
    def last_processed_at(self) -> float | None:
        for segment in reversed(self.segments):
            if segment.rows:
                return max(row[2] for row in segment.rows)
        return None


def to_row(record: LogRecord) -> Row:
    return (
        record.seq,
        record.epoch,
        float(record.processed_at),
        record.event["event_id"],
        record.logged(),
    )


def plan_batch(state: LogState, records: list[LogRecord]) -> BatchPlan:
    """Split ``records`` into segments at barriers and classify every record."""
    plan = BatchPlan(segments=[])
    current, last, last_epoch = state.current_epoch, state.last_seq, state.last_epoch
    rows: dict[int, Row] = {}  # by seq: one upsert may not touch a row twice
    known_end = state.last_seq  # the log's end when the batch started

    def segment(barrier: LogRecord | None = None) -> Segment:
        new = all(seq > known_end for seq in rows)
        return Segment(list(rows.values()), barrier, new)

    for record in records:
        if record.kind == KIND_BARRIER:
            plan.segments.append(segment(record))
            rows = {}
            if record.epoch < current:
                plan.stale_barriers.append(record.epoch)
            current = max(current, record.epoch)
            continue
        if record.epoch < current:
            plan.suspects.append(record)
            continue
        if record.epoch > current:
            plan.epoch_raises.append((current, record.epoch, record.seq))
            current = record.epoch
        if record.seq != last + 1:
            if record.epoch == last_epoch and record.seq <= last:
                plan.redeliveries += 1
            else:
                kind = Discontinuity.GAP if record.seq > last else Discontinuity.RESTART
                plan.jumps.append(SeqJump(kind, last + 1, record.seq, record.epoch, last_epoch))
        if record.seq > last or record.epoch != last_epoch:
            last, last_epoch = record.seq, record.epoch
        held = rows.get(record.seq)
        if held is None or held[1] < record.epoch:
            rows[record.seq] = to_row(record)
    if rows:
        plan.segments.append(segment())
    plan.state = LogState(current, last, last_epoch)
    return plan
