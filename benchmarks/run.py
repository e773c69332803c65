"""Every benchmark in turn, one JSON document (``make bench``).

    .venv/bin/python -m benchmarks.run [--only NAME,...] [--skip NAME,...] [--quick]

Runs, each in its own process (clean memory numbers, one failure does not stop
the others): ``processor`` (benchmarks/processor_bench.py), ``snapshot``
(benchmarks/snapshot_bench.py), ``persistor_backlog`` and ``persistor_live``
(tests/persistor_service/bench_persistor.py) and ``failover`` (the
``failover-bench`` command: fresh vs snapshot vs hot-standby failover at 10k and 100k vertices,
end-to-end throughput with persistency on and off, memory). Their progress goes
to stderr; the document goes to stdout and to ``bench-results/latest.json``.
Exit status 1 when a benchmark failed (its entry then says why). Each entry carries
``speed_probe``, the machine's speed on fixed work before and after it
(failover_drill/speed_probe.py): compare figures across runs only beside it.

``--quick`` runs smaller sizes (a smoke test of the harness, not figures to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from failover_drill.bench_load import LoadMonitor
from failover_drill.speed_probe import probe
from rca_common import compiled

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench-results" / "latest.json"


NO_TEMPLATES = ["--env", f"TEMPLATES_DIR={ROOT / 'benchmarks' / 'no-templates'}"]


def commands(quick: bool) -> dict[str, list[str]]:
    """Each benchmark's command; ``failover`` runs with the shipped templates and
    ``failover_no_templates`` with none (what the evaluator costs, side by side)."""
    py = sys.executable
    persistor = [py, "-m", "tests.persistor_service.bench_persistor"]
    failover = [str(BIN / "failover-bench")]
    if quick:
        quick_failover = [*failover, "--sizes", "10k", "--events", "5000"]
        return {
            "processor": [
                py,
                "benchmarks/processor_bench.py",
                "--scale",
                "0.1",
                "--updates",
                "20000",
            ],
            "snapshot": [
                py,
                "benchmarks/snapshot_bench.py",
                "--instances",
                "5000",
                "--rounds",
                "1",
            ],
            "persistor_backlog": [*persistor, "--mode", "backlog", "--records", "30000"],
            "persistor_live": [*persistor, "--mode", "live", "--records", "30000"],
            "failover": [*quick_failover, "--e2e-size", "10k", "--e2e-events", "20000"],
            "failover_no_templates": [*quick_failover, "--e2e-size", "none", *NO_TEMPLATES],
        }
    return {
        "processor": [py, "benchmarks/processor_bench.py"],
        "snapshot": [py, "benchmarks/snapshot_bench.py"],
        "persistor_backlog": [*persistor, "--mode", "backlog"],
        "persistor_live": [*persistor, "--mode", "live"],
        "failover": failover,
        # the end-to-end rounds vary by a quarter from one to the next on these machines:
        # three off/on pairs, the best of each kept
        "failover_no_templates": [*failover, *NO_TEMPLATES, "--e2e-rounds", "3"],
    }


def last_json(stdout: str) -> Any:
    """The last JSON document on stdout (some benchmarks log a line or two first)."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON document on stdout")


def run_one(name: str, cmd: list[str]) -> dict[str, Any]:
    print(f"[bench] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    speed_before = probe()
    started = time.monotonic()
    with LoadMonitor() as monitor:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    wall = round(time.monotonic() - started, 1)
    entry: dict[str, Any] = {"command": cmd, "exit_code": proc.returncode, "wall_s": wall}
    entry["host_load"] = monitor.report()
    # how fast the machine was around this benchmark (failover_drill/speed_probe.py)
    entry["speed_probe"] = {"before": speed_before, "after": probe()}
    try:
        entry["result"] = last_json(proc.stdout)
    except ValueError as exc:
        entry["error"] = f"{exc}; stdout ends with: {proc.stdout[-2000:]!r}"
    if proc.returncode != 0:
        entry.setdefault("error", f"exit status {proc.returncode}")
    print(
        f"[bench] {name}: {'FAILED' if 'error' in entry else 'done'} in {wall}s",
        file=sys.stderr,
        flush=True,
    )
    return entry


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def host() -> dict[str, Any]:
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        # which build: the distribution's (PGO and LTO) or another (deploy/make-venv.sh)
        "python_executable": os.path.realpath(sys.executable),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma list of benchmarks to run")
    ap.add_argument("--skip", default="", help="comma list of benchmarks to leave out")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the harness")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    cmds = commands(args.quick)
    names = args.only.split(",") if args.only else list(cmds)
    names = [n for n in names if n not in args.skip.split(",")]
    unknown = [n for n in names if n not in cmds]
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; known: {', '.join(cmds)}")
    started = time.monotonic()
    doc: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "git": git_revision(),
        "host": host(),
        "compiled": compiled.status(),
        "benchmarks": {},
    }
    for name in names:
        doc["benchmarks"][name] = run_one(name, cmds[name])
    doc["wall_s"] = round(time.monotonic() - started, 1)
    doc["failed"] = [n for n, e in doc["benchmarks"].items() if "error" in e]
    text = json.dumps(doc, indent=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(text)
    print(f"[bench] written to {args.output}", file=sys.stderr)
    sys.exit(1 if doc["failed"] else 0)


if __name__ == "__main__":
    main()
