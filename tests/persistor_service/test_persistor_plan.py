"""Batch planning and message validation: pure functions, no broker or database."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from persistor_service.parsing import MalformedRecords, parse_message
from persistor_service.plan import Discontinuity, LogState, plan_batch, to_row
from rca_common.records import encode_records
from tests.persistor_service.conftest import barrier, rec, recs


def seqs(plan) -> list[list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    return [[(row[0], row[1]) for row in segment.rows] for segment in plan.segments]


def test_consecutive_records_make_one_segment_and_advance_the_tail() -> None:
    plan = plan_batch(LogState(1, 10, 1), recs(11, 15))
    assert seqs(plan) == [[(11, 1), (12, 1), (13, 1), (14, 1), (15, 1)]]
    assert plan.state == LogState(1, 15, 1)
    assert not plan.jumps and not plan.suspects and plan.redeliveries == 0


def test_segments_past_the_logs_end_are_new_and_go_straight_in() -> None:
    assert [s.new for s in plan_batch(LogState(1, 10, 1), recs(11, 15)).segments] == [True]
    redelivered = plan_batch(LogState(1, 10, 1), recs(9, 12))  # 9 and 10 are logged
    assert [s.new for s in redelivered.segments] == [False]
    restart = plan_batch(LogState(1, 10, 1), [rec(11), barrier(2), rec(3, epoch=2)])
    assert [s.new for s in restart.segments] == [True, False]  # 3 of epoch 2 replaces 3


def test_row_holds_the_event_and_changes_only() -> None:
    record = rec(1)
    row = plan_batch(LogState(), [record]).segments[0].rows[0]
    assert row[:4] == (1, 1, record.processed_at, "ev-1-1")
    assert orjson.loads(row[4]) == {"event": record.event, "changes": record.changes}


def test_barrier_splits_the_batch_and_raises_the_fence() -> None:
    plan = plan_batch(LogState(1, 0, 1), [rec(1), rec(2), barrier(2), rec(3, epoch=2)])
    assert seqs(plan) == [[(1, 1), (2, 1)], [(3, 2)]]
    assert plan.segments[0].barrier is not None and plan.segments[0].barrier.epoch == 2
    assert plan.segments[1].barrier is None
    assert plan.state == LogState(2, 3, 2)


def test_older_epoch_after_the_fence_is_a_suspect_not_a_row() -> None:
    plan = plan_batch(LogState(1, 3, 1), [barrier(2), rec(4), rec(5), rec(4, epoch=2)])
    assert [(r.seq, r.epoch) for r in plan.suspects] == [(4, 1), (5, 1)]
    assert seqs(plan) == [[], [(4, 2)]]
    assert plan.state == LogState(2, 4, 2)


def test_newer_epoch_without_barrier_raises_the_fence() -> None:
    plan = plan_batch(LogState(1, 3, 1), [rec(4, epoch=3), rec(5, epoch=1)])
    assert plan.epoch_raises == [(1, 3, 4)]
    assert [(r.seq, r.epoch) for r in plan.suspects] == [(5, 1)]
    assert plan.state.current_epoch == 3


def test_gap_and_restart_are_reported_and_still_written() -> None:
    plan = plan_batch(LogState(1, 10, 1), [rec(13), rec(1, epoch=2)])
    assert [(j.kind, j.expected, j.actual) for j in plan.jumps] == [
        (Discontinuity.GAP, 11, 13),
        (Discontinuity.RESTART, 14, 1),
    ]
    assert seqs(plan) == [[(13, 1), (1, 2)]]
    assert plan.state == LogState(2, 1, 2)


def test_redelivery_is_neither_a_gap_nor_a_tail_move() -> None:
    plan = plan_batch(LogState(1, 10, 1), [*recs(8, 10), rec(11)])
    assert plan.redeliveries == 3
    assert not plan.jumps
    assert plan.state == LogState(1, 11, 1)


def test_duplicate_seq_in_one_segment_keeps_the_newest_epoch_once() -> None:
    plan = plan_batch(LogState(1, 0, 1), [rec(1), rec(2), rec(2), rec(2, epoch=2), rec(3, epoch=2)])
    assert seqs(plan) == [[(1, 1), (2, 2), (3, 2)]]


def test_planning_is_pure() -> None:
    state = LogState(1, 0, 1)
    batch = [rec(1), barrier(2), rec(2, epoch=2)]
    assert plan_batch(state, batch).state == plan_batch(state, batch).state
    assert state == LogState(1, 0, 1)


def test_parse_accepts_an_array_or_a_single_record() -> None:
    assert [r.seq for r in parse_message(encode_records(recs(1, 3)))] == [1, 2, 3]
    assert parse_message(orjson.dumps(barrier(4).to_wire()))[0].kind == "barrier"
    assert parse_message(b"[]") == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{nope", "not JSON"),
        (b"42", "not a record or an array"),
        (b"[1]", "record 0: not an object"),
        (b'[{"kind": "snapshot", "seq": 1, "epoch": 1, "processed_at": 0}]', "unknown kind"),
        (b'[{"seq": true, "epoch": 1, "processed_at": 0}]', "seq must be an integer"),
        (b'[{"seq": 9223372036854775808, "epoch": 1, "processed_at": 0}]', "seq must be"),
        (b'[{"seq": 1, "epoch": -1, "processed_at": 0}]', "epoch must be"),
        (b'[{"seq": 1, "epoch": 1, "processed_at": "now"}]', "processed_at must be"),
        (b'[{"seq": 0, "epoch": 1, "processed_at": 0, "event": {"event_id": "a"}}]', "starts at 1"),
        (b'[{"seq": 1, "epoch": 1, "processed_at": 0, "event": {}}]', "event_id"),
        (
            b'[{"seq": 1, "epoch": 1, "processed_at": 0, "event": {"event_id": "a\\u0000"}}]',
            "event_id",
        ),
        (b'[{"seq": 1, "epoch": 1, "processed_at": 0, "event": []}]', "event must be an object"),
    ],
)
def test_parse_rejects_what_postgres_or_the_log_could_not_take(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecords, match=reason):
        parse_message(body)


def test_a_framed_message_is_parsed_without_its_json() -> None:
    """The persistor keeps each framed record's body as bytes, exactly what the log
    stores, and reads the header fields only."""
    records = [*recs(1, 2), barrier(3), rec(3, epoch=3)]
    parsed = parse_message(encode_records(records))
    assert [(r.kind, r.seq, r.epoch) for r in parsed] == [(r.kind, r.seq, r.epoch) for r in records]
    for got, sent in zip(parsed, records, strict=True):
        if sent.kind == "event":
            assert got.body == orjson.dumps({"event": sent.event, "changes": sent.changes})
            assert to_row(got) == to_row(sent)
            assert got.input_event() == sent.event
        else:
            assert got.body == b""


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x01\x02", "truncated header"),
        (lambda b: b.replace(b"ev-1-1", b"ev\x00-1-"), "without NUL"),
        (lambda b: b.replace(b'{"event":{', b'["event",{'), "body is not an event"),
    ],
)
def test_a_bad_frame_rejects_the_whole_message(
    mangle: Callable[[bytes], bytes], reason: str
) -> None:
    body = mangle(encode_records(recs(1, 2)))
    with pytest.raises(MalformedRecords, match=reason):
        parse_message(body)
