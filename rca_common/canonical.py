"""The decoder's fast path: events that arrive already in their canonical wire form.

A collector that sends exactly what ``Event.to_wire()`` produces (the stub does)
sends events that pydantic would accept unchanged. Validating each one through
pydantic cost about 4.5 µs; recognising the canonical form and building the
model directly costs a fraction of that (compiled, see setup.py), and the
received dict then doubles as the event's wire form in its log record, so the
active does not rebuild it.

This module only recognises a subset of what the model accepts; it decides
nothing. Anything else (another key order, an extra field, a timestamp with an
offset, a version given as a string, a missing default) returns ``None`` and the
message goes through pydantic, which stays the one definition of a valid event and
of the reason a bad one is rejected. tests/rca_common/test_canonical.py checks
that both paths build equal events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Event.to_wire()'s keys, in its order: a dict with exactly these is a candidate.
CANONICAL_KEYS = (
    "version",
    "event_id",
    "source",
    "entity_type",
    "entity_id",
    "action",
    "sample_timestamp",
    "payload",
)
TIMESTAMP_SHAPE = "0000-00-00T00:00:00.000000Z"  # format_timestamp's: digits at the zeros
_SEPARATORS = tuple((i, c) for i, c in enumerate(TIMESTAMP_SHAPE) if c != "0")

_new = object.__new__
_set = object.__setattr__


def canonical_timestamp(text: Any) -> datetime | None:
    """The UTC datetime of a timestamp in the one textual form, else ``None``."""
    if type(text) is not str or len(text) != len(TIMESTAMP_SHAPE):
        return None
    for i, c in _SEPARATORS:
        if text[i] != c:
            return None
    if not text.isascii():
        return None
    try:
        ts = datetime.fromisoformat(text)  # checks the digits and the calendar
    except ValueError:
        return None
    return ts if ts.tzinfo is UTC else None


def canonical_events(
    items: list[Any], model: type, actions: dict[str, Any], version: int
) -> list[Any] | None:
    """``model`` instances for ``items`` (decoded from JSON) when every item is
    canonical, else ``None``.

    ``actions`` maps each action's text to its enum member; ``version`` is the one
    schema version the fast path takes. The payload dict is shared, not copied:
    events are frozen and nobody mutates them.
    """
    out = []
    fields_set = set(CANONICAL_KEYS)
    for item in items:
        if type(item) is not dict or tuple(item) != CANONICAL_KEYS:
            return None
        v = item["version"]
        event_id = item["event_id"]
        source = item["source"]
        entity_type = item["entity_type"]
        entity_id = item["entity_id"]
        payload = item["payload"]
        if (
            type(v) is not int
            or v != version
            or type(event_id) is not str
            or not event_id
            or type(source) is not str
            or not source
            or type(entity_type) is not str
            or not entity_type
            or type(entity_id) is not str
            or type(payload) is not dict
        ):
            return None
        action = item["action"]
        action = actions.get(action) if type(action) is str else None
        ts = canonical_timestamp(item["sample_timestamp"])
        if action is None or ts is None:
            return None
        event = _new(model)
        _set(
            event,
            "__dict__",
            {
                "version": v,
                "event_id": event_id,
                "source": source,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "action": action,
                "sample_timestamp": ts,
                "payload": payload,
            },
        )
        _set(event, "__pydantic_fields_set__", fields_set.copy())
        _set(event, "__pydantic_extra__", {})
        _set(event, "__pydantic_private__", None)
        out.append(event)
    return out
