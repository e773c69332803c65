"""Snapshot benchmark (not a test): how long does a 100k-vertex snapshot stall the loop?

Builds a graph by feeding a Processor synthetic events (10 zones, 1000 hosts,
100 networks, 50k instances, 50k ports: ~101k vertices, ~151k edges), then
measures encoding in-process, the forked snapshot (the parent's synchronous
pause and the total time), decoding with and without the garbage collector,
and the pause as the event loop sees it: a task ticking every millisecond
records its largest delay while the snapshot runs.

    .venv/bin/python benchmarks/snapshot_bench.py [--instances N] [--loop asyncio|uvloop]

Prints one JSON object. The target is a loop pause of at most 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import pickle
import resource
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from graph_service import snapshot_codec as codec
from graph_service.processor import Processor
from graph_service.snapshots import (
    TakenSnapshot,
    take_snapshot_in_child,
    take_snapshot_inline,
)
from rca_common.events import Action, Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"bench-key"
TICK = 0.001


def events(zones: int, hosts: int, networks: int, instances: int) -> list[Event]:
    out: list[Event] = []
    n = 0

    def ev(etype: str, eid: str, **payload: Any) -> Event:
        nonlocal n
        n += 1
        return Event.model_construct(
            event_id=f"bench-{n}",
            source=etype,
            entity_type=etype,
            entity_id=eid,
            action=Action.UPDATE,
            sample_timestamp=T0 + timedelta(milliseconds=n),
            payload=payload,
            version=1,
        )

    out += [ev("nova.zone", f"zone-{z}", state="available") for z in range(zones)]
    out += [
        ev("nova.host", f"host-{h}", zone=f"zone-{h % zones}", state="available")
        for h in range(hosts)
    ]
    out += [ev("neutron.network", f"net-{i}", state="ACTIVE") for i in range(networks)]
    for i in range(instances):
        out.append(
            ev(
                "nova.instance",
                f"vm-{i}",
                host=f"host-{i % hosts}",
                state="ACTIVE",
                flavor="m1.small",
                image="cirros",
                project_id=f"project-{i % 50}",
            )
        )
        out.append(
            ev(
                "neutron.port",
                f"port-{i}",
                network_id=f"net-{i % networks}",
                device_id=f"vm-{i}",
                state="ACTIVE",
                mac_address=f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                fixed_ips=[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"],
            )
        )
    return out


def build(instances: int) -> tuple[Processor, float]:
    t0 = time.perf_counter()
    p = Processor()
    for e in events(zones=10, hosts=1000, networks=100, instances=instances):
        p.process(e)
    return p, time.perf_counter() - t0


async def loop_view(run: Callable[[], Awaitable[TakenSnapshot]]) -> tuple[TakenSnapshot, float]:
    """Run a snapshot while a task ticks every ms; returns the largest tick delay (s)."""
    worst = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            worst = max(worst, now - last - TICK)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # ticking steadily before the snapshot starts
    worst = 0.0
    taken = await run()
    await asyncio.sleep(0.01)
    stop = True
    await task
    return taken, worst


async def idle_tick_delay(seconds: float) -> float:
    async def nothing() -> TakenSnapshot:
        await asyncio.sleep(seconds)
        return None  # type: ignore[return-value]

    return (await loop_view(nothing))[1]


async def measure_loop(p: Processor, rounds: int) -> dict[str, Any]:
    forked = [
        await loop_view(lambda: take_snapshot_in_child(p.export_state, KEY)) for _ in range(rounds)
    ]
    inline, inline_tick = await loop_view(lambda: take_snapshot_inline(p.export_state, KEY))
    idle = await idle_tick_delay(statistics.median(t.duration_s for t, _ in forked))
    return {
        "fork_pause_ms": [round(t.pause_s * 1000, 2) for t, _ in forked],
        "fork_total_s": [round(t.duration_s, 3) for t, _ in forked],
        "fork_loop_max_tick_delay_ms": [round(w * 1000, 2) for _, w in forked],
        "idle_loop_max_tick_delay_ms": round(idle * 1000, 2),
        "inline_pause_ms": round(inline.pause_s * 1000, 1),
        "inline_total_s": round(inline.duration_s, 3),
        "inline_loop_max_tick_delay_ms": round(inline_tick * 1000, 1),
        "fork_equals_inline": forked[0][0].encoded == inline.encoded,
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def decode_costs(enc: codec.EncodedSnapshot) -> tuple[float, float, float]:
    """(decode with the collector paused, import_state, plain unpickle with it running)."""
    decoded, decode_s = timed(lambda: codec.decode(enc.blob, KEY, enc.hmac))
    target = Processor()
    _, import_s = timed(lambda: target.import_state(decoded))
    raw = zlib.decompress(enc.blob[codec.HEADER_SIZE :])
    gc.collect()
    _, loads_gc_s = timed(lambda: pickle.loads(raw))
    return decode_s, import_s, loads_gc_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3, help="forked snapshots to time")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()

    p, build_s = build(args.instances)
    state = p.export_state()
    raw, dump_s = timed(lambda: codec.dump(state))
    enc, seal_s = timed(lambda: codec.seal(raw, KEY))
    _, encode_s = timed(lambda: codec.encode(state, KEY))
    decode_s, import_s, loads_gc_s = decode_costs(enc)

    if args.loop == "uvloop":
        import uvloop

        loop_stats = uvloop.run(measure_loop(p, args.rounds))
    else:
        loop_stats = asyncio.run(measure_loop(p, args.rounds))

    result = {
        "vertices": len(p.graph),
        "edges": p.graph.edge_count,
        "build_s": round(build_s, 2),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20),
        # the largest child's peak RSS (shared copy-on-write pages included)
        "child_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "pickle_raw_bytes": enc.raw_size,
        "compressed_bytes": enc.size,
        "encode_inprocess_s": round(encode_s, 3),
        "encode_pickle_s": round(dump_s, 3),
        "encode_zlib_hmac_s": round(seal_s, 3),
        "decode_gc_disabled_s": round(decode_s, 3),
        "unpickle_with_gc_s": round(loads_gc_s, 3),
        "import_state_s": round(import_s, 3),
        "loop": args.loop,
        **loop_stats,
        "target_pause_ms": 50,
        "pause_within_target": max(loop_stats["fork_loop_max_tick_delay_ms"]) <= 50,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
