"""Evaluator benchmark: the shipped templates on a ~100k-vertex graph under host-outage storms.

Not a test. Prints one JSON object::

    .venv/bin/python benchmarks/evaluator_bench.py [--stream-events 20000] [--storm-every 200]

The graph is the collector stub's topology (``--hosts`` x ``--instances-per-host``
instances, one port each, volumes on a fraction of them, ~1000 alarms: 101,111
vertices at the defaults; ``TopologyConfig.large()`` would be ~127k), built from
its get_all snapshot events by a :class:`Processor` with evaluators disabled.

* ``full_graph_pass_s``: enabling evaluators on the whole graph, as after a fresh
  start (``evaluate_all`` + ``run_pending``), median of ``--repeat`` runs (after an
  untimed warm-up run), each on a fresh copy of the post-build state;
  ``full_graph_pass_in_build_process_s`` is the single run on the processor that
  built the graph;
* ``storm``: ``--stream-events`` events of :class:`UpdateStream` with a host-outage
  storm every ``--storm-every`` events ("Host is unreachable" on a host, InstanceDown
  on most of its instances) through ``run_to_fixpoint``: stream events per second
  including evaluation, action events (one logged record per evaluation round) and
  the action steps they carry, per second and per stream event, deduced alarms
  live at the end;
* ``takeover``: the time to enable evaluators after a failover. The post-storm state
  is restored (as a standby restores a snapshot) and the vertices touched by the
  last K processed records (datasource and action records alike, as replay marks
  them) are evaluated (``evaluate_vertices`` + ``run_pending``), for each K of
  ``--takeover-records``. Compared with ``full_graph_pass_s`` and with a whole-graph
  pass on that same post-storm state (``full_graph_pass_at_takeover_s``, what a
  takeover without a dirty set would cost). A consistent incremental evaluation
  leaves nothing for either pass to do: their ``action_events`` should be 0.

Build and storm run in one subprocess (``--child run``), the enabling passes in
another (``--child enable``) that only holds the restored state, so their numbers
do not include the build's garbage. Everything is seeded (PYTHONHASHSEED=0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from collector_stub.stream import (  # noqa: E402
    HOST_DOWN,
    INSTANCE_DOWN,
    StreamConfig,
    UpdateStream,
)
from collector_stub.topology import TopologyConfig, generate_topology  # noqa: E402
from graph_service.entity_graph import IS_DELETED, TYPE  # noqa: E402
from graph_service.evaluator import (  # noqa: E402
    Evaluator,
    evaluation_trigger,
    run_pending,
    run_to_fixpoint,
    touched_vertices,
)
from graph_service.gc_policy import gc_paused  # noqa: E402
from graph_service.processor import Outcome, Processor  # noqa: E402
from graph_service.snapshot_codec import dump  # noqa: E402
from graph_service.templates import load_templates  # noqa: E402
from rca_common.events import decode_events  # noqa: E402

SEED = 42
VITRAGE = "vitrage"


def evaluator() -> Evaluator:
    templates, errors = load_templates()
    if errors:
        sys.exit(f"shipped templates rejected: {errors}")
    return Evaluator(templates)


def topology_config(args: argparse.Namespace) -> TopologyConfig:
    return TopologyConfig(
        zones=10,
        hosts=args.hosts,
        instances_per_host=args.instances_per_host,
        networks=100,
        ports_per_instance=1,
        volumes=args.volumes,
        alarms=args.alarms,
        projects=50,
    )


def deduced_alarms(p: Processor) -> Counter[str]:
    return Counter(
        a.get("name", "?")
        for _, a in p.graph.vertices()
        if a.get(TYPE) == VITRAGE and not a.get(IS_DELETED)
    )


def steps_in(outcomes: list[Outcome]) -> int:
    """The action steps the rounds' events carry (an action event is one round)."""
    return sum(len(o.event.payload["steps"]) for o in outcomes)


def restore(raw: bytes) -> Processor:
    """A processor holding the state a snapshot pickle holds (what a standby restores)."""
    with gc_paused():
        state = pickle.loads(raw)["state"]
    p = Processor()
    p.import_state(state)
    return p


