"""The one textual form of a timestamp, and parsing it back to an aware UTC datetime.

Every event formats its sample time once and the graph compares parsed values,
never strings. A module of its own, with no dependencies, so that it can be
compiled with the rest of the pure core (see setup.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

# "YYYY-MM-DDTHH:MM:SS." by the second it names (an int, cheaper to build and hash
# than a tuple of fields): events come many to a second, and formatting every field
# of every event was a visible share of the processor's time. Cleared when full.
_SECOND_PREFIXES: dict[int, str] = {}
_SECOND_PREFIXES_MAX = 4096

# Bound once: looking ``datetime.fromisoformat`` up on the class was a third of each
# call's instructions (callgrind, compiled: 1,770 -> 1,225), and the replay parses
# every record's time, the live path every updated vertex's.
_fromisoformat = datetime.fromisoformat


def format_timestamp(ts: datetime) -> str:
    """The one textual form of a timestamp: ISO-8601 UTC with microseconds and ``Z``
    (what ``isoformat(timespec="microseconds")`` of the naive UTC time gives)."""
    if ts.tzinfo is not UTC and ts.utcoffset():
        ts = ts.astimezone(UTC)
    year, month, day = ts.year, ts.month, ts.day
    hour, minute, second = ts.hour, ts.minute, ts.second
    key = ((((year * 13 + month) * 32 + day) * 24 + hour) * 60 + minute) * 60 + second
    prefix = _SECOND_PREFIXES.get(key)
    if prefix is None:
        if len(_SECOND_PREFIXES) >= _SECOND_PREFIXES_MAX:
            _SECOND_PREFIXES.clear()
        prefix = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}."
        _SECOND_PREFIXES[key] = prefix
    return f"{prefix}{ts.microsecond:06d}Z"


def parse_timestamp(value: str | datetime) -> datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime (naive means UTC)."""
    ts = value if isinstance(value, datetime) else _fromisoformat(value)
    if ts.tzinfo is UTC:  # the stored form ("...Z") parses to UTC already
        return ts
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)
