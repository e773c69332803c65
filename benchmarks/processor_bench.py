"""Processor benchmark: build a ~100k-vertex graph from events, then stream updates.

Not a test. Prints one JSON object::

    .venv/bin/python benchmarks/processor_bench.py [--scale 1.0] [--batch 100]

* ``build_events_per_s``: processing the topology's snapshot events (every source's
  get_all with its end_snapshot, containers first, so consistency scans run too);
* ``update_events_per_s``: a stream of updates (instance state changes, moves,
  host state changes, alarms firing and resolving, volume attach changes), the
  median of ``--rounds`` rounds of ``--updates`` events in a row, each continuing the
  stream (``update_rounds_events_per_s``: every round, in order);
* ``decode_events_per_s``: :func:`decode_events` on the update stream encoded as
  message bodies of ``--batch`` events;
* ``late_source_events_per_s``: alarms firing and resolving from two sources, one's
  clock ``LATE_SOURCE_LAG_S`` behind the other's (its deletions queue for purging
  behind those already queued);
* ``graph_rss_mb``: RSS growth of a fresh process that builds the graph from the
  same events (generated on the fly, not held; dedup window kept tiny so event ids
  do not count; vertex-id cache cleared): what the service pays for the graph;
* ``bare_networkx_rss_mb``: RSS growth of a fresh process that builds a plain
  ``nx.MultiDiGraph`` with the same vertices, edges and attributes directly
  (attributes parsed per element from JSON lines, strings not interned);
  ``bare_networkx_interned_rss_mb`` is the same with every string interned;
* ``rss_ratio``: ``graph_rss_mb / bare_networkx_rss_mb``.

Throughput is measured under the service's garbage-collector policy
(graph_service/gc_policy.py: the young threshold, and the built graph frozen).
Each measurement runs in its own subprocess (``--child``) so that numbers do not
include another phase's garbage. Everything is seeded: the same scale gives the
same graph.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import networkx as nx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402

from graph_service import gc_policy  # noqa: E402
from graph_service.processor import Processor  # noqa: E402
from graph_service.transformers import clear_vertex_ids  # noqa: E402
from rca_common import compiled  # noqa: E402
from rca_common.events import Action, Event, decode_events, encode_events  # noqa: E402
from rca_common.logging import setup_logging  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SEED = 20260101
LATE_SOURCE_LAG_S = 10.0  # late_source_events_per_s: one alarm source's clock behind

INSTANCE_STATES = ("ACTIVE",) * 12 + ("SHUTOFF", "SUSPENDED", "PAUSED", "ERROR")
HOST_STATES = ("UP",) * 6 + ("DOWN", "MAINTENANCE")
FLAVORS = ("m1.tiny", "m1.small", "m1.medium", "m1.large")
IMAGES = ("cirros-0.6", "ubuntu-24.04", "rhel-9.4", "debian-12")
ALARM_KINDS = (  # (alarm type, resource kind, name, severity)
    ("zabbix", "nova.host", "Host is unreachable", "disaster"),
    ("zabbix", "nova.host", "Processor load is too high", "average"),
    ("prometheus", "nova.instance", "InstanceDown", "critical"),
    ("prometheus", "nova.instance", "HighMemoryUsage", "warning"),
    ("aodh", "nova.instance", "cpu_util_high", "warning"),
    ("aodh", "neutron.port", "port_packet_loss", "warning"),
)


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def uid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


class Synthetic:
    """A seeded cloud (~100k entities at scale 1.0) and the events describing it."""

    def __init__(self, scale: float) -> None:
        rng = self.rng = random.Random(SEED)
        self.zones = [f"zone-{i}" for i in range(10)]
        self.hosts = [f"compute-{i:05d}" for i in range(max(1, int(1000 * scale)))]
        self.networks = [uid(rng) for _ in range(max(1, int(100 * scale)))]
        n_inst = max(1, int(40_000 * scale))
        self.instances = [uid(rng) for _ in range(n_inst)]
        self.instance_host = [rng.randrange(len(self.hosts)) for _ in range(n_inst)]
        self.instance_state = ["ACTIVE"] * n_inst
        self.ports = [uid(rng) for _ in range(n_inst)]  # one port per instance
        self.port_network = [rng.randrange(len(self.networks)) for _ in range(n_inst)]
        n_vol = max(1, int(15_000 * scale))
        self.volumes = [uid(rng) for _ in range(n_vol)]
        self.volume_attached = [
            sorted(rng.sample(range(n_inst), rng.choice((0, 1, 1, 1, 2)))) for _ in range(n_vol)
        ]
        self.projects = [uid(rng) for _ in range(50)]
        self.alarms: dict[str, tuple[int, int]] = {}  # alarm id -> (kind, resource index)
        self.t = 0.0
        self.n = 0
        for _ in range(max(1, int(3000 * scale))):
            self._new_alarm()

    # ------------------------------------------------------------- payloads
    def _new_alarm(self) -> str:
        rng = self.rng
        kind = rng.randrange(len(ALARM_KINDS))
        rkind = ALARM_KINDS[kind][1]
        size = len(self.hosts) if rkind == "nova.host" else len(self.instances)
        res = rng.randrange(size)
        aid = f"{ALARM_KINDS[kind][0]}-{uid(rng)}"
        self.alarms[aid] = (kind, res)
        return aid

    def _resource_id(self, rkind: str, res: int) -> str:
        if rkind == "nova.host":
            return self.hosts[res]
        if rkind == "nova.instance":
            return self.instances[res]
        return self.ports[res]

    def alarm_payload(self, aid: str, status: str) -> tuple[str, dict[str, Any]]:
        kind, res = self.alarms[aid]
        atype, rkind, name, severity = ALARM_KINDS[kind]
        return atype, {
            "name": name,
            "severity": severity,
            "resource_type": rkind,
            "resource_id": self._resource_id(rkind, res),
            "status": status,
            "description": f"{name} on {rkind}",
        }

    def instance_payload(self, i: int) -> dict[str, Any]:
        return {
            "name": f"vm-{i:06d}",
            "host": self.hosts[self.instance_host[i]],
            "state": self.instance_state[i],
            "flavor": FLAVORS[i % len(FLAVORS)],
            "image": IMAGES[i % len(IMAGES)],
            "project_id": self.projects[i % len(self.projects)],
            "ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        }

    def host_payload(self, h: int, state: str = "UP") -> dict[str, Any]:
        return {
            "name": self.hosts[h],
            "zone": self.zones[h % len(self.zones)],
            "state": state,
            "vcpus": 64,
            "memory_mb": 262144,
        }

    # --------------------------------------------------------------- events
    # Events are built with model_construct (the fields are already the right
    # types): validation is what decode_events_per_s measures, not the processor.
    def event(self, etype: str, eid: str, action: str, payload: dict[str, Any]) -> Event:
        self.n += 1
        self.t += 0.01
        return Event.model_construct(
            event_id=f"bench-{self.n}",
            source=etype,
            entity_type=etype,
            entity_id=eid,
            action=Action(action),
            sample_timestamp=T0 + timedelta(seconds=self.t),
            payload=payload,
        )

    def end(self, source: str) -> Event:
        self.n += 1
        return Event.model_construct(
            event_id=f"bench-{self.n}",
            source=source,
            entity_type=source,
            action=Action.END_SNAPSHOT,
            sample_timestamp=T0 + timedelta(seconds=self.t),
        )

    def build_events(self) -> Iterator[Event]:
        """Every source's get_all, containers first, each closed by its end_snapshot."""
        ev = self.event
        yield ev("openstack.cluster", "cluster-0", "init_snapshot", {"state": "available"})
        yield self.end("openstack.cluster")
        for z in self.zones:
            yield ev(
                "nova.zone", z, "init_snapshot", {"cluster": "cluster-0", "state": "available"}
            )
        yield self.end("nova.zone")
        for h in range(len(self.hosts)):
            yield ev("nova.host", self.hosts[h], "init_snapshot", self.host_payload(h))
        yield self.end("nova.host")
        for n, net in enumerate(self.networks):
            payload = {"name": f"net-{n}", "state": "ACTIVE", "cidr": f"10.{n % 256}.0.0/16"}
            yield ev("neutron.network", net, "init_snapshot", payload)
        yield self.end("neutron.network")
        for i in range(len(self.instances)):
            yield ev("nova.instance", self.instances[i], "init_snapshot", self.instance_payload(i))
        yield self.end("nova.instance")
        for p, port in enumerate(self.ports):
            payload = {
                "name": f"port-{p}",
                "state": "ACTIVE",
                "network_id": self.networks[self.port_network[p]],
                "device_id": self.instances[p],
                "mac_address": f"fa:16:3e:{(p >> 16) & 255:02x}:{(p >> 8) & 255:02x}:{p & 255:02x}",
            }
            yield ev("neutron.port", port, "init_snapshot", payload)
        yield self.end("neutron.port")
        for v, vol in enumerate(self.volumes):
            attached = [self.instances[i] for i in self.volume_attached[v]]
            payload = {"name": f"vol-{v}", "state": "in-use", "attached_to": attached, "size": 20}
            yield ev("cinder.volume", vol, "init_snapshot", payload)
        yield self.end("cinder.volume")
        for atype in ("zabbix", "prometheus", "aodh"):
            for aid in list(self.alarms):
                kind_type, payload = self.alarm_payload(aid, "firing")
                if kind_type == atype:
                    yield ev(atype, aid, "init_snapshot", payload)
            yield self.end(atype)

    def update_events(self, count: int) -> Iterator[Event]:
        """State changes (most), moves, host state changes, alarms, volume changes."""
        rng = self.rng
        ev = self.event
        n_inst = len(self.instances)
        for _ in range(count):
            r = rng.random()
            if r < 0.55:  # instance state change
                i = rng.randrange(n_inst)
                self.instance_state[i] = rng.choice(INSTANCE_STATES)
                yield ev("nova.instance", self.instances[i], "update", self.instance_payload(i))
            elif r < 0.65:  # live migration
                i = rng.randrange(n_inst)
                self.instance_host[i] = rng.randrange(len(self.hosts))
                yield ev("nova.instance", self.instances[i], "update", self.instance_payload(i))
            elif r < 0.72:  # host state change
                h = rng.randrange(len(self.hosts))
                payload = self.host_payload(h, rng.choice(HOST_STATES))
                yield ev("nova.host", self.hosts[h], "update", payload)
            elif r < 0.84:  # an alarm fires
                aid = self._new_alarm()
                atype, payload = self.alarm_payload(aid, "firing")
                yield ev(atype, aid, "update", payload)
            elif r < 0.95 and self.alarms:  # an alarm resolves
                aid = rng.choice(list(self.alarms)) if len(self.alarms) < 64 else self._pick_alarm()
                atype, payload = self.alarm_payload(aid, "resolved")
                del self.alarms[aid]
                yield ev(atype, aid, "update", payload)
            else:  # volume attach/detach
                v = rng.randrange(len(self.volumes))
                att = self.volume_attached[v]
                self.volume_attached[v] = att[1:] if att else [rng.randrange(n_inst)]
                attached = [self.instances[i] for i in self.volume_attached[v]]
                payload = {"name": f"vol-{v}", "state": "in-use", "attached_to": attached}
                yield ev("cinder.volume", self.volumes[v], "update", payload)

    def late_source_events(self, count: int, lag_s: float) -> Iterator[Event]:
        """Alarms firing and resolving from two sources, zabbix's clock ``lag_s`` behind
        prometheus's: every zabbix resolution deletes a vertex "in the past", behind
        the deletions queued since (``late_source_events_per_s``)."""
        pending: dict[str, list[str]] = {"zabbix": [], "prometheus": []}
        for k in range(count):
            atype = "zabbix" if k % 2 else "prometheus"
            queue = pending[atype]
            if len(queue) >= 16:  # resolve the oldest of this source's alarms
                aid = queue.pop(0)
                status = "resolved"
            else:
                aid = self._new_alarm_of(atype)
                queue.append(aid)
                status = "firing"
            atype, payload = self.alarm_payload(aid, status)
            event = self.event(atype, aid, "update", payload)
            if atype == "zabbix":
                late = event.sample_timestamp - timedelta(seconds=lag_s)
                event = event.model_copy(update={"sample_timestamp": late})
            yield event

    def _new_alarm_of(self, atype: str) -> str:
        while True:
            aid = self._new_alarm()
            if ALARM_KINDS[self.alarms[aid][0]][0] == atype:
                return aid
            del self.alarms[aid]

    def _pick_alarm(self) -> str:
        # dicts keep insertion order: resolve one of the older alarms, cheaply.
        it = iter(self.alarms)
        for _ in range(self.rng.randrange(32)):
            next(it)
        return next(it)


