"""The failover drill (DESIGN section 9): real processes, real broker and database.

A persistor and two graph services run as processes; the drill plays the
collector (the stub's ``Collector``, over the real broker) so that the stream is
exactly the reference stream. It kills the active at chosen moments — during
steady processing, with a record batch published but unconfirmed, with records
confirmed but collector messages unacked, in the middle of a snapshot, while
the taking-over standby replays — and at random ones, restarts every killed
instance as a standby, kills the persistor once mid-stream, lets the stream
finish, and compares the final graph and the log with the reference run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson

from collector_stub.collector import Collector
from collector_stub.stream import StreamConfig, reference_events
from collector_stub.topology import TopologyConfig, generate_topology
from failover_drill.cluster import Instance, free_port, get_json, isolated_names, wait_ready
from failover_drill.reference import compare_graphs, reference_graph
from rca_common import db
from rca_common.broker import BrokerTopology, delete_topology
from rca_common.logging import get_logger
from rca_common.settings import Settings, load_settings

log = get_logger(__name__)

CLOCK_START = datetime(2026, 1, 1, tzinfo=UTC)
EXTERNAL = ("steady", "random")
CRASHES = ("publish", "before_ack", "snapshot", "replay")
DEFAULT_PLAN = ("steady", "publish", "snapshot", "replay", "before_ack")
PHASES = {
    "publish": "active: record batch published, not yet confirmed",
    "before_ack": "active: records confirmed, collector messages not yet acked",
    "snapshot": "active: in the middle of a snapshot",
    "replay": "recovering: the taking-over standby dies while replaying",
}


@dataclass
class DrillConfig:
    events: int = 4000
    plan: tuple[str, ...] = DEFAULT_PLAN
    random_kills: int = 2
    kill_persistor: bool = True
    seed: int = 42
    topology: TopologyConfig = field(
        default_factory=lambda: TopologyConfig(
            zones=2, hosts=10, instances_per_host=5, networks=3, alarms=10
        )
    )
    rate: float = 2000.0  # stream events per second
    chunk: int = 50
    window: int = 600  # events the stream may run ahead of a kill's moment
    storm_every: int = 400  # a host-outage alarm storm every this many stream events
    ready_timeout: float = 60.0
    workdir: Path = field(default_factory=lambda: Path("drill-logs"))
    keep: bool = False

    def steps(self) -> list[str]:
        return [*self.plan, *(["random"] * self.random_kills)]


class Drill:
    def __init__(self, cfg: DrillConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.env = {
            **isolated_names("drill"),
            "LOG_FORMAT": "json",
            "RECONCILE_AFTER_TAKEOVER": "false",
            "SNAPSHOT_INTERVAL": "3600",
            "PRUNE_EVENTS": "false",  # the drill reads the whole log back
            "DRILL_HOOKS": "true",
            "BARRIER_TIMEOUT": "30",
            "GET_ALL_TIMEOUT": "30",
        }
        self.settings: Settings = load_settings(**{k.lower(): v for k, v in self.env.items()})
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        self.graphs = [
            Instance(n, "graph-service", self.env, cfg.workdir, http_port=free_port())
            for n in ("graph-a", "graph-b")
        ]
        self.persistor = Instance(
            "persistor", "persistor-service", {**self.env, "PERSISTOR_HTTP_PORT": "0"}, cfg.workdir
        )
        self.published: list[dict[str, Any]] = []
        self._allowed = 0
        self.window = cfg.window
        self._progress = asyncio.Condition()
        self.kills: list[dict[str, Any]] = []
        self.persistor_kill: dict[str, Any] | None = None
        self.collector: Collector | None = None
        self.http = httpx.AsyncClient(timeout=5)

    # ------------------------------------------------------------------- run
    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await self._bring_up()
            publisher = asyncio.create_task(self._publish_stream())
            steps = self.cfg.steps()
            persistor_at = len(steps) // 2 if self.cfg.kill_persistor else None
            gap = self.cfg.events // (len(steps) + 2)
            self.window = max(1, min(self.cfg.window, gap // 2))
            for i, kind in enumerate(steps):
                threshold = gap * (i + 1)
                await self._allow(max(threshold, self._allowed))
                await self._until_published(threshold)
                # The stream flows during the kill, but cannot run out before the next one.
                await self._allow(threshold + self.window)
                if i == persistor_at:
                    await self._kill_persistor()
                await self._kill(kind)
                if kind != "replay" and (i + 1 >= len(steps) or steps[i + 1] != "replay"):
                    await self._request_snapshot()
            await self._allow(self.cfg.events)
            await publisher
            return await self._verify(time.monotonic() - started)
        finally:
            await self._tear_down()

    async def _bring_up(self) -> None:
        topo = generate_topology(self.cfg.topology, self.cfg.seed)
        self.collector = Collector(self.settings, topo, self._stream_config())
        await self.collector.start()
        self.persistor.start()
        a, b = self.graphs
        a.start()
        self.active, _ = await wait_ready([a], self.cfg.ready_timeout)
        b.start()
        await self._until_standby(b)

    async def _allow(self, n: int) -> None:
        """Let the stream run up to ``n`` events: it flows during a kill, but never
        runs out before the kill's moment comes."""
        async with self._progress:
            self._allowed = min(n, self.cfg.events)
            self._progress.notify_all()

    def _stream_config(self) -> StreamConfig:
        """The stream, with host-outage alarm storms for the evaluator to chew on."""
        return StreamConfig(
            seed=self.cfg.seed, clock_start=CLOCK_START, storm_every=self.cfg.storm_every
        )

    async def _publish_stream(self) -> None:
        assert self.collector is not None
        cfg = self.cfg
        began = time.monotonic()
        while len(self.published) < cfg.events:
            async with self._progress:
                await self._progress.wait_for(lambda: len(self.published) < self._allowed)
            n = min(cfg.chunk, self._allowed - len(self.published))
            self.published.extend(await self.collector.publish_stream(n))
            async with self._progress:
                self._progress.notify_all()
            ahead = len(self.published) / cfg.rate - (time.monotonic() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)  # pacing the stream, not waiting on a condition

    async def _until_published(self, n: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: len(self.published) >= n)

    # ----------------------------------------------------------------- kills
    @property
    def standby(self) -> Instance:
        return next(g for g in self.graphs if g is not self.active)

    async def _kill(self, kind: str) -> None:
        victim, other = self.active, self.standby
        status = await get_json(self.http, victim.url + "/status") or {}
        phase = PHASES.get(kind, f"{status.get('phase', '?')}: {kind} processing")
        record: dict[str, Any] = {"kill": len(self.kills) + 1, "kind": kind,
                                  "victim": victim.name, "phase_killed_in": phase,
                                  "published_before": len(self.published)}  # fmt: skip
        if kind in EXTERNAL:
            if kind == "random":
                delay = self.rng.uniform(0, 0.5)
                record["random_delay_s"] = round(delay, 3)
                await asyncio.sleep(delay)  # a random moment is the point of this kill
            t_kill = victim.kill()
        elif kind == "replay":
            await self._arm(other, "replay", 1)
            t_kill = victim.kill()
            record["replay_victim"] = other.name
            await other.wait_exit(self.cfg.ready_timeout)
            victim.start()  # the first victim comes back and takes over
            other, victim = victim, other
        else:
            await self._arm(victim, kind, 1 if kind == "snapshot" else self.rng.randint(1, 3))
            if kind == "snapshot":
                with contextlib.suppress(httpx.TransportError):  # it may die before answering
                    await self.http.post(victim.url + "/v1/admin/snapshot")
            t_kill = await self._until_crashed(victim)
        self.active, t_ready = await wait_ready([other], self.cfg.ready_timeout)
        victim.start()
        new_status = await get_json(self.http, self.active.url + "/status") or {}
        record.update(
            new_active=self.active.name,
            kill_to_ready_s=round(t_ready - t_kill, 4),
            recovery=new_status.get("recovery"),
        )
        self.kills.append(record)
        log.info("drill kill", **record)
        await self._until_standby(victim)

    async def _until_crashed(self, victim: Instance) -> float:
        """Wait for a crash point to fire, feeding the stream a little more while it has not."""
        deadline = time.monotonic() + self.cfg.ready_timeout
        while True:
            try:
                return await victim.wait_exit(1.0)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                await self._allow(self._allowed + self.window)

    async def _arm(self, inst: Instance, point: str, after: int) -> None:
        resp = await self.http.post(
            inst.url + "/v1/admin/crash-point", json={"point": point, "after": after}
        )
        resp.raise_for_status()

    async def _request_snapshot(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(self.active.url + "/v1/admin/snapshot")

    async def _until_standby(self, inst: Instance) -> None:
        deadline = time.monotonic() + self.cfg.ready_timeout
        while time.monotonic() < deadline:
            status = await get_json(self.http, inst.url + "/status")
            if status and status.get("phase") == "standby":
                return
            if not inst.alive():
                raise RuntimeError(f"{inst.name} died while starting:\n{inst.last_log()}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{inst.name} not in standby after {self.cfg.ready_timeout}s")

    async def _kill_persistor(self) -> None:
        t_kill = self.persistor.kill()
        before = len(self.published)
        await self._until_published(min(self._allowed, before + self.window))
        self.persistor.start()
        target = (await get_json(self.http, self.active.url + "/status") or {}).get(
            "confirmed_seq", 0
        )
        await self._until_log_reaches(target)
        self.persistor_kill = {
            "events_published_while_down": len(self.published) - before,
            "kill_to_caught_up_s": round(time.monotonic() - t_kill, 3),
            "caught_up_to_seq": target,
        }
        log.info("drill persistor kill", **self.persistor_kill)

    async def _until_log_reaches(self, seq: int, timeout: float = 60) -> None:
        conn = await db.connect(self.settings.database_url, self.settings.db_schema)
        try:
            deadline = time.monotonic() + timeout
            while await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events") < seq:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"log did not reach seq {seq} in {timeout}s")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    # ---------------------------------------------------------------- verify
    async def _verify(self, duration: float) -> dict[str, Any]:
        events, _ = reference_events(
            self.cfg.topology,
            self.cfg.seed,
            stream_events=self.cfg.events,
            stream_config=self._stream_config(),
        )
        expected_ids = [e["event_id"] for e in events]
        stream_matches = [e["event_id"] for e in self.published] == expected_ids[
            -len(self.published) :
        ]
        counts, raised_twice = await self._log_counts(expected_ids)
        lost = sorted(set(expected_ids) - counts.keys())
        duplicated = sorted(k for k, n in counts.items() if n > 1)
        topo = (await self.http.get(
            self.active.url + "/v1/topology", params={"include_deleted": "true"}, timeout=60
        )).json()  # fmt: skip
        fresh_events = len(events) - self.cfg.events
        deduced_live = sum(
            1
            for v in topo["vertices"]
            if v.get("vitrage_type") == "vitrage" and not v.get("vitrage_is_deleted")
        )
        comparison = compare_graphs(topo, reference_graph(events, fresh_events))
        times = [k["kill_to_ready_s"] for k in self.kills]
        assert self.collector is not None
        ok = (
            comparison["equal"]
            and not lost
            and not duplicated
            and not raised_twice
            and stream_matches
        )
        return {
            "ok": ok,
            "events": len(expected_ids),
            "stream_events": len(self.published),
            "kills": self.kills,
            "persistor_kill": self.persistor_kill,
            "totals": {
                "lost": len(lost),
                "duplicated": len(duplicated),
                "deduced_raised_twice": raised_twice,
                "deduced_alarms_live": deduced_live,
                "graph_equal": comparison["equal"],
                "stream_as_reference": stream_matches,
                "get_all_answered": self.collector.get_all_answered,
                "failover_s_max": max(times) if times else None,
                "failover_s_median": statistics.median(times) if times else None,
            },
            "lost_examples": lost[:5],
            "duplicated_examples": duplicated[:5],
            "graph": comparison,
            "duration_s": round(duration, 2),
        }

    async def _log_counts(
        self, expected: list[str], timeout: float = 60
    ) -> tuple[dict[str, int], int]:
        """Wait until the log holds a record of every stream event (evaluator actions
        are logged too, but are not the stream); then count records per event id."""
        conn = await db.connect(self.settings.database_url, self.settings.db_schema)
        query = "SELECT count(DISTINCT event_id) FROM events WHERE event_id = ANY($1::text[])"
        try:
            deadline = time.monotonic() + timeout
            while await conn.fetchval(query, expected) < len(expected):
                if time.monotonic() > deadline:
                    break  # the shortfall is reported as lost events
                await asyncio.sleep(0.05)
            rows = await conn.fetch("SELECT event_id, count(*) AS n FROM events GROUP BY event_id")
            actions = await conn.fetch("SELECT record FROM events ORDER BY seq")
        finally:
            await conn.close()
        return {r["event_id"]: r["n"] for r in rows}, _activations_of_active(actions)

    async def _tear_down(self) -> None:
        for inst in (*self.graphs, self.persistor):
            inst.stop()
        if self.collector is not None:
            await self.collector.stop()
        await self.http.aclose()
        if self.cfg.keep:
            return
        await self._drop_everything()

    async def _drop_everything(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await db.drop_schema(conn, self.settings.db_schema)
        finally:
            await conn.close()
        amqp = await aio_pika.connect(self.settings.amqp_url)
        try:
            await delete_topology(await amqp.channel(), BrokerTopology.from_settings(self.settings))
        finally:
            await amqp.close()


def _activations_of_active(rows: list[Any]) -> int:
    """Evaluator activations logged for an (action, match) pair already active: a
    deduced alarm (or state, or causal link) raised twice. Must be 0."""
    active: set[tuple[str, str]] = set()
    twice = 0
    for row in rows:
        event = orjson.loads(row["record"])["event"]
        if event.get("entity_type") != "vitrage":
            continue
        for step in (event.get("payload") or {}).get("steps", ()):  # one record per round
            pair = (step.get("action_key"), step.get("match_key"))
            if step.get("op") == "activate":
                twice += pair in active
                active.add(pair)
            elif step.get("op") == "deactivate":
                active.discard(pair)
    return twice
