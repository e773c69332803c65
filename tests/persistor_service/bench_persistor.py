"""Throughput of persistor-service (a benchmark, not a test): prints JSON.

    .venv/bin/python -m tests.persistor_service.bench_persistor [--records N] [--mode backlog|live]

``backlog``: N records wait in the queue, then a persistor process starts and
catches up (the failover catch-up case). ``live``: the persistor runs while a
publisher streams records as fast as it can (sustained rate on the same host:
publisher, RabbitMQ, PostgreSQL and persistor share the CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import orjson

from rca_common.broker import BrokerTopology, declare_topology, delete_topology
from rca_common.db import connect, drop_schema, migrate
from rca_common.records import LogRecord, encode_records
from tests.conftest import BIN, settings_from, unique_env

PER_MESSAGE = 500


def record(seq: int) -> LogRecord:
    event = {
        "event_id": f"ev-{seq:012d}",
        "source": "nova.instance",
        "entity_type": "nova.instance",
        "entity_id": f"inst-{seq}",
        "action": "update",
        "sample_timestamp": "2026-01-01T00:00:00.000000Z",
        "payload": {"name": f"inst-{seq}", "state": "ACTIVE", "host": "host-7", "project": "p1"},
    }
    changes = [["upsert", f"vid-{seq}", {"id": f"inst-{seq}", "state": "ACTIVE", "name": "x"}]]
    return LogRecord(seq, 1, time.time(), event, changes)


async def publish(exchange: aio_pika.abc.AbstractExchange, first: int, last: int) -> None:
    for start in range(first, last + 1, PER_MESSAGE):
        end = min(start + PER_MESSAGE - 1, last)
        body = encode_records([record(s) for s in range(start, end + 1)])
        await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="")


async def run(total: int, mode: str, batch_max: int) -> dict[str, object]:
    env = unique_env("bench")
    settings = settings_from(env)
    topo = BrokerTopology.from_settings(settings)
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    exchange = (await declare_topology(channel, topo)).processed_exchange
    db = await connect(settings.database_url, settings.db_schema)
    await migrate(db, settings.db_schema)
    log = Path(tempfile.mkstemp(prefix="persistor-bench-", suffix=".log")[1])
    proc: subprocess.Popen[bytes] | None = None
    try:
        if mode == "backlog":
            await publish(exchange, 1, total)
        child_env = {**os.environ, **env, "PERSISTOR_HTTP_PORT": "0"}
        child_env["PERSISTOR_BATCH_MAX"] = str(batch_max)
        with log.open("wb") as fh:
            proc = subprocess.Popen([str(BIN / "persistor-service")], env=child_env, stderr=fh)
        published_at: list[float] = []
        publisher = None
        if mode == "live":
            publisher = asyncio.create_task(publish(exchange, 1, total))
            publisher.add_done_callback(lambda _: published_at.append(time.perf_counter()))
        started = time.perf_counter()
        first_at = None
        while True:
            top = await db.fetchval("SELECT coalesce(max(seq), 0) FROM events")
            now = time.perf_counter()
            if top and first_at is None:
                first_at, first_top = now, top
            if top >= total:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"persistor exited: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.02)
        if publisher is not None:
            await publisher
        assert first_at is not None
        seconds = now - first_at
        count = await db.fetchval("SELECT count(*) FROM events")
        return {
            "mode": mode,
            "records": total,
            "rows": count,
            "batch_max": batch_max,
            "records_per_message": PER_MESSAGE,
            "seconds": round(seconds, 3),
            "records_per_s": round((total - first_top) / seconds) if seconds else None,
            "cpus": os.cpu_count(),
            **(
                {
                    "published_per_s": round(total / (published_at[0] - started)),
                    "lag_after_last_publish_s": round(now - published_at[0], 3),
                }
                if published_at
                else {}
            ),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        await delete_topology(channel, topo)
        await conn.close()
        await drop_schema(db, settings.db_schema)
        await db.close()
        log.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    parser.add_argument("--batch-max", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(args.records, args.mode, args.batch_max))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
