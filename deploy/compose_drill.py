#!/usr/bin/env python3
"""The container failover drill's logic; ``deploy/compose-drill.sh`` drives it.

Standard library only (it runs with the host's ``python3``, not the project's
virtualenv). It talks to the two graph services over their published ports and
to the stack through the compose command and the container engine:

* ``wait-healthy SERVICE...``: until the engine's healthcheck of each passes;
* ``run``: find the one active graph, then per kill: let events flow, record the
  active's status and topology, kill it (``compose kill -s KILL`` or a crash of
  the service process inside the container), time how long the other takes to
  answer ``/readyz``, check that nothing of the old graph was lost, bring the
  victim back as a standby; print the JSON report (exit 1 unless ok);
* ``logs DIR``: save every container's log (kept when a drill fails).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

GRAPHS = ("graph-a", "graph-b")
SERVICES = ("postgres", "rabbitmq", "collector", "persistor", *GRAPHS)
SAMPLE_TS = "vitrage_sample_timestamp"
# Kill the service process (the child of the container's init) from inside: the
# container then exits like a crash, so the restart policy applies. Prints the
# wall-clock time of the kill (host and container share the clock).
CRASH_CODE = """
import os, signal, time
victims = []
for pid in os.listdir('/proc'):
    try:
        stat = open(f'/proc/{pid}/stat').read()
    except (OSError, ValueError):
        continue
    if pid.isdigit() and stat.rsplit(')', 1)[1].split()[1] == '1':
        victims.append(int(pid))
print(time.time(), flush=True)
for pid in victims:
    os.kill(pid, signal.SIGKILL)
print(victims, flush=True)
"""


def log(msg: str) -> None:
    print(f"compose-drill: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ HTTP
def http_json(port: int, path: str, timeout: float = 2.0) -> tuple[int, Any] | None:
    """(status, body) of GET http://127.0.0.1:port/path; None when nothing answers."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return None


def status(port: int) -> dict[str, Any] | None:
    got = http_json(port, "/status")
    return got[1] if got and got[0] == 200 else None


def is_ready(port: int) -> bool:
    got = http_json(port, "/readyz", timeout=1.0)
    return bool(got and got[0] == 200)


def topology(port: int) -> dict[str, Any]:
    got = http_json(port, "/v1/topology?include_deleted=true", timeout=60)
    if not got or got[0] != 200:
        raise DrillError(f"GET /v1/topology on port {port} failed: {got}")
    return got[1]  # type: ignore[no-any-return]


class DrillError(RuntimeError):
    pass


