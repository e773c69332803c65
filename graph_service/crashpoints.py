"""Named crash points for the failover drill: SIGKILL ourselves at an exact moment.

``DRILL_CRASH_AT=point:n`` kills the process the n-th time it passes ``point``.
Points: ``publish`` (a record batch handed to the broker, not yet confirmed),
``before_ack`` (records confirmed, collector messages not yet acked),
``snapshot`` (a snapshot encoded, not yet stored), ``replay`` (a takeover's
replay: passed once as it begins, even with nothing to replay after a hot
standby's replica, then once per record). Unset in production, where :func:`hit` is one compare.
"""

from __future__ import annotations

import os
import signal

from rca_common.logging import get_logger

log = get_logger(__name__)

POINTS = frozenset({"publish", "before_ack", "snapshot", "replay"})

_point: str | None = None
_at = 0
_count = 0


def configure(spec: str | None) -> None:
    """Parse ``point:n``; raises ValueError naming the problem."""
    global _point, _at, _count
    _point, _at, _count = None, 0, 0
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r} (one of {', '.join(sorted(POINTS))})")
    _point, _at = name, int(n or "1")


def arm(point: str, after: int) -> None:
    """Arm ``point`` to fire after ``after`` more passes (the drill's HTTP hook)."""
    configure(f"{point}:{after}")


def hit(point: str, times: int = 1) -> None:
    """Count ``times`` passes of ``point``; die when the configured count is reached."""
    global _count
    if point != _point:
        return
    _count += times
    if _count >= _at:
        log.warning("drill crash point reached: SIGKILL", point=point, count=_count)
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # PID 1 in a container ignores its own SIGKILL: die all the same
