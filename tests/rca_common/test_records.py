"""The processed-event record messages: framed on the wire, JSON still readable."""

from __future__ import annotations

import orjson
import pytest

from rca_common.records import (
    FRAMED,
    KIND_BARRIER,
    LogRecord,
    MalformedFrame,
    decode_records,
    encode_records,
    iter_frames,
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


def test_a_sealed_record_keeps_its_bytes_and_lets_go_of_its_objects() -> None:
    """What a publisher holds until its batch goes out: the same frames, byte for byte,
    from the encoded body and the event id alone."""
    sealed = records()
    for r in sealed:
        r.seal()
    assert encode_records(sealed) == encode_records(records())
    first, barrier, _ = sealed
    assert first.body == records()[0].logged() and first.changes == []
    assert first.event == {"event_id": "ev-é-1"}
    assert first.input_event() == records()[0].event
    assert barrier.body is None  # nothing to encode
    first.seal()  # twice: no change
    assert first.body == records()[0].logged()


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