# ------------------------------------------------------------------ children
def child_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build, fresh full pass, storm stream; leaves the states and dirty sets in workdir."""
    ev = evaluator()
    topo = generate_topology(topology_config(args), SEED)
    stream = UpdateStream(topo, StreamConfig(seed=SEED, storm_every=args.storm_every))
    snapshot, _ = stream.snapshot()
    build = decode_events(orjson.dumps(list(snapshot)))

    p = Processor()
    records: list[list[Any]] = []  # every processed record's changes, in order
    gc.collect()
    t = time.perf_counter()
    for e in build:
        records.append(p.process(e).changes)
    build_s = time.perf_counter() - t
    vertices, edges = len(p.graph), p.graph.edge_count
    (workdir / "built.pickle").write_bytes(dump(p.export_state()))

    # Enabling evaluators on the whole graph (the fresh start).
    gc.collect()
    t = time.perf_counter()
    trigger = evaluation_trigger("fresh/1", p.clock)  # type: ignore[arg-type]
    pending = ev.evaluate_all(p.graph, p.actions, trigger)
    outcomes = run_pending(p, ev, trigger, pending)
    full_s = time.perf_counter() - t
    records.extend(o.changes for o in outcomes)
    fresh_actions = len(outcomes)
    fresh_steps = steps_in(outcomes)
    fresh_deduced = sum(deduced_alarms(p).values())

    # The storm stream (generated and decoded before timing).
    storms = 0
    storm_plan = stream._storm

    def counting_storm() -> bool:
        nonlocal storms
        planned = storm_plan()
        storms += planned
        return planned

    stream._storm = counting_storm  # type: ignore[method-assign]
    wire = stream.take(args.stream_events)
    names = Counter(
        w["payload"].get("name") for w in wire if w["payload"].get("status") == "firing"
    )
    updates = decode_events(orjson.dumps(wire))
    del wire
    gc.collect()
    actions = steps = 0
    t = time.perf_counter()
    for e in updates:
        outs = run_to_fixpoint(p, ev, e)
        actions += len(outs) - 1
        steps += steps_in(outs[1:])
        records.extend(o.changes for o in outs)
    storm_s = time.perf_counter() - t
    deduced = deduced_alarms(p)

    # The takeover: the state as the log leaves it, and what replay would mark dirty.
    storm_records = len(updates) + actions
    dirty: dict[str, list[str]] = {}
    tails: dict[str, dict[str, int]] = {}
    for k in args.takeover_records:
        tail = records[-k:]
        dirty[str(k)] = touched_vertices(chain.from_iterable(tail))
        tails[str(k)] = {
            "records": len(tail),
            "from_storm_phase": min(k, storm_records),
            "dirty_vertices": len(dirty[str(k)]),
        }
    (workdir / "stormed.pickle").write_bytes(dump(p.export_state()))
    (workdir / "dirty.json").write_bytes(orjson.dumps(dirty))
    return {
        "vertices": vertices,
        "edges": edges,
        "build_events": len(build),
        "build_events_per_s": round(len(build) / build_s),
        "full_graph_pass_in_build_process_s": round(full_s, 3),
        "fresh_action_events": fresh_actions,
        "fresh_action_steps": fresh_steps,
        "fresh_deduced_alarms": fresh_deduced,
        "storm": {
            "stream_events": len(updates),
            "storm_every": args.storm_every,
            "storms": storms,
            "host_unreachable_fired": names[HOST_DOWN[2]],
            "instance_down_fired": names[INSTANCE_DOWN[2]],
            "action_events": actions,
            "action_steps": steps,
            "seconds": round(storm_s, 2),
            "events_per_s": round(len(updates) / storm_s),
            "action_events_per_s": round(actions / storm_s),
            "action_steps_per_s": round(steps / storm_s),
            "records_per_s": round(storm_records / storm_s),
            "records_per_stream_event": round(storm_records / len(updates), 3),
            "action_steps_per_stream_event": round(steps / len(updates), 3),
            "deduced_alarms_live": sum(deduced.values()),
            "deduced_alarms_by_name": dict(sorted(deduced.items())),
            "active_actions": len(p.actions),
            "vertices_after": len(p.graph),
        },
        "tails": tails,
    }


def child_enable(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Time each way of enabling evaluators on a freshly restored state, ``--repeat`` times."""
    ev = evaluator()
    built = (workdir / "built.pickle").read_bytes()
    stormed = (workdir / "stormed.pickle").read_bytes()
    dirty: dict[str, list[str]] = orjson.loads((workdir / "dirty.json").read_bytes())
    scopes: list[tuple[str, bytes, list[str] | None]] = [
        ("fresh_full", built, None),
        ("takeover_full", stormed, None),
        *((f"takeover_dirty_{k}", stormed, vids) for k, vids in dirty.items()),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in scopes}
    issued: dict[str, int] = {}
    # One untimed round first: the first passes of a process pay for growing its heap.
    for round_ in range(args.repeat + 1):  # round-robin, so drift spreads evenly
        for name, raw, vids in scopes:
            p = restore(raw)
            gc.collect()
            t = time.perf_counter()
            trigger = evaluation_trigger("enable/2", p.clock)  # type: ignore[arg-type]
            if vids is None:
                pending = ev.evaluate_all(p.graph, p.actions, trigger)
            else:
                pending = ev.evaluate_vertices(p.graph, p.actions, vids, trigger)
            outcomes = run_pending(p, ev, trigger, pending)
            if round_:
                times[name].append(time.perf_counter() - t)
            issued[name] = len(outcomes)
            del p, pending, outcomes
    return {
        name: {"median_s": statistics.median(ts), "runs_s": ts, "action_events": issued[name]}
        for name, ts in times.items()
    }


