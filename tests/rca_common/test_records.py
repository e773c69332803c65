"""The processed-event record messages: framed on the wire, JSON still readable."""

from __future__ import annotations

import orjson
import pytest

from rca_common.records import (
    FRAMED,
    KIND_BARRIER,
    Frames,
    LogRecord,
    MalformedFrame,
    decode_records,
    encode_records,
    iter_frames,
    record_weight,
)


def records() -> list[LogRecord]:
    event = {"event_id": "ev-é-1", "entity_type": "nova.host", "payload": {"x": [1, 2.5]}}
    return [
        LogRecord(7, 2, 1.5, event, [["v", "vid", {"state": "UP"}, ["old"]]]),
        LogRecord(0, 3, 2.0, {}, [], kind=KIND_BARRIER),
        LogRecord(8, 3, 2.25, {**event, "event_id": "ev-2"}, []),
    ]


def test_a_framed_message_round_trips() -> None:
    body = encode_records(records())
    assert body.startswith(FRAMED)
    assert [r.to_wire() for r in decode_records(body)] == [r.to_wire() for r in records()]


def test_a_frame_carries_the_logged_json_as_is() -> None:
    frames = list(iter_frames(encode_records(records())))
    assert [(f[0], f[1], f[2], f[4]) for f in frames] == [
        ("event", 7, 2, "ev-é-1"),
        ("barrier", 0, 3, ""),
        ("event", 8, 3, "ev-2"),
    ]
    assert frames[0][5] == records()[0].logged()
    assert orjson.loads(frames[0][5]) == {
        "event": records()[0].event,
        "changes": records()[0].changes,
    }


def test_frames_built_a_record_at_a_time_are_the_encoded_records() -> None:
    """What the active publishes (each event framed as it is applied) is what
    encode_records writes for the same records, byte for byte."""
    event, barrier, last = records()
    frames = Frames()
    frames.add_event(event.seq, event.epoch, event.processed_at, event.event, event.changes)
    frames.add(barrier)
    frames.add_event(last.seq, last.epoch, last.processed_at, last.event, last.changes)
    assert (frames.count, frames.first_seq, frames.last_seq) == (3, event.seq, last.seq)
    assert frames.weight == sum(record_weight(r.event, r.changes) for r in records())
    assert frames.take() == encode_records(records())
    assert (frames.count, frames.weight, bytes(frames.buffer)) == (0, 0, FRAMED)  # reset
    frames.add(last)
    assert frames.take() == encode_records([last])


def test_a_records_weight_counts_its_changes_and_steps() -> None:
    def weight(changes: int, steps: int = 0) -> int:
        payload = {"steps": [{"op": "activate"}] * steps} if steps else {"state": "UP"}
        return record_weight({"event_id": "e", "payload": payload}, [["v"]] * changes)

    assert (weight(0), weight(3), weight(2, steps=5)) == (1, 4, 8)
    assert record_weight({"event_id": "e"}, []) == 1  # a barrier's, a read-back record's


def test_a_json_array_of_records_is_still_read() -> None:
    body = orjson.dumps([r.to_wire() for r in records()])
    assert [r.to_wire() for r in decode_records(body)] == [r.to_wire() for r in records()]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (FRAMED + b"\x00\x01", "truncated header"),
        (encode_records(records())[:-1], "truncated"),
        (FRAMED + b"\x09" + bytes(30), "unknown kind 9"),
    ],
)
def test_a_bad_frame_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame, match=reason):
        list(iter_frames(body))
