"""How the graph service uses Python's cyclic garbage collector.

The entity graph is millions of long-lived objects (adjacency dicts, vertex and
edge property dicts) without reference cycles: reference counting frees them,
and the cyclic collector has nothing to find in them. A full collection still
walks every one: 0.4 to 0.5 s per collection at 100k vertices. Under load the
records held until their publisher confirm survive the young generations, so
full collections come often: measured in the end-to-end benchmark, the
collector took a third of the active's CPU with persistency on.

Two measures, both measured in that benchmark (persistency on, no templates:
15k events/s before, 19k with the first, 21k with both):

* the young generation is collected every ``GEN0_THRESHOLD`` allocations, not
  700 (:func:`configure`): a record lives from its event's processing to its
  batch's confirm, a few milliseconds, which at the default outlived two young
  collections and promoted it to the old generation, whose growth is what
  triggers full collections;
* the long-lived heap lives in the permanent generation (``gc.freeze()``) once
  the graph is built or restored (:func:`freeze_heap` when an instance goes
  active, when a standby has loaded its snapshot or replica), and again at every
  forked snapshot (which must freeze before the fork anyway, and leaves a frozen
  heap frozen; see :mod:`snapshots`). What the collector walks afterwards is
  what was allocated since the last freeze.

The price: objects frozen while alive that later become unreachable *cycles*
(a finished asyncio task holding its exception, say) are not collected until
the process ends. Those are the few objects in flight at the moment of a
freeze, once per snapshot interval; reference counting still frees everything
without cycles, which is all of the graph. Measured: a collection of the young
generations just before each freeze of the failover benchmark (every takeover
mode, seeds, preloads and forked snapshots, with and without templates) found
no unreachable object at all.

:class:`GcTimer` measures the collector's pauses (``/status`` and
``rca_gc_pause_seconds``): this cost is invisible in a profile, which charges
it to whatever line happened to allocate.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rca_common.logging import get_logger

log = get_logger(__name__)

# Allocations between young collections (CPython's default is 700). A young
# collection walks only the young objects: 10k of them take well under a
# millisecond.
GEN0_THRESHOLD = 10_000


def configure() -> None:
    """Process-wide: called once by the ``graph-service`` entry point."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


# Whether this process keeps its heap frozen (set by freeze_heap). A flag, because
# gc.get_freeze_count() walks the whole permanent generation: milliseconds per
# million objects, too slow for a fork's pause or a /status request.
_frozen = False


def freeze_heap(why: str) -> None:
    """Move every object alive now into the permanent generation (see module doc)."""
    global _frozen
    gc.freeze()  # O(1): splices the generations' lists
    _frozen = True
    log.debug("heap frozen", why=why)


def heap_frozen() -> bool:
    """True once :func:`freeze_heap` ran (and :func:`thaw` did not undo it)."""
    return _frozen


def thaw() -> None:
    """Give the whole heap back to the collector (tests; not used by the service)."""
    global _frozen
    gc.unfreeze()
    _frozen = False


# Reference-counted so that overlapping pauses (a snapshot decode in a worker thread
# while the loop thread encodes or replays) restore the collector only when the last
# one ends.
_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


def _reset_gc_lock_in_child() -> None:
    global _gc_lock, _gc_depth
    _gc_lock = threading.Lock()  # another thread may have held it at fork time
    _gc_depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_gc_lock_in_child)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector for the block, then restore its state.

    For work that builds many long-lived, acyclic containers in one go (unpickling a
    snapshot, a takeover's replay): the collector would walk them again and again and
    free nothing."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


class GcTimer:
    """Times every collection through ``gc.callbacks`` (installed until :meth:`close`).

    The callback only adds to plain lists: it runs inside whatever allocation
    triggered the collection, possibly in code holding a lock, so it takes none.
    :meth:`drain` hands the pauses to the caller's ``observe(generation, seconds)``
    later (the service feeds its Prometheus histogram so, on each ``/metrics``).
    """

    PENDING_MAX = 10_000  # pauses kept for drain() (nobody scraping); beyond, totals only

    def __init__(self) -> None:
        self._started = 0.0
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._pending: list[tuple[int, float]] = []
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += took
        if len(self._pending) < self.PENDING_MAX:
            self._pending.append((generation, took))

    def drain(self, observe: Callable[[int, float], None]) -> None:
        """Pass every pause recorded since the last drain to ``observe``."""
        pending, self._pending = self._pending, []
        for generation, seconds in pending:
            observe(generation, seconds)

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def status(self) -> dict[str, Any]:
        return {
            "threshold": list(gc.get_threshold()),
            "heap_frozen": _frozen,
            "collections": list(self.collections),
            "pause_s_total": [round(s, 3) for s in self.seconds],
        }