# -------------------------------------------------------------------- driver
def run_child(mode: str, argv: list[str], workdir: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, __file__, *argv, "--child", mode, workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"benchmark child {mode} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--instances-per-host", type=int, default=45)
    ap.add_argument("--volumes", type=float, default=0.2, help="fraction of instances")
    ap.add_argument("--alarms", type=int, default=1000, help="alarms firing at start")
    ap.add_argument("--stream-events", type=int, default=20_000)
    ap.add_argument("--storm-every", type=int, default=200)
    ap.add_argument(
        "--takeover-records",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[5_000, 50_000],
        help="comma-separated K: dirty set = vertices touched by the last K records",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each enabling pass")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        mode, workdir = args.child
        child = child_run if mode == "run" else child_enable
        print(json.dumps(child(args, Path(workdir))))
        return

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="evaluator-bench-") as tmp:
        run = run_child("run", argv, tmp)
        enable = run_child("enable", argv, tmp)
    full = enable["fresh_full"]["median_s"]
    full_at_takeover = enable["takeover_full"]["median_s"]
    takeover: dict[str, Any] = {}
    for k in args.takeover_records:
        timing = enable[f"takeover_dirty_{k}"]
        tail = run["tails"][str(k)]
        takeover[f"last_{k}_records"] = {
            **tail,
            "dirty_fraction_of_graph": round(
                tail["dirty_vertices"] / run["storm"]["vertices_after"], 3
            ),
            "enable_s": round(timing["median_s"], 4),
            "action_events": timing["action_events"],
            "ratio_vs_full_graph_pass": round(timing["median_s"] / full, 4),
            "ratio_vs_full_graph_pass_at_takeover": round(timing["median_s"] / full_at_takeover, 4),
        }
    report = {
        "vertices": run["vertices"],
        "edges": run["edges"],
        "templates": len(evaluator().templates),
        "build_events": run["build_events"],
        "build_events_per_s": run["build_events_per_s"],
        "full_graph_pass_s": round(full, 3),
        "full_graph_pass_runs_s": [round(s, 3) for s in enable["fresh_full"]["runs_s"]],
        "full_graph_pass_in_build_process_s": run["full_graph_pass_in_build_process_s"],
        "full_graph_pass_action_events": run["fresh_action_events"],
        "full_graph_pass_action_steps": run["fresh_action_steps"],
        "full_graph_pass_deduced_alarms": run["fresh_deduced_alarms"],
        "storm": run["storm"],
        "full_graph_pass_at_takeover_s": round(full_at_takeover, 3),
        "full_graph_pass_at_takeover_action_events": enable["takeover_full"]["action_events"],
        "takeover": takeover,
        "repeat": args.repeat,
        # Other work on the machine inflates and scatters the timings: compare runs
        # with a similar load (2 cores here).
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
