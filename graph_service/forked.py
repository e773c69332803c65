"""Work on the process's state *as it is now*, in a forked child (Redis BGSAVE style).

The event loop forks; the child does the work on its copy-on-write image of the
parent, writes the result to an anonymous file and leaves through ``os._exit``;
the parent returns to its loop at once and awaits the child's exit through a
pidfd. The loop's pause is the fork itself (copying page tables: 10-20 ms for a
100k-vertex, 550 MB process), not the seconds the work takes, and the result is
consistent as of the fork while the parent goes on processing events.

Copy-on-write costs memory instead: the child touches every object's reference
count, so up to the graph's size is copied while it runs. ``gc.freeze()`` keeps
the parent's collector from writing to the old objects (and copying their pages)
until the last child is done; a heap that was frozen before stays frozen
afterwards (the service keeps its long-lived heap frozen: see :mod:`gc_policy`),
one that was not is unfrozen.

The child keeps only the result file and stdio: every inherited socket (the
leader-lock connection above all) is closed in the child, so a parent killed
while a child runs frees its lock and connections at once, not when the child ends.
Snapshots (:mod:`snapshots`) and the full topology of the HTTP API use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from graph_service.gc_policy import heap_frozen

FORK_AVAILABLE = hasattr(os, "fork")
ERROR_MAGIC = b"RCAE"  # a failed child's result file: this, then its traceback
ERROR_TEXT_MAX = 4000
_EXIT_FAILED = 70  # EX_SOFTWARE
_PR_SET_PDEATHSIG = 1

# Forked children still running: the parent's objects stay frozen until the last ends,
# and after it too if the heap was frozen before the first one began.
_children_running = 0
_unfreeze_after_children = False


class ForkError(RuntimeError):
    """No child could be started (no fork on this platform, no memory, no file)."""


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A finished child: its result file (the caller closes it) and how it ended."""

    fd: int
    pid: int
    status: int  # wait status; -1 when someone else reaped it
    pause_s: float  # time the event loop was blocked by the fork

    def failure(self, what: str) -> str | None:
        """Why the child failed (its traceback when it could write one), or None."""
        code = os.waitstatus_to_exitcode(self.status) if self.status >= 0 else None
        if code is None or code == 0:
            return None
        head = os.pread(self.fd, len(ERROR_MAGIC), 0)
        if head == ERROR_MAGIC:
            text = os.pread(self.fd, ERROR_TEXT_MAX, len(ERROR_MAGIC))
            return f"{what} child {self.pid} failed:\n{text.decode(errors='replace').strip()}"
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return f"{what} child {self.pid} {how}"


async def run_in_child(work: Callable[[int], None], name: str) -> ChildRun:
    """Fork; the child runs ``work(fd)`` on the state as of the fork, writing its result
    to ``fd`` (an anonymous file), then exits. Returns once the child has exited.

    ``work`` runs in the child only: it must not touch the event loop. Cancelling the
    await kills the child. Raises :class:`ForkError` when no child can be started.
    """
    global _children_running, _unfreeze_after_children
    if not FORK_AVAILABLE:
        raise ForkError("os.fork is not available on this platform")
    t0 = time.perf_counter()
    try:
        fd = _anonymous_file(name)
    except OSError as exc:
        raise ForkError(f"cannot create the result file of a {name} child: {exc}") from exc
    try:
        parent = os.getpid()
        if _children_running == 0:
            _unfreeze_after_children = not heap_frozen()
        gc.freeze()
        _children_running += 1
        try:
            pid = _fork()
        except BaseException as exc:
            _children_running -= 1
            _maybe_unfreeze()
            if isinstance(exc, OSError):  # ENOMEM, EAGAIN: no child, nothing to clean up
                raise ForkError(f"cannot fork a {name} child: {exc}") from exc
            raise
        if pid == 0:  # pragma: no cover - the child; coverage cannot see it
            _child_main(fd, parent, work)
        pause = time.perf_counter() - t0
        try:
            status = await _wait_child(pid)
        finally:
            _children_running -= 1
            _maybe_unfreeze()
    except BaseException:
        os.close(fd)
        raise
    return ChildRun(fd, pid, status, pause)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a child's result) to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _maybe_unfreeze() -> None:
    if _children_running == 0 and _unfreeze_after_children:
        gc.unfreeze()


def _anonymous_file(name: str) -> int:
    """A file with no name to clean up: a memfd, or a temp file unlinked at once."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(f"rca-{name}", getattr(os, "MFD_CLOEXEC", 0))
    fd, path = tempfile.mkstemp(prefix=f"rca-{name}-")
    os.unlink(path)
    return fd


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a multi-threaded process: the children
        # here only read the state, encode and write, taking no lock another
        # thread could hold (the codec's gc lock is reset by an at-fork hook).
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _child_main(
    fd: int, parent: int, work: Callable[[int], None]
) -> NoReturn:  # pragma: no cover - runs in the forked child
    """Never returns, never runs asyncio, atexit handlers or finalizers: ``os._exit``."""
    status = _EXIT_FAILED
    try:
        _detach_child(fd, parent)
        work(fd)
        status = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            text = traceback.format_exc(limit=20).encode(errors="replace")[-ERROR_TEXT_MAX:]
            os.ftruncate(fd, 0)
            os.pwrite(fd, ERROR_MAGIC + text, 0)
    finally:
        os._exit(status)


def _detach_child(keep_fd: int, parent: int) -> None:  # pragma: no cover - runs in the forked child
    """Stop sharing the parent's signal wake-up socket and every other descriptor."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # die with the parent (best effort)
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(_EXIT_FAILED)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, max(os.sysconf("SC_OPEN_MAX"), keep_fd + 1))


async def _wait_child(pid: int) -> int:
    """The child's wait status, awaited without blocking the loop; cancelling kills it."""
    loop = asyncio.get_running_loop()
    pidfd = _pidfd(pid)
    if pidfd is None:  # no pidfd (old kernel, not Linux): a worker thread waits
        try:
            _, status = await asyncio.shield(asyncio.to_thread(os.waitpid, pid, 0))
        except asyncio.CancelledError:
            _kill(pid)
            raise
        return status
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    except asyncio.CancelledError:
        _kill(pid)
        loop.remove_reader(pidfd)
        _reap_later(loop, pid, pidfd)
        raise
    loop.remove_reader(pidfd)
    os.close(pidfd)
    try:
        _, status = os.waitpid(pid, 0)  # it has exited: returns at once
    except ChildProcessError:  # reaped by someone else (a global child watcher)
        return -1
    return status


def _pidfd(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap_later(loop: asyncio.AbstractEventLoop, pid: int, pidfd: int) -> None:
    """Reap a killed child when it is gone, without waiting for it here."""

    def reap() -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        loop.remove_reader(pidfd)
        os.close(pidfd)

    try:
        loop.add_reader(pidfd, reap)
    except RuntimeError:  # the loop is closing: reap synchronously (the child is dying)
        reap()


__all__ = ["FORK_AVAILABLE", "ChildRun", "ForkError", "run_in_child", "write_all"]
