"""What ``failover-bench`` runs its measurements on: isolated deployments, read quietly.

A :class:`Deployment` is a persistor and two graph services (real processes) on
the shared RabbitMQ and PostgreSQL with names of their own, plus the collector
played in-process; ``close()`` removes all of it, also after a failure.

Timings come from the services' own JSON log lines (:class:`LogTail`: the
``phase`` transitions, ``snapshot started/stored/done``) and progress from
``/metrics``, not from polling ``/status`` or ``/readyz``: both build the whole
status, whose ``edges`` count walks the graph (networkx ``number_of_edges`` on
a MultiDiGraph is O(V+E), about 0.3 s at 100k vertices), so probing them every
few milliseconds would stall the very process being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
import psutil

from collector_stub.collector import Collector
from collector_stub.stream import StreamConfig
from collector_stub.topology import TopologyConfig, generate_topology
from failover_drill.cluster import Instance, free_port, get_json, isolated_names
from rca_common import db
from rca_common.broker import BrokerTopology, delete_topology
from rca_common.settings import Settings, load_settings

SEED = 42
CLOCK_START = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 500  # events per collector message (the stub's get_all batch size)
TAIL_POLL = 0.005  # reading a log file costs the services nothing
QUIET_POLL = 0.5  # for /status, between measurements only

SIZES: dict[str, TopologyConfig] = {
    # 10,221 entities
    "10k": TopologyConfig(
        zones=10,
        hosts=100,
        instances_per_host=40,
        networks=10,
        volumes=0.5,
        alarms=100,
        projects=20,
    ),
    # 127,111 entities
    "100k": TopologyConfig.large(),
}

# Settings shared by every process of a bench deployment.
BASE_ENV = {
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
    # Snapshots only when the bench asks (and the one after every get_all).
    "SNAPSHOT_INTERVAL": "3600",
    "RECONCILE_AFTER_TAKEOVER": "false",
    # The pruner would delete ~100k rows in the middle of a measurement.
    "PRUNE_EVENTS": "false",
    "GET_ALL_TIMEOUT": "600",
    "BARRIER_TIMEOUT": "30",
    "PERSISTOR_HTTP_PORT": "0",
}


class Progress:
    """Polling towards a target count. At a fixed rate the polls themselves load the
    service being measured, so the interval follows the remaining work: half the time
    the latest rate needs for it, at most ``MAX_POLL``, and the caller's interval near
    the end, which keeps the end time as precise as a fixed rate would."""

    MAX_POLL = 0.5

    def __init__(self, target: int) -> None:
        self.target = target
        self._samples: list[tuple[int, float]] = []

    def done(self, count: int, now: float) -> bool:
        self._samples = [*self._samples[-1:], (count, now)]
        return count >= self.target

    def next_poll(self, floor: float) -> float:
        if len(self._samples) < 2:
            return floor
        (c0, t0), (c1, t1) = self._samples
        if c1 <= c0 or t1 <= t0:
            return floor  # not moving (yet): keep watching closely
        rate = (c1 - c0) / (t1 - t0)
        return max(floor, min(self.MAX_POLL, (self.target - c1) / rate / 2))


def say(*parts: object) -> None:
    print("[failover-bench]", *parts, file=sys.stderr, flush=True)


def mb(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def log_time(rec: dict[str, Any]) -> float:
    """The wall-clock time of a structlog JSON line."""
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------- memory
def rss(inst: Instance) -> int:
    assert inst.popen is not None
    return int(psutil.Process(inst.popen.pid).memory_info().rss)


def peak_rss(inst: Instance) -> int | None:
    """The kernel's high-water mark of the process's RSS (VmHWM), in bytes."""
    assert inst.popen is not None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{inst.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


# ------------------------------------------------------------------ log tail
class LogTail:
    """The JSON lines an instance's current process writes, from now on (or the start)."""

    def __init__(self, inst: Instance, *, from_start: bool = False) -> None:
        self.inst = inst
        self.path = inst.log_dir / f"{inst.name}.{inst.starts}.log"
        self.pos = 0 if from_start or not self.path.exists() else self.path.stat().st_size
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        out = []
        for line in lines:
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(line))
        return out

    async def wait_for(
        self, test: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> dict[str, Any]:
        """The first new line for which ``test`` holds (it may raise to give up)."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.read():
                if test(rec):
                    return rec
            if not self.inst.alive():
                raise RuntimeError(
                    f"{self.inst.name} died waiting for {what}:\n{self.inst.last_log()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.inst.name}: no {what} within {timeout}s")
            await asyncio.sleep(TAIL_POLL)

    async def until_phase(self, phase: str, timeout: float) -> dict[str, float]:
        """Wall-clock times of the phases entered until ``phase`` (``active`` = ready)."""
        seen: dict[str, float] = {}

        def step(rec: dict[str, Any]) -> bool:
            if rec.get("event") != "phase":
                return False
            seen[rec["phase"]] = log_time(rec)
            return bool(rec["phase"] == phase)

        await self.wait_for(step, f"phase {phase}", timeout)
        return seen

    async def until_snapshot(self, timeout: float) -> dict[str, Any]:
        """The next snapshot's ``snapshot done`` facts, with its log times."""
        times: dict[str, float] = {}

        def step(rec: dict[str, Any]) -> bool:
            event = rec.get("event")
            if event == "snapshot failed":
                raise RuntimeError(f"{self.inst.name}: snapshot failed: {rec}")
            if event in ("snapshot started", "snapshot stored", "snapshot done"):
                times[event.split()[1]] = log_time(rec)
            return event == "snapshot done"

        done = await self.wait_for(step, "stored snapshot", timeout)
        return {**done, "log_times": times}


# ----------------------------------------------------------------- deployment
@dataclass
class Deployment:
    """One isolated deployment on the shared broker and database, removed on close."""

    label: str
    topology: TopologyConfig
    workdir: Path
    persistency: bool = True
    timeout: float = 600.0
    overrides: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(init=False)
    env: dict[str, str] = field(init=False)
    graphs: list[Instance] = field(init=False)
    persistor: Instance | None = field(init=False, default=None)
    collector: Collector | None = field(init=False, default=None)
    conn: asyncpg.Connection | None = field(init=False, default=None)
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            **isolated_names("bench"),
            **BASE_ENV,
            "ENABLE_PERSISTENCY": "true" if self.persistency else "false",
            **self.overrides,
        }
        self.settings = load_settings(**{k.lower(): v for k, v in self.env.items()})
        logs = self.workdir / self.label
        logs.mkdir(parents=True, exist_ok=True)
        self.graphs = [
            Instance(n, "graph-service", self.env, logs, http_port=free_port())
            for n in ("graph-a", "graph-b")
        ]
        if self.persistency:
            self.persistor = Instance("persistor", "persistor-service", self.env, logs)
        self.http = httpx.AsyncClient(timeout=120)

    async def start(self) -> None:
        topo = generate_topology(self.topology, SEED)
        stream = StreamConfig(seed=SEED, clock_start=CLOCK_START)
        self.collector = Collector(self.settings, topo, stream, flush_events=BATCH)
        await self.collector.start()
        self.conn = await db.connect(self.settings.database_url, self.settings.db_schema)
        await db.migrate(self.conn, self.settings.db_schema)  # so the bench can query at once
        if self.persistor is not None:
            self.persistor.start()

    def start_graph(self, inst: Instance) -> tuple[LogTail, float]:
        """Start an instance; its log from the first line, and the wall time of the start."""
        started = time.time()
        inst.start()
        return LogTail(inst, from_start=True), started

    # ---------------------------------------------------------------- reading
    async def status(self, inst: Instance) -> dict[str, Any]:
        st = await get_json(self.http, inst.url + "/status")
        if st is None:
            raise RuntimeError(f"{inst.name}: /status did not answer\n{inst.last_log()}")
        return st

    async def ready(self, inst: Instance) -> bool:
        return await get_json(self.http, inst.url + "/readyz") is not None

    async def until_status(
        self, inst: Instance, test: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll ``/status`` (slowly: it costs the service O(graph)) until ``test`` holds."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            st = await get_json(self.http, inst.url + "/status")
            if st is not None and test(st):
                return st
            if not inst.alive():
                raise RuntimeError(f"{inst.name} died waiting for {what}:\n{inst.last_log()}")
            await asyncio.sleep(QUIET_POLL)
        raise TimeoutError(f"{inst.name}: no {what} within {self.timeout}s")

    async def until_standby(self, inst: Instance) -> None:
        await self.until_status(inst, lambda s: s.get("phase") == "standby", "standby phase")

    async def events_handled(self, inst: Instance) -> dict[str, int]:
        """``rca_events_total`` summed over its labels: events through the ingest loop,
        the collectors' apart from the evaluator's own (``vitrage``) action events."""
        resp = await self.http.get(inst.url + "/metrics")
        resp.raise_for_status()
        out = {"collector": 0, "evaluator": 0}
        for line in resp.text.splitlines():
            if line.startswith("rca_events_total{"):
                kind = "evaluator" if 'entity_type="vitrage"' in line else "collector"
                out[kind] += int(float(line.rsplit(" ", 1)[1]))
        return out

    async def until_handled(self, inst: Instance, count: int, poll: float = 0.02) -> float:
        """Until the ingest loop has handled ``count`` collector events; monotonic time.

        Polls ``/metrics`` adaptively (:func:`next_poll`): rendering it costs the
        service a few milliseconds of the CPU being measured, and at a fixed 50 ms the
        polls took a tenth of it."""
        deadline = time.monotonic() + self.timeout
        progress = Progress(count)
        while not progress.done((await self.events_handled(inst))["collector"], time.monotonic()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{inst.name}: fewer than {count} events in {self.timeout}s")
            if not inst.alive():
                raise RuntimeError(f"{inst.name} died:\n{inst.last_log()}")
            await asyncio.sleep(progress.next_poll(poll))
        return time.monotonic()

    async def log_end(self) -> int:
        assert self.conn is not None
        return int(await self.conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))

    async def until_logged(self, seq: int, poll: float = 0.02) -> float:
        """Until the persistor has committed every record up to ``seq``; monotonic time
        (polled adaptively, as :meth:`until_handled` is)."""
        deadline = time.monotonic() + self.timeout
        progress = Progress(seq)
        while not progress.done(await self.log_end(), time.monotonic()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"log did not reach seq {seq} in {self.timeout}s")
            if self.persistor is not None and not self.persistor.alive():
                raise RuntimeError(f"persistor died:\n{self.persistor.last_log()}")
            await asyncio.sleep(progress.next_poll(poll))
        return time.monotonic()

    async def fetch_topology(self, inst: Instance) -> dict[str, Any]:
        resp = await self.http.get(
            inst.url + "/v1/topology", params={"include_deleted": "true"}, timeout=300
        )
        resp.raise_for_status()
        return orjson.loads(resp.content)  # type: ignore[no-any-return]

    async def graph_digest(self, inst: Instance) -> dict[str, Any]:
        """Counts and a digest of every vertex and edge (deleted ones included)."""
        topo = await self.fetch_topology(inst)
        h = hashlib.sha256()
        for part in ("vertices", "edges"):
            for line in sorted(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) for x in topo[part]):
                h.update(line)
        return {
            "vertices": len(topo["vertices"]),
            "edges": len(topo["edges"]),
            "sha256": h.hexdigest(),
        }

    # --------------------------------------------------------------- clean-up
    async def close(self) -> list[str]:
        """Stop everything, drop the schema, delete the queues; returns what failed."""
        errors: list[str] = []

        async def step(what: str, fn: Callable[[], Awaitable[Any]]) -> None:
            try:
                await asyncio.wait_for(fn(), 60)
            except BaseException as exc:  # clean-up goes on whatever happened
                errors.append(f"{what}: {exc!r}")

        for inst in (*self.graphs, self.persistor):
            if inst is not None:
                await step(f"stop {inst.name}", lambda i=inst: asyncio.to_thread(i.stop, 15))
        if self.collector is not None:
            await step("stop collector", self.collector.stop)
        if self.conn is not None:
            await step("close db", self.conn.close)
        await step("drop schema", self._drop_schema)
        await step("delete queues", self._delete_queues)
        await step("close http", self.http.aclose)
        for e in errors:
            say(f"{self.label}: clean-up: {e}")
        return errors

    async def _drop_schema(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await db.drop_schema(conn, self.settings.db_schema)
        finally:
            await conn.close()

    async def _delete_queues(self) -> None:
        amqp = await aio_pika.connect(self.settings.amqp_url)
        try:
            await delete_topology(await amqp.channel(), BrokerTopology.from_settings(self.settings))
        finally:
            await amqp.close()