def wait_until(what: str, predicate: Any, timeout: float, poll: float = 0.1) -> Any:
    """Poll an external system (a container, an HTTP API) until ``predicate()`` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


# --------------------------------------------------------------- engine
@dataclass
class Stack:
    compose: list[str]  # e.g. ["podman-compose", "-p", "rca-drill", "-f", "docker-compose.yml"]
    engine: str  # docker or podman
    project: str
    ports: dict[str, int]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        cmd = [*self.compose, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise DrillError(
                f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        return proc.stdout

    def container(self, service: str) -> str | None:
        """The id of the service's container (running or not), by compose labels."""
        out = subprocess.run(
            [self.engine, "ps", "-a", "-q", "--no-trunc",
             "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, timeout=60,
        ).stdout.split()  # fmt: skip
        return out[0] if out else None

    def inspect(self, service: str) -> dict[str, Any]:
        cid = self.container(service)
        if cid is None:
            return {}
        out = subprocess.run(
            [self.engine, "inspect", cid], capture_output=True, text=True, timeout=60
        ).stdout
        data = json.loads(out or "[]")
        return data[0] if data else {}

    def healthy(self, service: str) -> bool:
        """The service's own healthcheck passes. Podman without systemd runs no
        healthcheck timers, so run the check now; Docker runs them itself."""
        cid = self.container(service)
        if cid is None:
            return False
        if self.engine == "podman":
            proc = subprocess.run(
                ["podman", "healthcheck", "run", cid], capture_output=True, timeout=60
            )
            return proc.returncode == 0
        state = self.inspect(service).get("State", {})
        return (state.get("Health") or {}).get("Status") == "healthy"


def parse_engine_time(value: str) -> float | None:
    """RFC 3339 with nanoseconds (Docker and Podman ``State.FinishedAt``) -> epoch seconds."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.partition(".")
    tz = ""
    if frac:
        digits = frac[: len(frac) - len(frac.lstrip("0123456789"))]
        tz = frac[len(digits) :]
        frac = digits[:6].ljust(6, "0")
    else:
        head, tz = value[:19], value[19:]
    tz = "+00:00" if tz in ("Z", "") else tz
    stamp = f"{head}.{frac}{tz}" if frac else f"{head}{tz}"
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


class ReadyWatcher:
    """Polls /readyz in a thread, so that the moment of readiness is seen however
    long the kill command itself takes to return."""

    def __init__(self, port: int, poll: float = 0.02) -> None:
        self.port, self.poll = port, poll
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if is_ready(self.port):
                self.ready_at = time.time()
                self._done.set()
                return
            self._stop.wait(self.poll)

    def wait(self, timeout: float) -> float | None:
        self._done.wait(timeout)
        return self.ready_at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def phase_starts(st: dict[str, Any]) -> dict[str, float]:
    """Wall-clock start of the latest span of each phase in a /status timeline."""
    return {span["phase"]: span["started_at"] for span in st.get("timeline") or []}


def takeover_times(st: dict[str, Any], t_kill: float) -> dict[str, Any]:
    """From the new active's phase timeline: when it got the lock, how long it took."""
    starts = phase_starts(st)
    elected, active = starts.get("electing"), starts.get("active")
    out: dict[str, Any] = {}
    if elected is not None:
        out["kill_to_lock_s"] = round(elected - t_kill, 3)
        if active is not None:
            out["lock_to_active_s"] = round(active - elected, 3)
    return out


# ------------------------------------------------------------ comparing
def _ts(vertex: dict[str, Any]) -> datetime | None:
    value = vertex.get(SAMPLE_TS)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _edge_key(edge: dict[str, Any]) -> tuple[str, str, str]:
    return edge["source"], edge["target"], edge["relationship_type"]


def compare(old: dict[str, Any], new: dict[str, Any], strict: bool) -> dict[str, Any]:
    """Did the new active keep everything the old one had?

    Lost: a vertex of the old graph missing from the new one; an edge missing
    while neither of its ends was updated since. A vertex whose properties
    differ must have a newer sample timestamp (an event updated it since),
    unless ``strict`` (no event arrived since): then the graphs must be equal.
    """
    ov = {v["vitrage_id"]: v for v in old["vertices"]}
    nv = {v["vitrage_id"]: v for v in new["vertices"]}
    oe = {_edge_key(e): e for e in old["edges"]}
    ne = {_edge_key(e): e for e in new["edges"]}
    lost_v = sorted(ov.keys() - nv.keys())
    updated, unexplained = [], []
    for vid in sorted(ov.keys() & nv.keys()):
        if ov[vid] == nv[vid]:
            continue
        o_ts, n_ts = _ts(ov[vid]), _ts(nv[vid])
        if not strict and o_ts is not None and n_ts is not None and n_ts > o_ts:
            updated.append(vid)
        else:
            unexplained.append(vid)
    touched = set(updated)
    removed_by_update, lost_e = [], []
    for key in sorted(oe.keys() - ne.keys()):
        (removed_by_update if not strict and touched & {key[0], key[1]} else lost_e).append(key)
    changed_e = [k for k in oe.keys() & ne.keys() if oe[k] != ne[k]]
    unexplained_e = [k for k in changed_e if strict or not touched & {k[0], k[1]}]
    preserved = not (lost_v or lost_e or unexplained or unexplained_e)
    if strict:
        preserved = preserved and nv.keys() == ov.keys() and ne.keys() == oe.keys()
    out: dict[str, Any] = {
        "preserved": preserved,
        "mode": "equal" if strict else "superset",
        "old_vertices": len(ov),
        "old_edges": len(oe),
        "new_vertices": len(nv),
        "new_edges": len(ne),
        "lost_vertices": len(lost_v),
        "lost_edges": len(lost_e),
        "vertices_updated_since": len(updated),
        "edges_removed_by_updates": len(removed_by_update),
        "vertices_added_since": len(nv.keys() - ov.keys()),
        "edges_added_since": len(ne.keys() - oe.keys()),
        "changed_without_update": len(unexplained) + len(unexplained_e),
    }
    if not preserved:
        out["examples"] = {
            "lost_vertices": lost_v[:3],
            "lost_edges": [list(k) for k in lost_e[:3]],
            "changed_without_update": [
                {"vid": vid, "old": ov[vid], "new": nv[vid]} for vid in unexplained[:2]
            ]
            + [list(k) for k in unexplained_e[:3]],
        }
    return out


# ------------------------------------------------------------------ drill
@dataclass
class Drill:
    stack: Stack
    kills: int
    kill_how: list[str]
    traffic: list[str]
    flow_s: float
    ready_timeout: float
    records: list[dict[str, Any]] = field(default_factory=list)
    paused: bool = False

    def port(self, service: str) -> int:
        return self.stack.ports[service]

    def other(self, service: str) -> str:
        return GRAPHS[1] if service == GRAPHS[0] else GRAPHS[0]

    def one_active(self) -> str:
        """Exactly one graph ready, the other a standby; returns the active one."""

        def check() -> str | None:
            ready = [g for g in GRAPHS if is_ready(self.port(g))]
            if len(ready) != 1:
                return None
            st = status(self.port(self.other(ready[0])))
            return ready[0] if st and st.get("phase") == "standby" else None

        return wait_until(
            "exactly one active graph and one standby", check, self.ready_timeout, 0.2
        )

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        active = self.one_active()
        log(f"{active} is active, {self.other(active)} is the standby")
        for i in range(self.kills):
            how = self.kill_how[i % len(self.kill_how)]
            traffic = self.traffic[i % len(self.traffic)]
            record = self.kill_once(i + 1, active, how, traffic)
            self.records.append(record)
            log(f"kill {i + 1}: {json.dumps(record)}")
            active = record["new_active"]
            if self.one_active() != active:
                raise DrillError("the active graph changed after the victim came back")
        return self.report(time.monotonic() - started)

    def let_events_flow(self, active: str) -> dict[str, Any]:
        before = status(self.port(active)) or {}
        time.sleep(self.flow_s)
        after = status(self.port(active)) or {}
        return {
            "seconds": self.flow_s,
            "events": (after.get("last_seq") or 0) - (before.get("last_seq") or 0),
        }

    def quiesce(self, active: str) -> None:
        """Pause the collector and wait until the active has confirmed all it processed."""
        self.stack.run("pause", "collector")
        self.paused = True
        last: list[Any] = [None, time.monotonic()]

        def settled() -> bool:
            st = status(self.port(active)) or {}
            seq = st.get("last_seq")
            if seq != last[0]:
                last[:] = [seq, time.monotonic()]
                return False
            done = st.get("confirmed_seq") == seq and not st.get("unacked_messages")
            return done and time.monotonic() - last[1] >= 1.0

        wait_until(f"{active} to settle with the collector paused", settled, 30)

    def resume(self) -> None:
        if self.paused:
            self.stack.run("unpause", "collector")
            self.paused = False

    def kill(self, victim: str, how: str) -> tuple[float, str]:
        """Kill the victim; the wall-clock time of its death, and where that time came from."""
        if how == "crash":
            out = self.stack.run("exec", "-T", victim, "python", "-c", CRASH_CODE)
            return float(out.split()[0]), "the kill inside the container"
        self.stack.run("kill", "-s", "KILL", victim)
        finished = parse_engine_time(
            self.stack.inspect(victim).get("State", {}).get("FinishedAt", "")
        )
        if finished is not None:
            return finished, "the engine's State.FinishedAt of the victim"
        return time.time(), "when the compose kill command returned"

    def kill_once(self, n: int, victim: str, how: str, traffic: str) -> dict[str, Any]:
        flow = self.let_events_flow(victim)
        strict = traffic == "quiesced"
        if not strict:
            return self.measure(n, victim, how, traffic, flow)
        try:
            self.quiesce(victim)
            return self.measure(n, victim, how, traffic, flow)
        finally:
            self.resume()

    def measure(
        self, n: int, victim: str, how: str, traffic: str, flow: dict[str, Any]
    ) -> dict[str, Any]:
        other = self.other(victim)
        strict = traffic == "quiesced"
        old_status = status(self.port(victim)) or {}
        old_topo = topology(self.port(victim))
        old_after = status(self.port(victim)) or {}
        restarts = self.stack.inspect(victim).get("RestartCount", 0)
        watcher = ReadyWatcher(self.port(other))  # polls from before the kill on
        try:
            t_kill, kill_source = self.kill(victim, how)
            t_ready = watcher.wait(self.ready_timeout)
        finally:
            watcher.stop()
        if t_ready is None:
            raise DrillError(f"{other} did not answer /readyz within {self.ready_timeout}s")
        at_ready = status(self.port(other)) or {}
        lock_at = phase_starts(at_ready).get("electing")
        if lock_at is not None and lock_at < t_kill:
            # The engine records a death when it notices it; the lock was freed by then.
            t_kill, kill_source = lock_at, "the new active's lock time (before State.FinishedAt)"
        if strict:  # nothing arrived since: the graphs must be equal
            new_topo = topology(self.port(other))
            self.resume()
        else:
            target = old_after.get("last_seq") or 0
            wait_until(f"{other} to reach seq {target}",
                       lambda: ((status(self.port(other)) or {}).get("last_seq") or 0) >= target,
                       60)  # fmt: skip
            new_topo = topology(self.port(other))
        graph = compare(old_topo, new_topo, strict)
        seq = self.seq_check(old_status, old_after, at_ready, strict)
        back = self.bring_back(victim, how, restarts)
        recovery = at_ready.get("recovery") or {}
        return {
            "kill": n,
            "victim": victim,
            "new_active": other,
            "how": "compose kill -s KILL" if how == "compose" else "crash (SIGKILL inside)",
            "traffic": traffic,
            "events_before_kill": flow,
            "kill_to_ready_s": round(t_ready - t_kill, 3),
            "kill_time_from": kill_source,
            "takeover": takeover_times(at_ready, t_kill),
            "recovery_mode": recovery.get("mode"),
            "replayed": recovery.get("replayed"),
            "recovery": recovery,
            "seq": seq,
            "graph": graph,
            **back,
        }

    @staticmethod
    def seq_check(
        old: dict[str, Any], old_after: dict[str, Any], at_ready: dict[str, Any], strict: bool
    ) -> dict[str, Any]:
        """Every record the old active had confirmed is in the new active's graph at once."""
        confirmed = old_after.get("confirmed_seq") or 0
        new_seq = at_ready.get("last_seq") or 0
        ok = new_seq >= confirmed and (not strict or new_seq == old_after.get("last_seq"))
        return {
            "old_last_seq": old_after.get("last_seq"),
            "old_confirmed_seq": confirmed,
            "old_epoch": old.get("epoch"),
            "new_last_seq_at_ready": new_seq,
            "new_epoch": at_ready.get("epoch"),
            "continuous": ok and (at_ready.get("epoch") or 0) > (old.get("epoch") or 0),
        }

    def bring_back(self, victim: str, how: str, restarts_before: int) -> dict[str, Any]:
        """The victim returns as a standby: by the restart policy after a crash; after
        ``compose kill`` the engine counts a manual stop, so the drill starts it."""
        started = time.monotonic()
        if how == "crash":

            def restarted() -> bool:
                info = self.stack.inspect(victim)
                running = info.get("State", {}).get("Running")
                return bool(running and info.get("RestartCount", 0) > restarts_before)

            wait_until(f"the restart policy to restart {victim}", restarted, 60, 0.5)
            by = "restart policy"
        else:
            self.stack.run("start", victim)
            by = "drill (compose start)"
        wait_until(
            f"{victim} to come back as a standby",
            lambda: (status(self.port(victim)) or {}).get("phase") == "standby",
            self.ready_timeout,
            0.2,
        )
        return {"restarted_by": by, "back_as_standby_s": round(time.monotonic() - started, 2)}

    def report(self, duration: float) -> dict[str, Any]:
        times = [r["kill_to_ready_s"] for r in self.records]
        preserved = all(r["graph"]["preserved"] for r in self.records)
        continuous = all(r["seq"]["continuous"] for r in self.records)
        ok = len(self.records) == self.kills and preserved and continuous
        return {
            "ok": ok,
            "kills": self.records,
            "totals": {
                "kills": len(self.records),
                "graph_preserved": preserved,
                "seq_continuous": continuous,
                "failover_s_max": max(times) if times else None,
                "failover_s_median": statistics.median(times) if times else None,
                "ok": ok,
            },
            "duration_s": round(duration, 1),
        }


# -------------------------------------------------------------------- CLI
def _stack(args: argparse.Namespace) -> Stack:
    ports = dict(zip(GRAPHS, (args.graph_a_port, args.graph_b_port), strict=True))
    return Stack(shlex.split(args.compose), args.engine, args.project, ports)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compose", required=True, help="the compose command, with -p and -f")
    p.add_argument("--engine", required=True, choices=("docker", "podman"))
    p.add_argument("--project", required=True)
    p.add_argument("--graph-a-port", type=int, default=8999)
    p.add_argument("--graph-b-port", type=int, default=9000)
    sub = p.add_subparsers(dest="cmd", required=True)
    wh = sub.add_parser("wait-healthy")
    wh.add_argument("services", nargs="+")
    wh.add_argument("--timeout", type=float, default=180)
    lg = sub.add_parser("logs")
    lg.add_argument("dir", type=Path)
    rn = sub.add_parser("run")
    rn.add_argument("--kills", type=int, default=2)
    rn.add_argument("--kill-how", default="compose", help="compose|crash, a list cycles")
    rn.add_argument("--traffic", default="flowing", help="flowing|quiesced, a list cycles")
    rn.add_argument("--flow-s", type=float, default=5.0)
    rn.add_argument("--ready-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    stack = _stack(args)
    try:
        if args.cmd == "wait-healthy":
            for svc in args.services:
                wait_until(f"{svc} to be healthy", lambda s=svc: stack.healthy(s), args.timeout, 1)
                log(f"{svc} is healthy")
            return 0
        if args.cmd == "logs":
            save_logs(stack, args.dir)
            return 0
        drill = Drill(
            stack, args.kills, _choices(args.kill_how, ("compose", "crash")),
            _choices(args.traffic, ("flowing", "quiesced")), args.flow_s, args.ready_timeout,
        )  # fmt: skip
        try:
            report = drill.run()
        except DrillError as exc:
            report = {**drill.report(0), "ok": False, "error": str(exc)}
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    except DrillError as exc:
        log(f"error: {exc}")
        return 1


def _choices(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"compose-drill: {value!r}: use {', '.join(allowed)} (comma-separated)")
    return items


def save_logs(stack: Stack, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for svc in SERVICES:
        cid = stack.container(svc)
        if cid is None:
            continue
        proc = subprocess.run(
            [stack.engine, "logs", cid], capture_output=True, text=True, timeout=60
        )
        (directory / f"{svc}.log").write_text(proc.stdout + proc.stderr)
        info = stack.inspect(svc)
        (directory / f"{svc}.inspect.json").write_text(json.dumps(info, indent=1))
    log(f"container logs saved in {directory}")


if __name__ == "__main__":
    sys.exit(main())
