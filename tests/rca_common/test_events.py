"""The wire contract: decoding, encoding and timestamps of the event envelope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from rca_common.events import (
    SCHEMA_VERSION,
    Action,
    Event,
    MalformedMessage,
    decode_events,
    encode_events,
)
from rca_common.timestamps import format_timestamp, parse_timestamp, time_order


def wire(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "event_id": "ev-1",
        "source": "nova.host",
        "entity_type": "nova.host",
        "entity_id": "host-1",
        "action": "update",
        "sample_timestamp": "2026-01-01T10:00:00+02:00",
        "payload": {"name": "host-1", "state": "UP", "zone": "zone-1"},
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not ...}


def body(*events: dict[str, object]) -> bytes:
    return orjson.dumps(events[0] if len(events) == 1 else list(events))


# ------------------------------------------------------------------ decoding
def test_decode_single_object() -> None:
    [event] = decode_events(body(wire()))
    assert event.event_id == "ev-1"
    assert event.source == "nova.host"
    assert event.entity_type == "nova.host"
    assert event.entity_id == "host-1"
    assert event.action is Action.UPDATE
    assert event.version == SCHEMA_VERSION
    assert event.payload == {"name": "host-1", "state": "UP", "zone": "zone-1"}
    assert event.sample_timestamp == datetime(2026, 1, 1, 8, tzinfo=UTC)
    # The instant is kept; the offset is not: every timestamp is normalised to UTC.
    assert event.sample_timestamp.tzinfo is UTC


def test_decode_array_keeps_order() -> None:
    events = decode_events(
        body(wire(event_id="a"), wire(event_id="b", action="delete"), wire(event_id="c"))
    )
    assert [e.event_id for e in events] == ["a", "b", "c"]
    assert events[1].action is Action.DELETE


def test_decode_array_with_leading_whitespace_and_empty_array() -> None:
    assert [e.event_id for e in decode_events(b"  \n[" + body(wire())[0:] + b"]")] == ["ev-1"]
    assert decode_events(b"[]") == []


def test_end_snapshot_needs_no_entity_id_or_payload() -> None:
    [event] = decode_events(body(wire(entity_id=..., payload=..., action="end_snapshot")))
    assert event.action is Action.END_SNAPSHOT
    assert event.entity_id == ""
    assert event.payload == {}


@pytest.mark.parametrize("raw", [b"", b"nope", b"{", b"[1,", b'{"a": 1', b"\xff\xfe"])
def test_not_json(raw: bytes) -> None:
    with pytest.raises(MalformedMessage) as err:
        decode_events(raw)
    assert err.value.reason.startswith("not JSON")
    assert str(err.value) == err.value.reason


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_not_json(token: bytes) -> None:
    """NaN/Infinity are not JSON; orjson (the log encoder) would write them as null,
    so the graph a standby replays would differ from the active's."""
    raw = body(wire(payload={"load": 0})).replace(b'"load":0', b'"load":' + token)
    assert token in raw
    with pytest.raises(MalformedMessage) as err:
        decode_events(raw)
    assert err.value.reason.startswith("not JSON")


@pytest.mark.parametrize(
    ("over", "where", "words"),
    [
        ({"source": ...}, "source", "Field required"),
        ({"event_id": ...}, "event_id", "Field required"),
        ({"event_id": ""}, "event_id", "at least 1"),
        ({"action": "bogus"}, "action", "'update'"),
        ({"sample_timestamp": "2026-01-01T10:00:00"}, "sample_timestamp", "timezone"),
        ({"sample_timestamp": "yesterday"}, "sample_timestamp", "datetime"),
        ({"payload": [1, 2]}, "payload", "Input should be"),
        ({"entity_id": 42}, "entity_id", "string"),
    ],
)
def test_schema_violation_names_the_field(over: dict[str, object], where: str, words: str) -> None:
    with pytest.raises(MalformedMessage) as err:
        decode_events(body(wire(**over)))
    reason = err.value.reason
    assert reason.startswith(f"schema violation at {where}:"), reason
    assert words in reason, reason
    assert "(1 error(s))" in reason


