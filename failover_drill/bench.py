"""``failover-bench``: fresh start vs snapshot failover, and what persistency costs (JSON).

Real processes against the real RabbitMQ and PostgreSQL, as in the failover
drill: a persistor and two graph services per deployment, the collector played
in-process. Per topology size (``10k``; ``100k`` = ``TopologyConfig.large()``,
127,111 entities):

1. **cold start**: the first graph service on an empty schema, process start →
   ready (barrier, no snapshot, ``get_all`` of the whole topology, drain).
2. **fresh failover**: SIGKILL of the active with a standby waiting and no
   usable snapshot stored (the bench deletes the rows, as after a downtime
   longer than ``SNAPSHOT_INTERVAL``): kill → ready, through ``get_all``.
3. **snapshot**: ``POST /v1/admin/snapshot`` on the new active until stored:
   size (compressed / raw), the loop pause (the fork), encoding in the child,
   the insert.
4. **snapshot failover**: ``--events`` stream events after that snapshot,
   processed and committed by the persistor (``max(seq)`` of ``events``); then
   SIGKILL of the active with a standby waiting: kill → ready, the standby's
   recovery report (barrier wait, snapshot decode, records replayed and the
   replay rate, phase durations), and its graph compared with the dead
   active's (a digest of every vertex and edge). ``--snapshot-rounds`` times
   in a row: the killed one comes back as a standby, preloads the same
   snapshot, and the new active is killed in turn (its own first snapshot
   deleted first, so that the same records are replayed each round); the
   median round is reported, every round listed.
5. **hot failover**: the killed one comes back as a hot standby (steps 2 and 4
   run their standbys with ``HOT_STANDBY=false``), ``--events`` more stream
   events, then SIGKILL of the active: kill → ready through the replica, what
   the takeover still replayed, and the graph compared as in 4.

``fresh_over_snapshot`` is 2. / 4. (target ≥ 10x at 100k), ``fresh_over_hot``
2. / 5. Stream events are
collector events; the evaluator's action events they cause are records too
(sequenced, logged, replayed), counted apart as ``evaluator_events``.

End to end (``--e2e-size``): a fresh deployment loads the topology by
``get_all`` (the time to build the graph), then ``--e2e-events`` stream events,
generated beforehand and published in 500-event messages as fast as the broker
confirms them, go collector → RabbitMQ → graph service (→ fanout → persistor →
PostgreSQL): with persistency off and on, alternately, ``--e2e-rounds`` times
(the best round of each is reported in full: a shared host only ever makes a
run slower); "graph processed" and "persisted" rates; the cost of persistency
in percent; the processor alone on the same events in one process (the
ceiling); the graph service's peak RSS against a bare networkx graph of the
same shape (``processor_bench``'s measurement, run on the service's own graph).
Each run also reports ``host_load``: CPU used meanwhile by unrelated processes.

"Ready" is the moment the service logs its ``active`` phase (when ``/readyz``
turns 200; confirmed by one ``/readyz`` call after): see ``bench_deployment``
for why the bench does not poll ``/readyz``. Every deployment uses names of its
own and is removed at the end, also after a failure. Progress goes to stderr,
the report (one JSON object) to stdout; exit status 1 when a run failed.

    failover-bench [--sizes 10k,100k] [--events 50000]
                   [--snapshot-rounds 3] [--e2e-size 100k] [--e2e-events 200000]
                   [--e2e-rounds 2] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from collector_stub.collector import Collector
from failover_drill.bench_deployment import (
    BASE_ENV,
    BATCH,
    CLOCK_START,
    SEED,
    SIZES,
    Deployment,
    LogTail,
    mb,
    peak_rss,
    ratio,
    rss,
    say,
)
from failover_drill.bench_load import LoadMonitor
from failover_drill.cluster import Instance
from failover_drill.speed_probe import probe
from rca_common.logging import setup_logging

ROOT = Path(__file__).resolve().parent.parent
PROCESSOR_BENCH = ROOT / "benchmarks" / "processor_bench.py"
CEILING_EVALUATOR_EVENTS = 20_000  # the in-process ceiling with the evaluator is slow


@dataclass
class BenchConfig:
    sizes: list[str]
    events: int = 50_000
    e2e_size: str | None = "100k"
    e2e_events: int = 200_000
    e2e_rounds: int = 1
    # snapshot failovers in a row (the same snapshot and log, each survivor killed in
    # turn); the report's figures are the median round's
    snapshot_rounds: int = 3
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="failover-bench-")))
    timeout: float = 600.0
    keep_logs: bool = False
    env: dict[str, str] = field(default_factory=dict)  # --env overrides for every service


def phase_facts(phases: dict[str, float], since: float) -> dict[str, Any]:
    """Durations between logged phase transitions; ``since`` is the kill (or start)."""
    order = ["standby", "electing", "recovering", "draining", "active"]
    out: dict[str, Any] = {}
    if "electing" in phases:
        out["lock_acquired_after_s"] = round(phases["electing"] - since, 4)
    durations = {}
    for cur, nxt in itertools.pairwise(order):
        if cur in phases and nxt in phases and cur != "standby":
            durations[cur] = round(phases[nxt] - phases[cur], 4)
    out["phase_s"] = durations
    return out


async def confirm_ready(dep: Deployment, inst: Instance) -> None:
    if not await dep.ready(inst):
        raise RuntimeError(f"{inst.name} logged 'active' but /readyz does not answer 200")


# ------------------------------------------------------------ failover bench
async def cold_start(dep: Deployment, inst: Instance) -> tuple[dict[str, Any], LogTail]:
    tail, started = dep.start_graph(inst)
    phases = await tail.until_phase("active", dep.timeout)
    await confirm_ready(dep, inst)
    st = await dep.status(inst)
    return {
        "process_start_to_ready_s": round(phases["active"] - started, 3),
        "interpreter_and_connect_s": round(phases["standby"] - started, 3),
        **phase_facts(phases, started),
        "get_all_s": st["get_all"].get("duration_s"),
        "get_all_entities": st["get_all"].get("entities"),
        "mode": st["recovery"].get("mode"),
        "vertices": st["vertices"],
        "edges": st["edges"],
    }, tail


async def kill_until_ready(
    dep: Deployment, victim: Instance, standby: Instance
) -> tuple[float, dict[str, Any]]:
    """SIGKILL ``victim``; kill → ``standby`` active (seconds) and the phase facts."""
    tail = LogTail(standby)
    kill_wall = time.time()
    t_kill = victim.kill()
    phases = await tail.until_phase("active", dep.timeout)
    await confirm_ready(dep, standby)
    facts = phase_facts(phases, kill_wall)
    facts["readyz_observed_after_s"] = round(time.monotonic() - t_kill, 3)
    return phases["active"] - kill_wall, facts


async def fresh_failover(dep: Deployment, victim: Instance, standby: Instance) -> dict[str, Any]:
    """Kill the active with no usable snapshot stored: the standby must get_all."""
    assert dep.conn is not None
    deleted = await dep.conn.execute("DELETE FROM graph_snapshots")
    before = await dep.status(victim)
    seconds, facts = await kill_until_ready(dep, victim, standby)
    st = await dep.status(standby)
    rec = st["recovery"]
    if rec.get("mode") != "fresh":
        raise RuntimeError(f"expected the fresh path, got {rec}")
    return {
        "kill_to_ready_s": round(seconds, 3),
        **facts,
        "get_all_s": st["get_all"].get("duration_s"),
        "snapshots_deleted_first": int(deleted.split()[-1]),
        "recovery": rec,
        "vertices": st["vertices"],
        "vertices_before_kill": before["vertices"],
    }


def snapshot_facts(done: dict[str, Any]) -> dict[str, Any]:
    times = done["log_times"]
    store_s = None
    if "stored" in times and "started" in times:  # stored - (started + encoding in the child)
        store_s = round(times["stored"] - times["started"] - done["duration_s"], 3)
    return {
        "snapshot_id": done["snapshot_id"],
        "snapshot_seq": done["snapshot_seq"],
        "mode": done.get("mode"),
        "pause_ms": done.get("pause_ms"),
        "encode_s": done.get("duration_s"),
        "store_s": store_s,
        "started_to_stored_s": round(times["stored"] - times["started"], 3)
        if "stored" in times and "started" in times
        else None,
        "compressed_bytes": done.get("size_bytes"),
        "raw_bytes": done.get("raw_size_bytes"),
        "compression_ratio": ratio(done.get("raw_size_bytes"), done.get("size_bytes")),
    }


async def admin_snapshot(dep: Deployment, inst: Instance, tail: LogTail) -> dict[str, Any]:
    """After the snapshot that follows a get_all: POST /v1/admin/snapshot, until stored."""
    await tail.until_snapshot(dep.timeout)  # the one after the get_all
    st = await dep.status(inst)
    requested = time.time()
    resp = await dep.http.post(inst.url + "/v1/admin/snapshot")
    if resp.status_code != 202:
        raise RuntimeError(f"snapshot request refused: {resp.status_code} {resp.text}")
    done = await tail.until_snapshot(dep.timeout)
    return {
        **snapshot_facts(done),
        "requested_to_stored_s": round(done["log_times"]["stored"] - requested, 3),
        "vertices": st["vertices"],
        "edges": st["edges"],
    }


async def stream_and_commit(dep: Deployment, inst: Instance, n: int) -> dict[str, Any]:
    """Publish ``n`` stream events; until processed, confirmed and committed."""
    assert dep.collector is not None
    before = await dep.events_handled(inst)
    base_seq = (await dep.status(inst))["last_seq"]
    t0 = time.monotonic()
    events = await dep.collector.publish_stream(n)
    t_pub = time.monotonic()
    t_proc = await dep.until_handled(inst, before["collector"] + len(events))
    st = await dep.until_status(
        inst, lambda s: s["confirmed_seq"] >= s["last_seq"], "confirmed records"
    )
    t_log = await dep.until_logged(st["last_seq"])
    after = await dep.events_handled(inst)
    return {
        "events": len(events),
        "evaluator_events": after["evaluator"] - before["evaluator"],
        "records": st["last_seq"] - base_seq,
        "publish_s": round(t_pub - t0, 3),
        "processed_s": round(t_proc - t0, 3),
        "persisted_s": round(t_log - t0, 3),
        "last_seq": st["last_seq"],
    }


async def snapshot_failover(
    dep: Deployment, victim: Instance, standby: Instance, snapshot_seq: int
) -> dict[str, Any]:
    if (await dep.status(standby))["phase"] != "standby":
        raise RuntimeError(f"{standby.name} is not waiting as a standby")
    before = await dep.graph_digest(victim)
    last_seq = (await dep.status(victim))["last_seq"]
    seconds, facts = await kill_until_ready(dep, victim, standby)
    st = await dep.status(standby)
    rec = st["recovery"]
    after = await dep.graph_digest(standby)
    accounted = sum(rec.get(k) or 0.0 for k in ("barrier_wait_s", "snapshot_load_s", "replay_s"))
    return {
        "kill_to_ready_s": round(seconds, 3),
        **facts,
        "mode": rec.get("mode"),
        "reason": rec.get("reason"),
        "barrier_wait_s": rec.get("barrier_wait_s"),
        "snapshot_age_s": rec.get("snapshot_age_s"),
        "snapshot_load_s": rec.get("snapshot_load_s"),
        "replayed": rec.get("replayed"),
        "replay_expected": last_seq - snapshot_seq,
        "replay_s": rec.get("replay_s"),
        "replay_rate": rec.get("replay_rate"),
        "drained_events": rec.get("drained_events"),
        # recovering minus barrier, decode and replay: blob fetch, import_state, ...
        "recovering_other_s": round(facts["phase_s"].get("recovering", 0.0) - accounted, 4),
        "recovery": rec,
        "graph_equal": before == after,
        "graph": after,
    }


async def hot_failover(dep: Deployment, victim: Instance, standby: Instance) -> dict[str, Any]:
    """Kill the active while ``standby`` follows the log with its replica (HOT_STANDBY)."""
    hot = (await dep.until_status(
        standby, lambda s: (s.get("hot_standby") or {}).get("state") == "following",
        "the hot standby following the log",
    ))["hot_standby"]  # fmt: skip
    assert dep.conn is not None
    log_end = int(await dep.conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
    out = await snapshot_failover(dep, victim, standby, hot["snapshot_seq"])
    if out["mode"] != "hot":
        raise RuntimeError(f"expected the hot standby's replica, got {out['recovery']}")
    out["replica_seeded_from_seq"] = hot["snapshot_seq"]
    out["replica_applied_before_kill"] = hot["applied"]
    out["log_end_before_kill"] = log_end
    return out


async def snapshot_rounds(
    dep: Deployment,
    name: str,
    cfg: BenchConfig,
    victim: Instance,
    standby: Instance,
    snap: dict[str, Any],
) -> tuple[list[dict[str, Any]], Instance, Instance]:
    """``cfg.snapshot_rounds`` snapshot failovers from the same snapshot and log: the
    killed instance comes back as a standby, preloads the snapshot, and the new
    active is killed in turn. One takeover's figures are at the mercy of this
    machine's noise (replay rates of one build varied by a third from run to run).

    A new active stores a snapshot as soon as it is active; the bench deletes it
    before the next round (as if the active had died before taking it), so that
    every round replays the same records.

    Returns the rounds, the active instance after the last and the one it killed."""
    assert dep.conn is not None
    rounds = []
    for n in range(1, cfg.snapshot_rounds + 1):
        if n > 1:
            await LogTail(standby, from_start=True).until_snapshot(dep.timeout)
            await dep.conn.execute(
                "DELETE FROM graph_snapshots WHERE id <> $1", snap["snapshot_id"]
            )
            victim.start(HOT_STANDBY="false")
            await LogTail(victim, from_start=True).wait_for(
                lambda rec: rec.get("event") == "standby: snapshot preloaded",
                "the snapshot preloaded",
                dep.timeout,
            )
            await dep.until_standby(victim)
            victim, standby = standby, victim
        say(f"{name}: snapshot failover {victim.name} -> {standby.name} (round {n})")
        rounds.append(await snapshot_failover(dep, victim, standby, snap["snapshot_seq"]))
    return rounds, standby, victim


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose kill → ready time is the median (the lower one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r["kill_to_ready_s"])
    return ordered[(len(ordered) - 1) // 2]


def round_facts(rnd: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of each round."""
    keys = ("kill_to_ready_s", "mode", "replayed", "replay_s", "replay_rate", "graph_equal")
    rec = rnd.get("recovery") or {}
    return {
        **{k: rnd.get(k) for k in keys},
        "snapshot_id": rec.get("snapshot_id"),
        "snapshot_preloaded": rec.get("snapshot_preloaded"),
    }


