"""Who else used the CPUs while a benchmark ran (a shared 2-core host skews figures).

:class:`LoadMonitor` samples every process once a second from a thread and
splits the CPU time they used into the benchmark's own process tree, the
RabbitMQ and PostgreSQL servers it talks to (found by their listening ports),
and everything else. A benchmark whose ``other_cpu_pct`` is more than a few
percent shared the machine with something and its figures are pessimistic.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from typing import Any

import psutil

INFRA_PORTS = (5432, 5672)  # PostgreSQL, RabbitMQ


def _infra_roots() -> set[int]:
    pids: set[int] = set()
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid
            if listening and conn.laddr.port in INFRA_PORTS:
                pids.add(conn.pid)
    return pids


def _tree(roots: set[int]) -> set[int]:
    out = set(roots)
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            out.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    return out


class LoadMonitor:
    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.own = os.getpid()
        self.infra = _infra_roots()
        self.cpu = {"bench": 0.0, "infra": 0.0, "other": 0.0}
        self.other_by_name: Counter[str] = Counter()
        self._seen: dict[tuple[int, float], float] = {}
        self._first = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
        self._started = 0.0

    def __enter__(self) -> LoadMonitor:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        mine, infra = _tree({self.own}), _tree(self.infra)
        seen: dict[tuple[int, float], float] = {}
        for proc in psutil.process_iter(["pid", "name", "cpu_times", "create_time"]):
            info = proc.info
            times = info.get("cpu_times")
            if times is None or info.get("create_time") is None:
                continue
            key = (info["pid"], info["create_time"])
            cpu = seen[key] = times.user + times.system
            if self._first:
                continue
            delta = cpu - self._seen.get(key, 0.0)  # a process new since the last sample: all
            if delta <= 0:
                continue
            if info["pid"] in mine:
                self.cpu["bench"] += delta
            elif info["pid"] in infra:
                self.cpu["infra"] += delta
            else:
                self.cpu["other"] += delta
                self.other_by_name[info.get("name") or "?"] += delta
        self._seen = seen
        self._first = False

    def report(self) -> dict[str, Any]:
        wall = time.monotonic() - self._started
        cpus = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 1),
            "bench_cpu_s": round(self.cpu["bench"], 1),
            "broker_and_db_cpu_s": round(self.cpu["infra"], 1),
            "other_cpu_s": round(self.cpu["other"], 1),
            # share of the whole machine (all CPUs) used by unrelated processes
            "other_cpu_pct": round(100 * self.cpu["other"] / (wall * cpus), 1) if wall else None,
            "other_top": [[n, round(s, 1)] for n, s in self.other_by_name.most_common(4)],
        }