def test_schema_violation_in_array_names_the_element() -> None:
    with pytest.raises(MalformedMessage) as err:
        decode_events(body(wire(event_id="ok"), wire(event_id="bad", action="explode")))
    assert err.value.reason.startswith("schema violation at 1.action:")


def test_schema_violation_counts_errors_and_handles_non_object() -> None:
    with pytest.raises(MalformedMessage) as err:
        decode_events(b'{"event_id": "x"}')
    assert "(4 error(s))" in err.value.reason  # source, entity_type, action, sample_timestamp
    with pytest.raises(MalformedMessage) as err:
        decode_events(b"42")
    assert err.value.reason.startswith("schema violation at body:")


def test_unknown_top_level_fields_are_kept_and_survive_a_round_trip() -> None:
    raw = body(wire(trace={"span": "abc", "hops": [1, 2]}, priority=7))
    [event] = decode_events(raw)
    assert event.model_extra == {"trace": {"span": "abc", "hops": [1, 2]}, "priority": 7}
    again = decode_events(encode_events([event]))
    assert again == [event]
    assert again[0].model_extra == {"trace": {"span": "abc", "hops": [1, 2]}, "priority": 7}
    assert orjson.loads(encode_events([event]))[0]["trace"] == {"span": "abc", "hops": [1, 2]}


def test_encode_is_a_json_array_in_the_one_timestamp_form() -> None:
    events = decode_events(body(wire(event_id="a"), wire(event_id="b", action="snapshot")))
    data = orjson.loads(encode_events(events))
    assert isinstance(data, list)
    assert [d["event_id"] for d in data] == ["a", "b"]
    assert data[0]["sample_timestamp"] == "2026-01-01T08:00:00.000000Z"
    assert data[1]["action"] == "snapshot"
    assert data[0]["version"] == SCHEMA_VERSION
    assert decode_events(encode_events(events)) == events


def test_events_are_frozen() -> None:
    [event] = decode_events(body(wire()))
    with pytest.raises(ValueError, match="frozen"):
        event.event_id = "other"  # type: ignore[misc]


def test_to_wire_is_json_ready() -> None:
    [event] = decode_events(body(wire(extra_field="x")))
    data = event.to_wire()
    assert data["action"] == "update" and type(data["action"]) is str
    assert data["sample_timestamp"] == "2026-01-01T08:00:00.000000Z"
    assert data["extra_field"] == "x"
    assert orjson.loads(orjson.dumps(data)) == data


def test_to_wire_is_what_pydantic_would_dump() -> None:
    """to_wire is written by hand for speed: it must not drift from the model."""
    [event] = decode_events(body(wire(extra_field={"nested": [1, 2]}, payload={"a": {"b": 1}})))
    expected = event.model_dump(mode="json")
    expected["sample_timestamp"] = format_timestamp(event.sample_timestamp)
    data = event.to_wire()
    assert data == expected
    assert list(data) == list(expected)  # the same key order: the same log bytes
    assert set(Event.model_fields) <= set(data)


# ---------------------------------------------------------------- timestamps
def test_format_timestamp_converts_to_utc_with_microseconds() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 1, 10, tzinfo=plus2)) == "2026-01-01T08:00:00.000000Z"
    assert format_timestamp(datetime(2026, 1, 1, 10, tzinfo=UTC)) == "2026-01-01T10:00:00.000000Z"
    minus5 = timezone(timedelta(hours=-5))
    assert (
        format_timestamp(datetime(2025, 12, 31, 22, 30, 0, 5, tzinfo=minus5))
        == "2026-01-01T03:30:00.000005Z"
    )


def test_parse_timestamp_gives_aware_utc() -> None:
    for text in ("2026-01-01T10:00:00+02:00", "2026-01-01T08:00:00Z", "2026-01-01T08:00:00"):
        parsed = parse_timestamp(text)
        assert parsed == datetime(2026, 1, 1, 8, tzinfo=UTC)
        assert parsed.utcoffset() == timedelta(0)
    dt = datetime(2026, 1, 1, 10, tzinfo=timezone(timedelta(hours=2)))
    assert parse_timestamp(dt) == dt and parse_timestamp(dt).utcoffset() == timedelta(0)


