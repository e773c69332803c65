# cython: boundscheck=False, wraparound=False
# (compiled: every index below is within a length checked first)
"""The one textual form of a timestamp, and parsing it back to an aware UTC datetime.

Every event formats its sample time once and the graph compares parsed values
(datetimes, or the integers :func:`time_order` reads from the digits), never
strings. A module of its own, with no dependencies, so that it can be
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
    prefixes = _SECOND_PREFIXES  # compiled, a local typed dict: .get without a method call
    prefix = prefixes.get(key)
    if prefix is None:
        if len(prefixes) >= _SECOND_PREFIXES_MAX:
            prefixes.clear()
        prefix = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}."
        prefixes[key] = prefix
    return f"{prefix}{ts.microsecond:06d}Z"


def parse_timestamp(value: str | datetime) -> datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime (naive means UTC)."""
    ts = value if isinstance(value, datetime) else _fromisoformat(value)
    if ts.tzinfo is UTC:  # the stored form ("...Z") parses to UTC already
        return ts
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def time_order(value: str) -> int:
    """An integer that orders timestamps as their times do (not a count of anything).

    The stored form (:func:`format_timestamp`'s, 27 characters) is read digit by digit:
    the processor compares the time of every event with that of the vertex it updates,
    and parsing a datetime for that took 1,400 instructions (callgrind); reading the
    digits takes 400. Any other form is parsed (:func:`parse_timestamp`) and ordered
    the same way.
    """
    data = value.encode()  # compiled, indexing bytes reads a C char
    if len(data) == 27 and data[26] == 90 and data[19] == 46 and data[10] == 84:  # Z . T
        year = _digits(data, 0, 4)
        month = _digits(data, 5, 7)
        day = _digits(data, 8, 10)
        hour = _digits(data, 11, 13)
        minute = _digits(data, 14, 16)
        second = _digits(data, 17, 19)
        micro = _digits(data, 20, 26)
        if min(year, month, day, hour, minute, second, micro) >= 0:
            return _order(year, month, day, hour, minute, second, micro)
    ts = parse_timestamp(value)
    return _order(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond)


def _order(year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int) -> int:
    # months of 31 days: a total order that fits 64 bits, not a duration
    return (
        (((year * 12 + month - 1) * 31 + day - 1) * 24 + hour) * 3600 + minute * 60 + second
    ) * 1_000_000 + micro


def _digits(data: bytes, start: int, end: int) -> int:
    """The decimal number ``data[start:end]`` spells, or -1 if a byte is not a digit."""
    n = 0
    for i in range(start, end):
        d = data[i] - 48
        if d < 0 or d > 9:
            return -1
        n = n * 10 + d
    return n
