"""``failover-drill``: run the drill, print its JSON report, exit 1 if anything differs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from collector_stub.topology import TopologyConfig
from failover_drill.drill import DEFAULT_PLAN, Drill, DrillConfig
from rca_common.logging import setup_logging


def parse_args(argv: list[str] | None = None) -> DrillConfig:
    p = argparse.ArgumentParser(prog="failover-drill", description=__doc__)
    p.add_argument("--events", type=int, default=4000, help="stream events to play")
    p.add_argument(
        "--plan",
        default=",".join(DEFAULT_PLAN),
        help="kills in order: steady, publish, before_ack, snapshot, replay",
    )
    p.add_argument("--random-kills", type=int, default=2)
    p.add_argument("--no-persistor-kill", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--instances-per-host", type=int, default=5)
    p.add_argument("--rate", type=float, default=2000.0, help="stream events per second")
    p.add_argument("--logs", type=Path, default=Path("drill-logs"))
    p.add_argument("--keep", action="store_true", help="keep the schema and queues")
    a = p.parse_args(argv)
    plan = tuple(k for k in a.plan.split(",") if k)
    return DrillConfig(
        events=a.events,
        plan=plan,
        random_kills=a.random_kills,
        kill_persistor=not a.no_persistor_kill,
        seed=a.seed,
        topology=TopologyConfig(
            zones=2, hosts=a.hosts, instances_per_host=a.instances_per_host, networks=3,
            alarms=10,
        ),
        rate=a.rate,
        workdir=a.logs,
        keep=a.keep,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging("warning", "json", service="failover-drill")
    report = asyncio.run(Drill(cfg).run())
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
