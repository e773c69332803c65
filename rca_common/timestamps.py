"""The one textual form of a timestamp, and parsing it back to an aware UTC datetime.

Every event formats its sample time once and the graph compares parsed values,
never strings. A module of its own, with no dependencies, so that it can be
compiled with the rest of the pure core (see setup.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

# "YYYY-MM-DDTHH:MM:" by (year, month, day, hour, minute): formatting every field of
# every event was a visible share of the processor's time. Cleared when full.
_MINUTE_PREFIXES: dict[tuple[int, int, int, int, int], str] = {}
_MINUTE_PREFIXES_MAX = 4096


def format_timestamp(ts: datetime) -> str:
    """The one textual form of a timestamp: ISO-8601 UTC with microseconds and ``Z``
    (what ``isoformat(timespec="microseconds")`` of the naive UTC time gives)."""
    if ts.tzinfo is not UTC and ts.utcoffset():
        ts = ts.astimezone(UTC)
    minute = (ts.year, ts.month, ts.day, ts.hour, ts.minute)
    prefix = _MINUTE_PREFIXES.get(minute)
    if prefix is None:
        if len(_MINUTE_PREFIXES) >= _MINUTE_PREFIXES_MAX:
            _MINUTE_PREFIXES.clear()
        year, month, day, hour, mins = minute
        prefix = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{mins:02d}:"
        _MINUTE_PREFIXES[minute] = prefix
    return "%s%02d.%06dZ" % (prefix, ts.second, ts.microsecond)  # noqa: UP031 (faster here)


def parse_timestamp(value: str | datetime) -> datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime (naive means UTC)."""
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if ts.tzinfo is UTC:  # the stored form ("...Z") parses to UTC already
        return ts
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)
