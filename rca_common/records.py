"""Processed-event records: what the active publishes to the fanout exchange.

A record is the input event plus the graph changes it caused, stamped with a
gapless ``seq``, the leader ``epoch`` and ``processed_at`` (wall clock, for
display only: replay never reads it). One AMQP message carries consecutive
records. A ``barrier`` record marks a new epoch's cut-over point.

On the wire a message is *framed* (:func:`encode_records`): each record is a
fixed binary header (kind, seq, epoch, processed_at, the lengths of the event id
and of the body) followed by the event id and the body, the JSON of
``{"event": ..., "changes": [...]}`` exactly as the log stores it. The persistor
copies those bytes into PostgreSQL without building a Python object from them
(parsing and re-encoding the JSON was most of its CPU). A message that does not
start with :data:`FRAMED` is read as a JSON array of record objects (or one
record object), the older form.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import orjson

KIND_EVENT = "event"
KIND_BARRIER = "barrier"

FRAMED = b"RCA-RECORDS/1\n"  # the first bytes of a framed message
CONTENT_TYPE = "application/x-rca-records"  # a framed message's AMQP content type
# kind (0 event, 1 barrier), seq, epoch, processed_at, len(event_id), len(body)
_HEADER = struct.Struct("<BqqdHI")
_KIND_CODES = {KIND_EVENT: 0, KIND_BARRIER: 1}
_KINDS = (KIND_EVENT, KIND_BARRIER)
_EVENT_CODE = _KIND_CODES[KIND_EVENT]


class LogRecord:
    """One record: ``event`` is the input event in wire form (only its event_id once
    ``body`` holds the logged JSON, as when read from a frame).

    A plain class, not a dataclass: the active builds one per event, and records.pxd
    gives it C fields when compiled (setup.py)."""

    __slots__ = ("body", "changes", "epoch", "event", "kind", "processed_at", "seq")

    def __init__(
        self,
        seq: int,
        epoch: int,
        processed_at: float,
        event: dict[str, Any],
        changes: list[list[Any]],
        kind: str = KIND_EVENT,
        body: bytes | None = None,
    ) -> None:
        self.seq = seq
        self.epoch = epoch
        self.processed_at = processed_at
        self.event = event
        self.changes = changes
        self.kind = kind
        self.body = body

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.seq,
            self.epoch,
            self.processed_at,
            self.event,
            self.changes,
            self.kind,
            self.body,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogRecord) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return (
            "LogRecord(seq=%r, epoch=%r, processed_at=%r, event=%r, changes=%r, kind=%r, body=%r)"  # noqa: UP031
            % self._fields()
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "epoch": self.epoch,
            "processed_at": self.processed_at,
            "event": self.event,
            "changes": self.changes,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LogRecord:
        return cls(
            seq=data["seq"],
            epoch=data["epoch"],
            processed_at=data["processed_at"],
            event=data.get("event") or {},
            changes=data.get("changes") or [],
            kind=data.get("kind", KIND_EVENT),
        )

    def logged(self) -> bytes:
        """What the log stores for this record: the JSON of its event and changes."""
        if self.body is not None:
            return self.body
        return orjson.dumps({"event": self.event, "changes": self.changes})

    def input_event(self) -> dict[str, Any]:
        """The whole input event (decoded from ``body`` when read from a frame)."""
        if self.body is not None:
            return orjson.loads(self.body)["event"]  # type: ignore[no-any-return]
        return self.event


class MalformedFrame(ValueError):
    pass


def record_weight(event: dict[str, Any], changes: list[list[Any]]) -> int:
    """About how much a record adds to a message: one, plus its changes and its
    evaluator steps (an action event's payload lists them)."""
    payload = event.get("payload")
    steps = payload.get("steps") if type(payload) is dict else None
    return 1 + len(changes) + (len(steps) if type(steps) is list else 0)


class Frames:
    """One framed message being built, a record at a time (see the module docstring).

    The active frames each record as it is applied: its event and changes are
    encoded while fresh in the caches, and only bytes wait for the batch to go out
    (no record object per event, nothing for the garbage collector to walk).
    """

    __slots__ = ("buffer", "count", "first_seq", "last_seq", "weight")

    def __init__(self) -> None:
        self.buffer = bytearray(FRAMED)
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0
        # about how much the message holds: one per record, plus its changes and its
        # evaluator steps (a message's size must stay far below the broker's limit)
        self.weight = 0

    def add_event(
        self,
        seq: int,
        epoch: int,
        processed_at: float,
        event: dict[str, Any],
        changes: list[list[Any]],
    ) -> None:
        """Frame an event record: ``event`` in wire form, ``changes`` as applied."""
        body = orjson.dumps({"event": event, "changes": changes})
        event_id = event["event_id"].encode()
        buffer = self.buffer
        buffer += _HEADER.pack(_EVENT_CODE, seq, epoch, processed_at, len(event_id), len(body))
        buffer += event_id
        buffer += body
        self.weight += record_weight(event, changes)
        self._counted(seq)

    def add(self, record: LogRecord) -> None:
        """Frame any record (one read back from a frame, a barrier)."""
        if record.kind == KIND_EVENT:
            event_id = record.event["event_id"].encode()
            body = record.logged()
        else:
            event_id = body = b""
        buffer = self.buffer
        buffer += _HEADER.pack(
            _KIND_CODES[record.kind],
            record.seq,
            record.epoch,
            record.processed_at,
            len(event_id),
            len(body),
        )
        buffer += event_id
        buffer += body
        self.weight += record_weight(record.event, record.changes)
        self._counted(record.seq)

    def _counted(self, seq: int) -> None:
        if self.count == 0:
            self.first_seq = seq
        self.last_seq = seq
        self.count += 1

    def take(self) -> bytes:
        """The message, and an empty buffer for the next one."""
        out = bytes(self.buffer)
        del self.buffer[len(FRAMED) :]
        self.count = self.weight = self.first_seq = self.last_seq = 0
        return out


def encode_records(records: list[LogRecord]) -> bytes:
    """One framed message (see the module docstring)."""
    frames = Frames()
    for record in records:
        frames.add(record)
    return frames.take()


def iter_frames(body: bytes) -> Iterator[tuple[str, int, int, float, str, bytes]]:
    """(kind, seq, epoch, processed_at, event_id, body) of each frame of a framed
    message; raises :class:`MalformedFrame` (nothing is yielded past a bad frame)."""
    view = memoryview(body)
    pos, end, size = len(FRAMED), len(body), _HEADER.size
    unpack = _HEADER.unpack_from
    n = 0
    while pos < end:
        if end - pos < size:
            raise MalformedFrame(f"frame {n}: truncated header")
        code, seq, epoch, processed_at, id_len, body_len = unpack(view, pos)
        pos += size
        if end - pos < id_len + body_len:
            raise MalformedFrame(f"frame {n}: truncated ({id_len + body_len} bytes announced)")
        if code >= len(_KINDS):
            raise MalformedFrame(f"frame {n}: unknown kind {code}")
        if not math.isfinite(processed_at):
            raise MalformedFrame(f"frame {n}: processed_at is not a finite number")
        try:
            event_id = str(view[pos : pos + id_len], "utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame(f"frame {n}: event id is not UTF-8") from None
        pos += id_len
        yield _KINDS[code], seq, epoch, processed_at, event_id, bytes(view[pos : pos + body_len])
        pos += body_len
        n += 1


def decode_records(body: bytes) -> list[LogRecord]:
    """Every record of a message, event and changes decoded (framed or JSON)."""
    if body.startswith(FRAMED):
        out = []
        for kind, seq, epoch, processed_at, _event_id, raw in iter_frames(body):
            data = orjson.loads(raw) if raw else {}
            event, changes = data.get("event") or {}, data.get("changes") or []
            out.append(LogRecord(seq, epoch, processed_at, event, changes, kind))
        return out
    data = orjson.loads(body)
    if isinstance(data, dict):
        data = [data]
    return [LogRecord.from_wire(d) for d in data]
