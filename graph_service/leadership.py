"""Leadership: a session-level PostgreSQL advisory lock on a dedicated connection.

Whoever holds the lock is the active; acquiring it opens a new epoch (a row in
``leader_epochs``) that stamps every record and snapshot the active writes.

Self-fencing (Patroni's watchdog rule): the active checks its lock connection
every ``LEADER_CHECK_INTERVAL`` and fences itself when no check has succeeded
within ``LEADER_FENCE_TIMEOUT`` (F). PostgreSQL frees the lock of a silent
connection only after its keepalive or user timeout fires on the server side;
we set those per session on the lock connection:

* ``tcp_user_timeout`` (default 5 s): unacknowledged data (our checks) drop the
  connection after this long — the usual case, since the active sends a check
  every fraction of a second;
* keepalives idle 2 s + 3 probes x 1 s ≈ 5 s for a connection with no traffic.

So with F = 3 s the old active has stopped about 2 s before a standby can get
the lock, unless it was frozen (a VM pause), which the epoch fencing covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

import asyncpg

from rca_common import db
from rca_common.logging import get_logger
from rca_common.settings import Settings

log = get_logger(__name__)


_CHECK_ERRORS = (TimeoutError, asyncpg.PostgresError, OSError, asyncpg.InterfaceError)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """Acquire, hold and watch the leader lock."""

    def __init__(self, settings: Settings, on_lost: Callable[[str], None]) -> None:
        self.settings = settings
        self.on_lost = on_lost
        self.holder = holder_name()
        self.epoch: int | None = None
        self._conn: asyncpg.Connection | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.last_ok: float | None = None
        self._lock = asyncio.Lock()

    def _server_settings(self) -> dict[str, str]:
        s = self.settings
        return {
            "tcp_keepalives_idle": str(s.lock_keepalives_idle),
            "tcp_keepalives_interval": str(s.lock_keepalives_interval),
            "tcp_keepalives_count": str(s.lock_keepalives_count),
            "tcp_user_timeout": str(s.lock_tcp_user_timeout),
            "application_name": f"rca-leader {self.holder}"[:63],
        }

    async def _connect(self) -> asyncpg.Connection:
        conn = await db.connect(
            self.settings.database_url,
            self.settings.db_schema,
            server_settings=self._server_settings(),
        )
        _client_keepalives(conn, self.settings)
        return conn

    async def wait_for_lock(self) -> None:
        """Block (on the server, not by polling) until the leader lock is ours."""
        conn = await self._connect()
        try:
            await db.migrate(conn, self.settings.db_schema)
            key = db.leader_lock_key(self.settings.db_schema)
            await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.last_ok = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch(), name="leader-watchdog")

    async def open_epoch(self) -> int:
        """Insert this leader's row in ``leader_epochs``: its fencing token."""
        assert self._conn is not None, "wait_for_lock() first"
        async with self._lock:
            epoch = await self._conn.fetchval(
                "INSERT INTO leader_epochs (holder) VALUES ($1) RETURNING epoch", self.holder
            )
        self.epoch = int(epoch)
        log.info("leadership acquired", epoch=self.epoch, holder=self.holder)
        return self.epoch

    async def _watch(self) -> None:
        """Check the lock connection; fence when no check succeeded within F.

        Each check may take what is left of F, but at least one check interval; and
        before fencing, one confirming check runs: after the loop itself stalled (a
        long synchronous pass), a healthy connection gets a fair check instead of a
        verdict. The lock is safe meanwhile: the kernel keeps answering the server's
        keepalives for a process whose loop is busy. A dead connection is fenced
        within F plus one check interval.
        """
        assert self._conn is not None
        s = self.settings
        while True:
            started = time.monotonic()
            last_ok = self.last_ok or started
            budget = max(s.leader_fence_timeout - (started - last_ok), s.leader_check_interval)
            try:
                await asyncio.wait_for(self._check(), budget)
                self.last_ok = time.monotonic()
            except _CHECK_ERRORS as exc:
                if time.monotonic() - last_ok >= s.leader_fence_timeout:
                    if await self._confirm():  # the failure overlapped a stall of our loop
                        continue
                    self._lost(
                        f"lock connection check failed for {s.leader_fence_timeout}s: {exc!r}"
                    )
                    return
            await asyncio.sleep(s.leader_check_interval)

    async def _confirm(self) -> bool:
        """One more check, now that the loop runs: a verdict needs a check that had
        the loop to itself. Costs at most one check interval on a dead connection."""
        try:
            await asyncio.wait_for(self._check(), max(self.settings.leader_check_interval, 0.2))
        except _CHECK_ERRORS:
            return False
        self.last_ok = time.monotonic()
        log.warning("lock check timed out while the event loop was busy; the connection is fine")
        return True

    async def _check(self) -> None:
        assert self._conn is not None
        async with self._lock:  # one query at a time on this connection
            await self._conn.fetchval("SELECT 1")

    def _lost(self, reason: str) -> None:
        log.error("leadership lost: fencing", reason=reason, epoch=self.epoch)
        if self._conn is not None:
            self._conn.terminate()
        self.on_lost(reason)

    async def release(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)
            if not self._conn.is_closed():
                self._conn.terminate()


def _client_keepalives(conn: asyncpg.Connection, settings: Settings) -> None:
    """The same timeouts on our end of the socket: a dead server host is noticed too."""
    transport = conn._transport  # asyncpg exposes no public socket accessor
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    opts = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), settings.lock_keepalives_idle),
        (
            socket.IPPROTO_TCP,
            getattr(socket, "TCP_KEEPINTVL", None),
            settings.lock_keepalives_interval,
        ),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), settings.lock_keepalives_count),
        (
            socket.IPPROTO_TCP,
            getattr(socket, "TCP_USER_TIMEOUT", None),
            settings.lock_tcp_user_timeout,
        ),
    ]
    for level, opt, value in opts:
        if opt is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, opt, value)