# ------------------------------------------------------------------ children
def child_throughput(scale: float, updates: int, batch: int, rounds: int) -> dict[str, Any]:
    setup_logging("warning")  # stdout carries the JSON result only
    gc_policy.configure()  # the collector as the service runs it
    syn = Synthetic(scale)
    build = list(syn.build_events())
    p = Processor()
    gc.collect()
    t = time.perf_counter()
    for e in build:
        p.process(e)
    build_s = time.perf_counter() - t
    built = len(build)
    del build
    rates = []
    for n in range(rounds):  # the stream goes on: each round continues the last
        events = list(syn.update_events(updates))
        gc.collect()
        # as when the service goes active; this round's events too, as the first's (the
        # service holds no list of them for the collector to walk)
        gc_policy.freeze_heap("graph built" if n == 0 else "next round")
        if n == 0:
            upd = events
        t = time.perf_counter()
        for e in events:
            p.process(e)
        rates.append(round(len(events) / (time.perf_counter() - t)))
        if n == 0:  # the graph the memory child builds
            vertices, edges = len(p.graph), p.graph.edge_count
        del events
    bodies = [encode_events(upd[k : k + batch]) for k in range(0, len(upd), batch)]
    t = time.perf_counter()
    decoded = 0
    for body in bodies:
        decoded += len(decode_events(body))
    decode_s = time.perf_counter() - t
    late = list(syn.late_source_events(updates // 2, LATE_SOURCE_LAG_S))
    t = time.perf_counter()
    for e in late:
        p.process(e)
    late_s = time.perf_counter() - t
    return {
        "late_source_events_per_s": round(len(late) / late_s),
        "build_events": built,
        "build_events_per_s": round(built / build_s),
        "update_events": len(upd),
        "update_events_per_s": sorted(rates)[len(rates) // 2],
        "update_rounds_events_per_s": rates,
        "decode_events_per_s": round(decoded / decode_s),
        "vertices": vertices,
        "edges": edges,
    }


def child_graph_memory(scale: float, updates: int, shape_path: str) -> dict[str, Any]:
    syn = Synthetic(scale)
    p = Processor(recent_capacity=1)
    gc.collect()
    base = rss()
    for e in syn.build_events():
        p.process(e)
    for e in syn.update_events(updates):
        p.process(e)
    clear_vertex_ids()
    gc.collect()
    used = rss() - base
    with open(shape_path, "wb") as fh:
        for vid, attrs in p.graph.vertices():
            fh.write(orjson.dumps(["v", vid, attrs]) + b"\n")
        for src, dst, key, attrs in p.graph.edges():
            fh.write(orjson.dumps(["e", src, dst, key, attrs]) + b"\n")
    return {"graph_rss_mb": used / 2**20, "vertices": len(p.graph), "edges": p.graph.edge_count}


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, list):
        return [_interned(v) for v in value]
    if isinstance(value, dict):
        return {sys.intern(k): _interned(v) for k, v in value.items()}
    return value


def child_bare(shape_path: str, intern: bool) -> dict[str, Any]:
    g = nx.MultiDiGraph()
    gc.collect()
    base = rss()
    with open(shape_path, "rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            if intern:
                rec = _interned(rec)
            if rec[0] == "v":
                g.add_node(rec[1], **rec[2])
            else:
                g.add_edge(rec[1], rec[2], key=rec[3], **rec[4])
    gc.collect()
    return {
        "rss_mb": (rss() - base) / 2**20,
        "vertices": g.number_of_nodes(),
        "edges": g.number_of_edges(),
    }


# -------------------------------------------------------------------- driver
def start_child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, __file__, "--child", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def finish_child(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"benchmark child {proc.args[3]} failed ({proc.returncode}):\n{err}")  # type: ignore[index]
    return json.loads(out)


def run_child(*args: str) -> dict[str, Any]:
    return finish_child(start_child(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 is ~100k vertices")
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100, help="events per body for decode")
    ap.add_argument(
        "--rounds", type=int, default=3, help="update rounds in a row; the median is reported"
    )
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        mode, *rest = args.child
        if mode == "throughput":
            result = child_throughput(args.scale, args.updates, args.batch, args.rounds)
        elif mode == "memory":
            result = child_graph_memory(args.scale, args.updates, rest[0])
        else:
            result = child_bare(rest[0], intern=mode == "bare-interned")
        print(json.dumps(result))
        return

    started = time.perf_counter()
    common = ["--scale", str(args.scale), "--updates", str(args.updates)]
    thr = run_child("throughput", *common, "--batch", str(args.batch), "--rounds", str(args.rounds))
    with tempfile.TemporaryDirectory() as tmp:
        shape = str(Path(tmp) / "shape.jsonl")
        mem = run_child("memory", shape, *common)
        # Memory only: these two may share the CPU.
        procs = [start_child("bare", shape), start_child("bare-interned", shape)]
        bare, bare_interned = (finish_child(p) for p in procs)
    assert (mem["vertices"], mem["edges"]) == (thr["vertices"], thr["edges"])
    assert (bare["vertices"], bare["edges"]) == (mem["vertices"], mem["edges"])
    report = {
        "vertices": thr["vertices"],
        "edges": thr["edges"],
        "build_events": thr["build_events"],
        "build_events_per_s": thr["build_events_per_s"],
        "update_events": thr["update_events"],
        "update_events_per_s": thr["update_events_per_s"],
        "update_rounds_events_per_s": thr["update_rounds_events_per_s"],
        "decode_events_per_s": thr["decode_events_per_s"],
        "decode_batch": args.batch,
        "late_source_events_per_s": thr["late_source_events_per_s"],
        "late_source_lag_s": LATE_SOURCE_LAG_S,
        "graph_rss_mb": round(mem["graph_rss_mb"], 1),
        "bare_networkx_rss_mb": round(bare["rss_mb"], 1),
        "bare_networkx_interned_rss_mb": round(bare_interned["rss_mb"], 1),
        "rss_ratio": round(mem["graph_rss_mb"] / bare["rss_mb"], 2),
        "compiled": compiled.status()["all"],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