async def failover_steps(dep: Deployment, name: str, cfg: BenchConfig, out: dict[str, Any]) -> None:
    """Fresh, snapshot and hot failover, in that order, on one deployment. The first two
    standbys run with HOT_STANDBY=false (a hot replica would serve both takeovers)."""
    assert dep.collector is not None
    out["entities"] = dep.collector.topology.total()
    a, b = dep.graphs
    say(f"{name}: cold start of {a.name} ({out['entities']} entities)")
    out["cold_start"], tail_a = await cold_start(dep, a)
    await tail_a.until_snapshot(dep.timeout)  # the snapshot after get_all, then deleted
    b.start(HOT_STANDBY="false")
    tail_b = LogTail(b, from_start=True)
    await dep.until_standby(b)
    out["standby_rss_mb"] = mb(rss(b))
    say(f"{name}: fresh failover {a.name} -> {b.name}")
    out["fresh_failover"] = await fresh_failover(dep, a, b)
    a.start(HOT_STANDBY="false")
    await dep.until_standby(a)
    say(f"{name}: snapshot on {b.name}")
    snap = out["snapshot"] = await admin_snapshot(dep, b, tail_b)
    say(f"{name}: {cfg.events} events after the snapshot")
    out["stream"] = await stream_and_commit(dep, b, cfg.events)
    rounds, active, down = await snapshot_rounds(dep, name, cfg, b, a, snap)
    sf = out["snapshot_failover"] = median_round(rounds)
    out["snapshot_failover_rounds"] = [round_facts(r) for r in rounds]
    out["active_rss_mb"] = mb(rss(active))
    down.start()  # a hot standby this time
    await dep.until_standby(down)
    say(f"{name}: {cfg.events} events with {down.name} as a hot standby")
    out["hot_stream"] = await stream_and_commit(dep, active, cfg.events)
    out["hot_standby_rss_mb"] = mb(rss(down))
    say(f"{name}: hot failover {active.name} -> {down.name}")
    hf = out["hot_failover"] = await hot_failover(dep, active, down)
    fresh = out["fresh_failover"]["kill_to_ready_s"]
    out["fresh_over_snapshot"] = ratio(fresh, sf["kill_to_ready_s"], 1)
    out["fresh_over_hot"] = ratio(fresh, hf["kill_to_ready_s"], 1)
    cold = out["cold_start"]["process_start_to_ready_s"]
    out["cold_start_over_snapshot"] = ratio(cold, sf["kill_to_ready_s"], 1)


