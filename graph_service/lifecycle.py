"""The graph service's phases as one explicit state machine.

Every transition is checked against the table below, logged, and recorded in a
timeline that ``/status`` shows (when each phase began and how long it took).
Nothing else in the service keeps its own "am I active" flag: it asks this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rca_common.logging import get_logger

log = get_logger(__name__)


class Phase(StrEnum):
    STARTING = "starting"  # connecting, declaring the broker topology
    STANDBY = "standby"  # waiting for leadership
    ELECTING = "electing"  # holding the lock, opening a new epoch
    RECOVERING = "recovering"  # barrier, snapshot load and replay, or fresh get_all
    DRAINING = "draining"  # processing what waited in the live queue
    ACTIVE = "active"  # processing live events, evaluators enabled
    STOPPING = "stopping"  # two-stage shutdown
    STOPPED = "stopped"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.STANDBY, Phase.ELECTING, Phase.STOPPING}),
    Phase.STANDBY: frozenset({Phase.ELECTING, Phase.STOPPING}),
    Phase.ELECTING: frozenset({Phase.RECOVERING, Phase.STOPPING}),
    Phase.RECOVERING: frozenset({Phase.DRAINING, Phase.STOPPING}),
    Phase.DRAINING: frozenset({Phase.ACTIVE, Phase.STOPPING}),
    Phase.ACTIVE: frozenset({Phase.STOPPING}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class TransitionError(RuntimeError):
    pass


@dataclass
class PhaseSpan:
    phase: Phase
    started_at: float  # wall clock, for display
    started_mono: float
    ended_mono: float | None = None

    def as_dict(self) -> dict[str, Any]:
        end = self.ended_mono if self.ended_mono is not None else time.monotonic()
        return {
            "phase": self.phase.value,
            "started_at": self.started_at,
            "duration_s": round(end - self.started_mono, 6),
            "current": self.ended_mono is None,
        }


@dataclass
class Lifecycle:
    """Current phase, the timeline of phases, and facts recovery wants shown."""

    phase: Phase = Phase.STARTING
    timeline: list[PhaseSpan] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timeline.append(PhaseSpan(self.phase, time.time(), time.monotonic()))

    def enter(self, phase: Phase, **facts: Any) -> None:
        if phase not in ALLOWED[self.phase]:
            raise TransitionError(f"cannot go from {self.phase} to {phase}")
        now = time.monotonic()
        previous = self.timeline[-1]
        previous.ended_mono = now
        self.timeline.append(PhaseSpan(phase, time.time(), now))
        log.info(
            "phase",
            phase=phase.value,
            previous=self.phase.value,
            previous_duration_s=round(now - previous.started_mono, 6),
            **facts,
        )
        self.phase = phase

    def duration(self, phase: Phase) -> float | None:
        """Seconds spent in the most recent span of ``phase`` (None if never entered)."""
        for span in reversed(self.timeline):
            if span.phase is phase:
                end = span.ended_mono if span.ended_mono is not None else time.monotonic()
                return end - span.started_mono
        return None

    @property
    def is_active(self) -> bool:
        return self.phase is Phase.ACTIVE

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "timeline": [span.as_dict() for span in self.timeline],
            **self.info,
        }
