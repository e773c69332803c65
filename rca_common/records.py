"""Processed-event records: what the active publishes to the fanout exchange.

A record is the input event plus the graph changes it caused, stamped with a
gapless ``seq``, the leader ``epoch`` and ``processed_at`` (wall clock, for
display only: replay never reads it). One AMQP message carries a JSON array of
consecutive records. A ``barrier`` record marks a new epoch's cut-over point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

KIND_EVENT = "event"
KIND_BARRIER = "barrier"


@dataclass(slots=True)
class LogRecord:
    seq: int
    epoch: int
    processed_at: float
    event: dict[str, Any]  # the input event, wire form
    changes: list[list[Any]]
    kind: str = KIND_EVENT

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


def encode_records(records: list[LogRecord]) -> bytes:
    return orjson.dumps([r.to_wire() for r in records])


def decode_records(body: bytes) -> list[LogRecord]:
    data = orjson.loads(body)
    if isinstance(data, dict):
        data = [data]
    return [LogRecord.from_wire(d) for d in data]