async def guarded(
    dep: Deployment, out: dict[str, Any], steps: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Run ``steps`` on ``dep``: a failure is recorded in ``out``, the host load
    beside it, and the deployment is removed whatever happened."""
    try:
        with LoadMonitor() as monitor:
            try:
                await dep.start()
                await steps()
            except Exception as exc:
                out["error"] = f"{type(exc).__name__}: {exc}"
                out["traceback"] = traceback.format_exc(limit=8)
                out["logs"] = str(dep.workdir / dep.label)
                say(f"{dep.label}: FAILED: {exc!r}")
        out["host_load"] = monitor.report()
    finally:
        out["cleanup_errors"] = await dep.close()
    return out


async def failover_run(name: str, cfg: BenchConfig) -> dict[str, Any]:
    dep = Deployment(
        f"failover-{name}", SIZES[name], cfg.workdir, timeout=cfg.timeout, overrides=cfg.env
    )
    out: dict[str, Any] = {"size": name, "stream_events_since_snapshot": cfg.events}
    return await guarded(dep, out, lambda: failover_steps(dep, name, cfg, out))


# ------------------------------------------------------------------ e2e bench
async def sample_peak(inst: Instance, peak: list[int], stop: asyncio.Event) -> None:
    """Sampled RSS maximum (the fallback where /proc has no VmHWM)."""
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], rss(inst))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def publish_all(collector: Collector, events: list[dict[str, Any]]) -> float:
    """Publish in BATCH-event messages, each confirmed; the time the last one was."""
    for i in range(0, len(events), BATCH):
        await collector.publisher.publish(events[i : i + BATCH])
    return time.monotonic()


async def e2e_measure(
    dep: Deployment, inst: Instance, events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Publish pre-generated events; until the graph (and the log) has them all."""
    assert dep.collector is not None
    n = len(events)
    before = await dep.events_handled(inst)
    base_seq = (await dep.status(inst))["last_seq"]
    t0 = time.monotonic()
    publisher = asyncio.create_task(publish_all(dep.collector, events))
    t_graph = await dep.until_handled(inst, before["collector"] + n)
    # Records: the stream's plus the evaluator's action events (also sequenced and logged).
    last_seq = (await dep.status(inst))["last_seq"]
    out: dict[str, Any] = {"events": n}
    if dep.persistency:
        t_log = await dep.until_logged(last_seq)
        out["persisted_s"] = round(t_log - t0, 3)
        out["persisted_events_per_s"] = round(n / (t_log - t0))
    t_pub = await publisher
    after = await dep.events_handled(inst)
    out.update(
        publish_s=round(t_pub - t0, 3),
        publish_events_per_s=round(n / (t_pub - t0)),
        graph_processed_s=round(t_graph - t0, 3),
        graph_events_per_s=round(n / (t_graph - t0)),
        records=last_seq - base_seq,
        evaluator_events=after["evaluator"] - before["evaluator"],
    )
    return out


async def e2e_steps(
    dep: Deployment, cfg: BenchConfig, out: dict[str, Any], shape: Path | None
) -> None:
    assert dep.collector is not None
    a, b = dep.graphs
    say(f"{dep.label}: loading {dep.collector.topology.total()} entities by get_all")
    out["load"], tail = await cold_start(dep, a)
    if dep.persistency:  # quiet before measuring: the snapshot after get_all, the log
        await tail.until_snapshot(dep.timeout)
        await dep.until_logged((await dep.status(a))["last_seq"])
    # an idle standby: the service's own footprint, no graph (no replica, no preload)
    b.start(HOT_STANDBY="false", STANDBY_PRELOAD_INTERVAL="0")
    await dep.until_standby(b)
    idle = rss(b)
    await asyncio.to_thread(b.stop, 15)
    events = dep.collector.stream.take(cfg.e2e_events)  # generated outside the timing
    say(f"{dep.label}: {len(events)} events, as fast as the broker confirms")
    stop, peak = asyncio.Event(), [rss(a)]
    gc_before = (await dep.status(a)).get("gc") or {}
    sampler = asyncio.create_task(sample_peak(a, peak, stop))
    try:
        out["throughput"] = await e2e_measure(dep, a, events)
    finally:
        stop.set()
        await sampler
    st = await dep.status(a)
    out["gc_during_stream"] = gc_delta(gc_before, st.get("gc") or {})
    now = rss(a)
    out["memory"] = {
        "vertices": st["vertices"],
        "edges": st["edges"],
        "peak_rss_mb": mb(peak_rss(a) or peak[0]),
        "rss_after_mb": mb(now),
        "idle_service_rss_mb": mb(idle),
        "graph_rss_mb": mb(now - idle),
    }
    if shape is not None:
        write_shape(await dep.fetch_topology(a), shape)


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The collections (per generation) and their pause seconds between two ``/status``."""
    out: dict[str, Any] = {}
    for key in ("collections", "pause_s_total"):
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None:
            out[key] = [round(y - x, 3) for x, y in zip(a, b, strict=True)]
    return out


async def e2e_run(
    cfg: BenchConfig, persistency: bool, n: int, *, shape: Path | None
) -> dict[str, Any]:
    assert cfg.e2e_size is not None
    label = f"e2e-{cfg.e2e_size}-{'on' if persistency else 'off'}-{n}"
    dep = Deployment(
        label,
        SIZES[cfg.e2e_size],
        cfg.workdir,
        persistency=persistency,
        timeout=cfg.timeout,
        overrides=cfg.env,
    )
    out: dict[str, Any] = {"persistency": persistency, "size": cfg.e2e_size}
    return await guarded(dep, out, lambda: e2e_steps(dep, cfg, out, shape))


class _LocalIngest:
    """What the evaluator needs from the ingest loop, in one process: no broker, no log."""

    def __init__(self, processor: Any, evaluation: Any) -> None:
        self.processor = processor
        self.evaluation = evaluation
        self.action_events = 0

    def process_local(self, event: Any) -> Any:
        outcome = self.processor.process(event)
        if event.entity_type == "vitrage":
            self.action_events += 1
        if outcome.logged:
            self.evaluation.on_outcome(self, outcome)
        return outcome


def _timed_pass(process: Callable[[Any], Any], batch: list[dict[str, Any]]) -> dict[str, int]:
    from rca_common.events import decode_events

    bodies = [orjson.dumps(batch[i : i + BATCH]) for i in range(0, len(batch), BATCH)]
    t0 = time.perf_counter()
    decoded = [decode_events(body) for body in bodies]
    t1 = time.perf_counter()
    for chunk in decoded:
        for event in chunk:
            process(event)
    t2 = time.perf_counter()
    return {
        "decode_and_process_per_s": round(len(batch) / (t2 - t0)),
        "process_per_s": round(len(batch) / (t2 - t1)),
    }


def processor_ceiling(size: str, events: int, evaluator_events: int) -> dict[str, Any]:
    """In one process, no broker: the same get_all and stream events, decoded from
    500-event bodies and processed, without and with the evaluator (as the service
    runs it: disabled during get_all, a whole-graph pass, then per event; and under
    its garbage-collector policy)."""
    from collector_stub.stream import StreamConfig, UpdateStream
    from collector_stub.topology import generate_topology
    from graph_service import gc_policy
    from graph_service.evaluation import Evaluation
    from graph_service.processor import Processor

    gc_policy.configure()

    def stream() -> UpdateStream:
        topo = generate_topology(SIZES[size], SEED)
        return UpdateStream(topo, StreamConfig(seed=SEED, clock_start=CLOCK_START))

    plain = stream()
    snapshot = list(plain.snapshot()[0])
    processor = Processor()
    get_all = _timed_pass(processor.process, snapshot)
    gc_policy.freeze_heap("built")  # as the service does when it goes active
    out: dict[str, Any] = {
        "get_all_events": len(snapshot),
        "get_all": get_all,
        "stream_events": events,
        "stream": _timed_pass(processor.process, plain.take(events)),
    }
    evaluated = stream()
    snapshot = list(evaluated.snapshot()[0])
    evaluation = Evaluation(os.environ.get("TEMPLATES_DIR") or None)  # as the service reads it
    evaluation.load()
    ingest = _LocalIngest(Processor(), evaluation)
    _timed_pass(ingest.process_local, snapshot)
    t0 = time.perf_counter()
    evaluation.enable(ingest, "bench-whole-graph", whole_graph=True)
    out["evaluator_whole_graph_s"] = round(time.perf_counter() - t0, 3)
    gc_policy.freeze_heap("built and evaluated")
    updates = evaluated.take(evaluator_events)
    actions = ingest.action_events
    out["stream_with_evaluator_events"] = len(updates)
    out["stream_with_evaluator"] = {
        **_timed_pass(ingest.process_local, updates),
        "templates": len(evaluation.templates),
        "action_events_per_stream_event": round(
            (ingest.action_events - actions) / max(len(updates), 1), 2
        ),
    }
    return out


def run_ceiling(size: str, events: int, env: dict[str, str]) -> dict[str, Any]:
    with_evaluator = str(min(events, CEILING_EVALUATOR_EVENTS))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "failover_drill.bench",
            "--ceiling-child",
            size,
            str(events),
            with_evaluator,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    return orjson.loads(proc.stdout)  # type: ignore[no-any-return]


def write_shape(topo: dict[str, Any], path: Path) -> None:
    """The service's graph in processor_bench's shape format (JSON lines)."""
    with path.open("wb") as fh:
        for v in topo["vertices"]:
            fh.write(orjson.dumps(["v", v["vitrage_id"], v]) + b"\n")
        for e in topo["edges"]:
            src, dst, key = e.pop("source"), e.pop("target"), e.pop("relationship_type")
            fh.write(orjson.dumps(["e", src, dst, key, e]) + b"\n")


def bare_networkx(shape: Path) -> dict[str, Any]:
    """processor_bench's bare-networkx measurement (a fresh process) on ``shape``."""
    out: dict[str, Any] = {}
    for mode in ("bare", "bare-interned"):
        proc = subprocess.run(
            [sys.executable, str(PROCESSOR_BENCH), "--child", mode, str(shape)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        out[mode] = orjson.loads(proc.stdout)
    return {
        "bare_networkx_rss_mb": round(out["bare"]["rss_mb"], 1),
        "bare_networkx_interned_rss_mb": round(out["bare-interned"]["rss_mb"], 1),
        "bare_vertices": out["bare"]["vertices"],
        "bare_edges": out["bare"]["edges"],
    }


def _rate(run: dict[str, Any], key: str = "graph_events_per_s") -> float:
    return float((run.get("throughput") or {}).get(key) or 0)


def _round_row(n: int, off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": n,
        "off_graph_events_per_s": _rate(off) or None,
        "on_graph_events_per_s": _rate(on) or None,
        "on_persisted_events_per_s": _rate(on, "persisted_events_per_s") or None,
        "other_cpu_pct": [
            (off.get("host_load") or {}).get("other_cpu_pct"),
            (on.get("host_load") or {}).get("other_cpu_pct"),
        ],
    }


async def e2e(cfg: BenchConfig) -> dict[str, Any]:
    """Off and on, alternating, ``e2e_rounds`` times; the best round of each is reported
    in full (a shared host only ever makes a run slower), every round in ``rounds``."""
    assert cfg.e2e_size is not None
    shape = cfg.workdir / "shape.jsonl"
    offs: list[dict[str, Any]] = []
    ons: list[dict[str, Any]] = []
    for n in range(cfg.e2e_rounds):
        offs.append(await e2e_run(cfg, False, n + 1, shape=shape if n == 0 else None))
        ons.append(await e2e_run(cfg, True, n + 1, shape=None))
    off, on = max(offs, key=_rate), max(ons, key=_rate)
    mem = offs[0].pop("memory", None)
    out: dict[str, Any] = {
        "size": cfg.e2e_size,
        "events": cfg.e2e_events,
        "rounds": [_round_row(n + 1, a, b) for n, (a, b) in enumerate(zip(offs, ons, strict=True))],
        "persistency_off": off,
        "persistency_on": on,
        "errors": [r["error"] for r in (*offs, *ons) if "error" in r],
    }
    if _rate(off) and _rate(on):
        out["persistency_cost_pct"] = {
            "graph_processed": round(100 * (1 - _rate(on) / _rate(off)), 1),
            "persisted": round(100 * (1 - _rate(on, "persisted_events_per_s") / _rate(off)), 1),
        }
    say(f"e2e-{cfg.e2e_size}: the processor alone on the same events (in-process ceiling)")
    try:
        out["processor_only"] = await asyncio.to_thread(
            run_ceiling, cfg.e2e_size, cfg.e2e_events, cfg.env
        )
    except subprocess.CalledProcessError as exc:
        out["processor_only"] = {"error": exc.stderr[-2000:]}
    if mem is not None and shape.exists():
        bare = await asyncio.to_thread(bare_networkx, shape)
        shape.unlink()
        mem.update(bare)
        mem["peak_rss_over_bare"] = ratio(mem["peak_rss_mb"], bare["bare_networkx_rss_mb"])
        mem["graph_rss_over_bare"] = ratio(mem["graph_rss_mb"], bare["bare_networkx_rss_mb"])
    out["memory"] = mem
    return out


# ------------------------------------------------------------------- summary
TARGETS = {
    "snapshot_failover_s_at_100k": "<= 2",
    "fresh_over_snapshot_at_100k": ">= 10",
    "snapshot_pause_ms": "<= 50",
    "replay_records_per_s": ">= 100000",
    "e2e_events_per_s_persistency_on": ">= 20000",
    "persistency_cost_pct": "<= 25",
    "peak_rss_over_bare_networkx": "<= 2",
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, next to the issue's targets."""
    out: dict[str, Any] = {}
    for name, run in report.get("failover", {}).items():
        sf = run.get("snapshot_failover") or {}
        rounds = run.get("snapshot_failover_rounds") or []
        out[f"failover_{name}"] = {
            "fresh_failover_s": (run.get("fresh_failover") or {}).get("kill_to_ready_s"),
            "snapshot_failover_s": sf.get("kill_to_ready_s"),
            "snapshot_failover_s_rounds": [r.get("kill_to_ready_s") for r in rounds],
            "fresh_over_snapshot": run.get("fresh_over_snapshot"),
            "cold_start_s": (run.get("cold_start") or {}).get("process_start_to_ready_s"),
            "stream_events_after_snapshot": (run.get("stream") or {}).get("events"),
            "evaluator_events_after_snapshot": (run.get("stream") or {}).get("evaluator_events"),
            "replayed": sf.get("replayed"),
            "replay_rate": sf.get("replay_rate"),
            "replay_rate_rounds": [r.get("replay_rate") for r in rounds],
            "snapshot_pause_ms": (run.get("snapshot") or {}).get("pause_ms"),
            "snapshot_mb": mb((run.get("snapshot") or {}).get("compressed_bytes")),
            "graph_equal_after_failover": all(r.get("graph_equal") for r in rounds)
            if rounds
            else sf.get("graph_equal"),
            "hot_failover_s": (run.get("hot_failover") or {}).get("kill_to_ready_s"),
            "fresh_over_hot": run.get("fresh_over_hot"),
            "hot_replayed": (run.get("hot_failover") or {}).get("replayed"),
            "graph_equal_after_hot_failover": (run.get("hot_failover") or {}).get("graph_equal"),
            "other_cpu_pct": (run.get("host_load") or {}).get("other_cpu_pct"),
        }
    e = report.get("e2e")
    if e:
        off, on = e["persistency_off"], e["persistency_on"]
        t_off, t_on = off.get("throughput", {}), on.get("throughput", {})
        m = e.get("memory") or {}
        out[f"e2e_{e['size']}"] = {
            "graph_events_per_s_off": t_off.get("graph_events_per_s"),
            "graph_events_per_s_on": t_on.get("graph_events_per_s"),
            "persisted_events_per_s_on": t_on.get("persisted_events_per_s"),
            "persistency_cost_pct": e.get("persistency_cost_pct"),
            "records_per_stream_event": ratio(t_off.get("records"), t_off.get("events")),
            "in_process_events_per_s": {
                "processor": ((e.get("processor_only") or {}).get("stream") or {}).get(
                    "decode_and_process_per_s"
                ),
                "processor_and_evaluator": (
                    (e.get("processor_only") or {}).get("stream_with_evaluator") or {}
                ).get("decode_and_process_per_s"),
            },
            "get_all_build_s": off.get("load", {}).get("get_all_s"),
            "peak_rss_mb": m.get("peak_rss_mb"),
            "graph_rss_mb": m.get("graph_rss_mb"),
            "bare_networkx_rss_mb": m.get("bare_networkx_rss_mb"),
            "peak_rss_over_bare": m.get("peak_rss_over_bare"),
            "other_cpu_pct": [
                (off.get("host_load") or {}).get("other_cpu_pct"),
                (on.get("host_load") or {}).get("other_cpu_pct"),
            ],
        }
    out["targets"] = TARGETS
    return out


async def run(cfg: BenchConfig) -> dict[str, Any]:
    started = time.monotonic()
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels the runs: their finally blocks stop the processes and clean up.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        # the machine's speed on fixed work: compare figures across runs beside it
        "speed_probe_at_start": probe(),
        "config": {
            "sizes": cfg.sizes,
            "events_since_snapshot": cfg.events,
            "e2e_size": cfg.e2e_size,
            "e2e_events": cfg.e2e_events,
            "env": {**BASE_ENV, **cfg.env},
        },
        "failover": {},
    }
    for name in cfg.sizes:
        report["failover"][name] = await failover_run(name, cfg)
    if cfg.e2e_size:
        report["e2e"] = await e2e(cfg)
    report["summary"] = summary(report)
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["speed_probe_at_end"] = probe()
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report


def failed(report: dict[str, Any]) -> bool:
    runs = [*report["failover"].values()]
    return any("error" in r for r in runs) or bool(report.get("e2e", {}).get("errors"))


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="failover-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10k,100k", help="failover runs, comma list ('' = none)")
    p.add_argument("--events", type=int, default=50_000, help="stream events after the snapshot")
    p.add_argument("--e2e-size", default="100k", help="10k, 100k, or none")
    p.add_argument("--e2e-events", type=int, default=200_000)
    p.add_argument("--e2e-rounds", type=int, default=1, help="off/on pairs; the best is kept")
    p.add_argument(
        "--snapshot-rounds",
        type=int,
        default=3,
        help="snapshot failovers in a row per size; the median is reported",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service process (repeatable), e.g. LEADER_FENCE_TIMEOUT=3",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    p.add_argument("--ceiling-child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument(
        "--logs",
        type=Path,
        help="keep the services' logs here (default: a"
        " temporary directory, removed unless a run failed)",
    )
    a = p.parse_args(argv)
    if a.ceiling_child:
        size, events, evaluated = a.ceiling_child
        setup_logging("warning", "json", service="failover-bench")  # stdout is the result's
        print(orjson.dumps(processor_ceiling(size, int(events), int(evaluated))).decode())
        sys.exit(0)
    sizes = [s for s in a.sizes.split(",") if s]
    e2e_size = None if a.e2e_size in ("", "none") else a.e2e_size
    for s in [*sizes, *([e2e_size] if e2e_size else [])]:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; known: {', '.join(SIZES)}")
    cfg = BenchConfig(
        sizes=sizes,
        events=a.events,
        e2e_size=e2e_size,
        e2e_events=a.e2e_events,
        e2e_rounds=max(1, a.e2e_rounds),
        snapshot_rounds=max(1, a.snapshot_rounds),
        timeout=a.timeout,
        env=dict(kv.split("=", 1) for kv in a.env),
    )
    if a.logs is not None:
        a.logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cfg.workdir, ignore_errors=True)
        cfg.workdir, cfg.keep_logs = a.logs, True
    return cfg


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging("warning", "json", service="failover-bench")  # stdout is the report's
    import uvloop

    try:
        report = uvloop.run(run(cfg))
    except (KeyboardInterrupt, asyncio.CancelledError):  # the runs cleaned up after themselves
        say(f"interrupted; logs in {cfg.workdir}")
        sys.exit(130)
    bad = failed(report)
    if bad:
        say(f"logs kept in {cfg.workdir}")
    elif not cfg.keep_logs:
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
