"""``collector-stub``: simulate OpenStack datasources on RabbitMQ.

Connection and queue names come from the environment (rca_common.settings);
the command line shapes the simulated cloud and its update stream.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiormq.exceptions import AMQPError

from collector_stub.collector import Collector, stream_config_from_settings
from collector_stub.stream import ScriptError, load_script
from collector_stub.topology import TopologyConfig, generate_topology
from rca_common.logging import get_logger, setup_logging
from rca_common.settings import Settings, settings_or_exit

log = get_logger("collector_stub")


def _volumes(value: str) -> int | float:
    """``--volumes``: an integer is a count, a decimal (``0.3``) a fraction of instances."""
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or fraction: {value!r}") from None


def _nonneg_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    demo = TopologyConfig()
    p = argparse.ArgumentParser(
        prog="collector-stub",
        description="Simulated OpenStack datasources: a seeded topology, an update "
        "stream and the get_all RPC. Broker settings come from the environment.",
    )
    topo = p.add_argument_group("topology")
    topo.add_argument("--large", action="store_true", help="preset of about 127k entities")
    topo.add_argument("--zones", type=_nonneg_int, default=None, help=f"(demo {demo.zones})")
    topo.add_argument("--hosts", type=_nonneg_int, default=None, help=f"(demo {demo.hosts})")
    topo.add_argument(
        "--instances-per-host",
        type=_nonneg_int,
        default=None,
        help=f"(demo {demo.instances_per_host})",
    )
    topo.add_argument("--networks", type=_nonneg_int, default=None, help=f"(demo {demo.networks})")
    topo.add_argument(
        "--ports-per-instance",
        type=_nonneg_int,
        default=None,
        help=f"(demo {demo.ports_per_instance})",
    )
    topo.add_argument(
        "--volumes",
        type=_volumes,
        default=None,
        help=f"instances with a volume: a count, or a fraction such as 0.3 (demo {demo.volumes})",
    )
    topo.add_argument(
        "--alarms", type=_nonneg_int, default=None, help=f"initially firing (demo {demo.alarms})"
    )
    topo.add_argument(
        "--projects", type=int, default=None, help=f"tenant projects (demo {demo.projects})"
    )

    run = p.add_argument_group("stream")
    run.add_argument(
        "--seed",
        type=int,
        default=settings.collector_seed,
        help="seed of topology and stream (COLLECTOR_SEED)",
    )
    run.add_argument(
        "--rate",
        type=float,
        default=settings.collector_rate,
        help="update events per second; 0 with --count: as fast as possible (COLLECTOR_RATE)",
    )
    run.add_argument(
        "--storm-every",
        type=float,
        default=settings.collector_storm_every,
        metavar="SECONDS",
        help="host outage alarm storm every SECONDS of streaming (COLLECTOR_STORM_EVERY)",
    )
    run.add_argument(
        "--count", type=_nonneg_int, default=None, help="stop streaming after N events"
    )
    run.add_argument(
        "--clock-start",
        type=datetime.fromisoformat,
        default=settings.collector_clock_start,
        help="start of the logical event clock, ISO-8601 (COLLECTOR_CLOCK_START; "
        "default: now), for reproducible timestamps and event ids",
    )
    run.add_argument(
        "--script",
        metavar="FILE",
        default=None,
        help="play the events of a YAML/JSON file (paced by --rate) instead of the "
        "random stream, then keep serving get_all",
    )
    run.add_argument(
        "--publish-initial",
        action="store_true",
        help="publish the whole topology as update events at start",
    )
    return p


def topology_config(args: argparse.Namespace) -> TopologyConfig:
    base = TopologyConfig.large() if args.large else TopologyConfig()
    fields = {
        name: getattr(args, name)
        for name in (
            "zones",
            "hosts",
            "instances_per_host",
            "networks",
            "ports_per_instance",
            "volumes",
            "alarms",
            "projects",
        )
        if getattr(args, name) is not None
    }
    return TopologyConfig(**{**base.__dict__, **fields})


def storm_every_events(seconds: float, rate: float) -> int:
    """Storms are scheduled in events so the stream stays a function of the seed."""
    if seconds <= 0 or rate <= 0:
        return 0
    return max(1, round(seconds * rate))


async def run(settings: Settings, args: argparse.Namespace, script: list[dict[str, Any]]) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    cfg = topology_config(args)
    topology = generate_topology(cfg, args.seed)
    overrides: dict[str, Any] = {
        "seed": args.seed,
        "storm_every": storm_every_events(args.storm_every, args.rate),
    }
    if args.clock_start is not None:
        overrides["clock_start"] = args.clock_start
    collector = Collector(settings, topology, stream_config_from_settings(settings, **overrides))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.request_stop)
    try:
        await collector.start()
    except (OSError, AMQPError) as exc:  # TimeoutError and refusals are OSErrors
        log.error("cannot connect to RabbitMQ", amqp=settings.masked_amqp_url(), error=str(exc))
        await collector.stop()
        return 1
    try:
        if args.publish_initial and not collector.stopping:
            await collector.publish_initial()
        if script:
            await collector.play_script(script, args.rate)
        elif not collector.stopping:
            await collector.run_stream(args.rate, args.count)
        await collector.wait_stopped()
        log.info("stop requested")
    finally:
        await collector.stop()
    return 0


def _runner() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at runtime
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_or_exit()
    args = build_parser(settings).parse_args(argv)
    setup_logging(settings.log_level, settings.log_format, service="collector-stub")
    try:
        cfg = topology_config(args)
    except ValueError as exc:
        print(f"collector-stub: {exc}", file=sys.stderr)
        return 2
    script: list[dict[str, Any]] = []
    if args.script:
        try:
            script = load_script(args.script)
        except ScriptError as exc:
            print(f"collector-stub: {exc}", file=sys.stderr)
            return 2
    log.info("configuration", topology=cfg.__dict__, rate=args.rate, seed=args.seed)
    return _runner()(run(settings, args, script))


if __name__ == "__main__":
    sys.exit(main())