def test_timestamps_compare_as_instants_not_strings() -> None:
    later_text, earlier_text = "2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z"
    assert later_text > earlier_text  # as strings the +02:00 one looks later...
    assert parse_timestamp(later_text) < parse_timestamp(earlier_text)  # ...but is earlier
    assert format_timestamp(parse_timestamp(later_text)) < format_timestamp(
        parse_timestamp(earlier_text)
    )


def test_format_parse_round_trip() -> None:
    dt = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert parse_timestamp(format_timestamp(dt)) == dt
    text = "2026-03-04T05:06:07.891011Z"
    assert format_timestamp(parse_timestamp(text)) == text


def test_event_model_keeps_action_enum_and_extra_through_construction() -> None:
    event = Event(
        event_id="x",
        source="s",
        entity_type="nova.host",
        entity_id="h",
        action="delete",
        sample_timestamp="2026-01-01T00:00:00Z",
        note="kept",
    )
    assert event.action is Action.DELETE
    assert event.to_wire()["note"] == "kept"


def _reference_format(ts: datetime) -> str:
    """The definition format_timestamp's fast path must keep to."""
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    return ts.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def test_format_timestamp_is_isoformat_of_the_utc_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from pydantic_core import TzInfo

    import rca_common.timestamps as timestamps

    # A tiny prefix cache: clearing it when full must not change any result.
    monkeypatch.setattr(timestamps, "_SECOND_PREFIXES_MAX", 3)
    zones = [None, UTC, timezone(timedelta(0)), timezone(timedelta(hours=2))]
    zones += [timezone(timedelta(hours=-5, minutes=-30)), TzInfo(0), TzInfo(-3600)]
    rng = random.Random(7)
    edges = [datetime(1, 1, 1, 12, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999)]
    for ts in edges + [
        datetime(
            rng.randint(1, 9998),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.choice([0, 5, rng.randint(0, 999_999)]),
            tzinfo=rng.choice(zones),
        )
        for _ in range(3000)
    ]:
        assert format_timestamp(ts) == _reference_format(ts), ts
    assert len(timestamps._SECOND_PREFIXES) <= 3


def test_parse_timestamp_of_the_stored_form_is_utc_and_round_trips() -> None:
    text = "2026-03-04T05:06:07.000008Z"
    parsed = parse_timestamp(text)
    assert parsed == datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=UTC) and parsed.tzinfo is UTC
    assert format_timestamp(parsed) == text


def test_time_order_orders_as_time_does_in_any_form() -> None:
    import random

    rng = random.Random(11)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    times = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    for _ in range(2000):
        base = datetime(rng.randint(1971, 2100), rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
        times.append(
            base
            + timedelta(seconds=rng.randint(0, 86_400 * 40), microseconds=rng.randint(0, 999_999))
        )
    # neighbours across second, day, month and year boundaries
    edge = datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    times += [edge, edge + timedelta(microseconds=1), edge - timedelta(days=334)]
    texts = []
    for ts in times:
        texts.append(format_timestamp(ts))  # the stored form: read digit by digit
        texts.append(ts.astimezone(rng.choice(zones)).isoformat())  # any other: parsed
    by_time = sorted(texts, key=parse_timestamp)
    assert [parse_timestamp(t) for t in sorted(texts, key=time_order)] == [
        parse_timestamp(t) for t in by_time
    ]
    for text in texts:  # the same instant gives the same order in every form
        assert time_order(text) == time_order(format_timestamp(parse_timestamp(text)))


def test_time_order_parses_what_only_looks_like_the_stored_form() -> None:
    # 27 characters with Z, T and . in place, but not digits: parsed, so it fails as
    # parsing does, instead of giving a number
    with pytest.raises(ValueError):
        time_order("2026-01-01T00:00:0x.000000Z")
    assert time_order("2026-01-01T00:00:01.000000Z") > time_order("2026-01-01T00:00:00.999999Z")
    assert time_order("2026-01-01T01:00:00.000000+01:00") == time_order("2026-01-01T00:00:00Z")
