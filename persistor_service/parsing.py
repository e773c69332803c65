"""Validation of processed-event messages before anything reaches PostgreSQL.

A value PostgreSQL would refuse (a seq beyond bigint, a NUL in an event id)
would make the batch fail forever and stall the log behind it, so such a
message is rejected here, whole: dropping part of a message would cut a hole
in the sequence.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from rca_common.records import (
    FRAMED,
    KIND_BARRIER,
    KIND_EVENT,
    LogRecord,
    MalformedFrame,
    iter_frames,
)

BIGINT_MAX = 2**63 - 1


class MalformedRecords(ValueError):
    """A message that is not a record or a JSON array of records; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_message(body: bytes) -> list[LogRecord]:
    """The records of one message, in order; raises :class:`MalformedRecords`."""
    if body.startswith(FRAMED):
        return _parse_frames(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRecords(f"not JSON: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise MalformedRecords(f"not a record or an array of records: {type(data).__name__}")
    return [_record(i, item) for i, item in enumerate(data)]


def _record(index: int, data: Any) -> LogRecord:
    """One validated record. The checks run for every record: keep them cheap."""
    if type(data) is not dict:
        raise MalformedRecords(f"record {index}: not an object but {type(data).__name__}")
    kind = data.get("kind", KIND_EVENT)
    seq, epoch = data.get("seq"), data.get("epoch")
    processed_at = data.get("processed_at")
    event, changes = data.get("event"), data.get("changes")
    event = {} if event is None else event
    changes = [] if changes is None else changes
    ok = (
        _is_int(seq)
        and _is_int(epoch)
        and 0 <= seq <= BIGINT_MAX  # type: ignore[operator]
        and 0 <= epoch <= BIGINT_MAX  # type: ignore[operator]
        and _is_number(processed_at)
        and type(event) is dict
        and type(changes) is list
    )
    if ok and kind == KIND_EVENT:
        event_id = event.get("event_id")
        ok = seq >= 1 and type(event_id) is str and event_id != "" and "\x00" not in event_id  # type: ignore[operator]
    elif ok:
        ok = kind == KIND_BARRIER
    if not ok:
        raise MalformedRecords(f"record {index}: {_why(data)}")
    return LogRecord(seq, epoch, processed_at, event, changes, kind)  # type: ignore[arg-type]


def _parse_frames(body: bytes) -> list[LogRecord]:
    """A framed message: the header fields are checked as a JSON record's are; the
    body is kept as bytes (the log stores it as is), checked only for its outline."""
    out: list[LogRecord] = []
    try:
        for i, (kind, seq, epoch, processed_at, event_id, raw) in enumerate(iter_frames(body)):
            if not (0 <= seq <= BIGINT_MAX and 0 <= epoch <= BIGINT_MAX):
                raise MalformedRecords(f"record {i}: seq and epoch must be in [0, 2^63)")
            if kind == KIND_EVENT:
                if seq < 1:
                    raise MalformedRecords(f"record {i}: an event's seq starts at 1")
                if not event_id or "\x00" in event_id:
                    raise MalformedRecords(
                        f"record {i}: event id must be a non-empty string without NUL"
                    )
                if not (raw.startswith(b'{"event":{') and raw.endswith(b"}")):
                    raise MalformedRecords(f"record {i}: body is not an event and its changes")
            out.append(LogRecord(seq, epoch, processed_at, {"event_id": event_id}, [], kind, raw))
    except MalformedFrame as exc:
        raise MalformedRecords(str(exc)) from None
    return out


def _why(data: dict[str, Any]) -> str:
    """The reason a record failed the fast checks (the slow path, for the dead letter)."""
    kind = data.get("kind", KIND_EVENT)
    if kind not in (KIND_EVENT, KIND_BARRIER):
        return f"unknown kind {kind!r}"
    for name in ("seq", "epoch"):
        value = data.get(name)
        if not _is_int(value) or not 0 <= value <= BIGINT_MAX:
            return f"{name} must be an integer in [0, 2^63), got {value!r}"
    if not _is_number(data.get("processed_at")):
        return f"processed_at must be a number, got {data.get('processed_at')!r}"
    event, changes = data.get("event"), data.get("changes")
    if event is not None and not isinstance(event, dict):
        return "event must be an object"
    if changes is not None and not isinstance(changes, list):
        return "changes must be an array"
    if data["seq"] < 1:
        return "an event's seq starts at 1"
    event_id = (event or {}).get("event_id")
    return f"event.event_id must be a non-empty string without NUL, got {event_id!r}"


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, which is an int subclass


def _is_number(value: object) -> bool:
    return (type(value) is float or type(value) is int) and math.isfinite(value)  # type: ignore[arg-type]
