"""The decoder's fast path builds the same events pydantic does, or steps aside."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import orjson
import pytest

from collector_stub.stream import StreamConfig, UpdateStream
from collector_stub.topology import TopologyConfig, generate_topology
from rca_common.canonical import canonical_events, canonical_timestamp
from rca_common.events import (
    _ACTIONS,
    _EVENTS,
    SCHEMA_VERSION,
    Event,
    MalformedMessage,
    decode_events,
    decode_wire,
)


def stub_events() -> list[dict[str, Any]]:
    """What the collector stub sends: a whole snapshot and an update stream."""
    stream = UpdateStream(
        generate_topology(TopologyConfig(zones=2, hosts=6, instances_per_host=3, networks=2), 3),
        StreamConfig(seed=3),
    )
    return [*stream.snapshot()[0], *stream.take(2000)]


def canonical() -> dict[str, Any]:
    return Event(
        event_id="ev-1",
        source="nova.host",
        entity_type="nova.host",
        entity_id="host-1",
        action="update",
        sample_timestamp="2026-01-01T10:00:00.000001Z",
        payload={"name": "host-1", "state": "UP"},
    ).to_wire()


def assert_same_events(fast: list[Event], slow: list[Event]) -> None:
    assert fast == slow
    for a, b in zip(fast, slow, strict=True):
        assert a.model_fields_set == b.model_fields_set
        assert a.__pydantic_extra__ == b.__pydantic_extra__
        assert a.sample_timestamp.tzinfo is UTC and b.sample_timestamp.tzinfo is UTC
        assert type(a.action) is type(b.action)
        assert a.to_wire() == b.to_wire()


def test_the_stubs_events_take_the_fast_path_and_equal_pydantics() -> None:
    items = stub_events()
    body = orjson.dumps(items)
    events, wires = decode_wire(body)
    assert wires is not None, "the stub's events are canonical"
    assert wires == items
    assert_same_events(events, _EVENTS.validate_python(orjson.loads(body)))
    # the received dict is the event's wire form: the record logs the same bytes
    for event, received in zip(events, wires, strict=True):
        assert list(event.to_wire().items()) == list(received.items())


def test_events_built_on_the_fast_path_behave_as_models() -> None:
    (event,), _ = decode_wire(orjson.dumps(canonical()))
    copy = event.model_copy(update={"event_id": "ev-2"})
    assert copy.event_id == "ev-2" and event.event_id == "ev-1"
    assert "event_id" in copy.model_fields_set
    with pytest.raises(Exception, match="frozen"):
        event.event_id = "x"  # type: ignore[misc]
    assert Event.model_validate(event.model_dump()) == event


def moved(key: str) -> dict[str, Any]:
    data = canonical()
    value = data.pop(key)
    data[key] = value
    return data


NOT_CANONICAL = {
    "another key order": moved("event_id"),
    "an extra field": {**canonical(), "region": "eu"},
    "an offset": {**canonical(), "sample_timestamp": "2026-01-01T10:00:00.000001+00:00"},
    "no microseconds": {**canonical(), "sample_timestamp": "2026-01-01T10:00:00Z"},
    "a space for T": {**canonical(), "sample_timestamp": "2026-01-01 10:00:00.000001Z"},
    "a version as text": {**canonical(), "version": "1"},
    "a version as float": {**canonical(), "version": 1.0},
    "a version as bool": {**canonical(), "version": True},
    "another version": {**canonical(), "version": 2},
    "no version": {k: v for k, v in canonical().items() if k != "version"},
    "no entity_id": {k: v for k, v in canonical().items() if k != "entity_id"},
}
INVALID = {
    "an unknown action": {**canonical(), "action": "explode"},
    "an action that is not text": {**canonical(), "action": ["update"]},
    "an empty event_id": {**canonical(), "event_id": ""},
    "a numeric source": {**canonical(), "source": 5},
    "a payload list": {**canonical(), "payload": [1]},
    "30 February": {**canonical(), "sample_timestamp": "2026-02-30T10:00:00.000001Z"},
    "non-ASCII digits": {**canonical(), "sample_timestamp": "2026-01-01T10:00:00.00000\u0661Z"},
    "not an object": 5,
}


@pytest.mark.parametrize("item", NOT_CANONICAL.values(), ids=NOT_CANONICAL.keys())
def test_anything_else_goes_through_pydantic_with_the_same_result(item: Any) -> None:
    body = orjson.dumps([canonical(), item])
    assert canonical_events(orjson.loads(body), Event, _ACTIONS, SCHEMA_VERSION) is None
    events, wires = decode_wire(body)
    assert wires is None  # the records rebuild the wire form: to_wire()
    assert_same_events(events, _EVENTS.validate_python(orjson.loads(body)))


@pytest.mark.parametrize("item", INVALID.values(), ids=INVALID.keys())
def test_invalid_events_are_rejected_by_the_model_as_before(item: Any) -> None:
    assert canonical_events([item], Event, _ACTIONS, SCHEMA_VERSION) is None
    with pytest.raises(MalformedMessage, match="schema violation at 1"):
        decode_events(orjson.dumps([canonical(), item]))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("2026-01-01T10:00:00.000001Z", True),
        ("2026-01-01T10:00:00.000001+00:00", False),
        ("2026-01-01T10:00:00.00001Z", False),
        ("2026-13-01T10:00:00.000001Z", False),
        ("2026-01-01T10:00:00.000001z", False),
        (20260101, False),
    ],
)
def test_only_the_one_textual_form_is_a_canonical_timestamp(text: Any, ok: bool) -> None:
    ts = canonical_timestamp(text)
    assert (ts is not None) == ok
    if ok:
        assert ts is not None and ts.tzinfo is UTC and ts.microsecond == 1
