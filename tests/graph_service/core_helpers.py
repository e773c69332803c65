"""Small builders shared by the unit tests of the pure core (no broker, no database)."""

from __future__ import annotations

import itertools
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

from graph_service.processor import Processor
from graph_service.transformers import category_of, vertex_id
from rca_common.events import Event
from rca_common.timestamps import format_timestamp

T0 = datetime(2026, 1, 1, tzinfo=UTC)

_ids = itertools.count()


def at(seconds: float) -> datetime:
    """An aware UTC time ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    """The stored textual form of :func:`at`."""
    return format_timestamp(at(seconds))


def ev(
    entity_type: str,
    entity_id: str,
    t: float | datetime | str = 0,
    action: str = "update",
    *,
    source: str | None = None,
    event_id: str | None = None,
    **payload: Any,
) -> Event:
    """An event; ``t`` is seconds after T0, a datetime, or an ISO string."""
    when = at(t) if isinstance(t, int | float) else t
    return Event(
        event_id=event_id or f"ev-{next(_ids)}",
        source=source or entity_type,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        sample_timestamp=when,
        payload=payload,
    )


def end_snapshot(source: str, t: float, event_id: str | None = None) -> Event:
    return Event(
        event_id=event_id or f"ev-{next(_ids)}",
        source=source,
        entity_type=source,
        action="end_snapshot",
        sample_timestamp=at(t),
    )


def vid(entity_type: str, entity_id: str) -> str:
    return vertex_id(category_of(entity_type), entity_type, entity_id)


def bookkeeping(p: Processor) -> tuple[Any, ...]:
    """Everything besides the graph that replay must rebuild, in comparable form."""
    return (
        list(p.recent._order),
        list(p.recent._ids),
        p.recent.capacity,
        p.clock,
        {src: list(seen) for src, seen in p._round.items()},
        list(p._round),
        pickle.dumps(p.actions.export(), protocol=5),
    )


def graph_bytes(p: Processor) -> bytes:
    return pickle.dumps(p.graph, protocol=5)
