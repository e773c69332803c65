"""persistor-service as a real process: crash safety, logs, HTTP, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from rca_common.records import LogRecord
from rca_common.settings import Settings
from tests.conftest import Proc, Processes, free_port, wait_for, wait_http
from tests.persistor_service.conftest import Stream, rec, recs, rows

pytestmark = pytest.mark.integration


def start(processes: Processes, **extra: str) -> Proc:
    port = free_port()
    proc = processes.start("persistor-service", PERSISTOR_HTTP_PORT=str(port), **extra)
    proc.http_port = port
    return proc


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


def chunks(records: list[LogRecord], size: int) -> list[list[LogRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


async def test_sigkill_mid_stream_loses_nothing_and_writes_nothing_twice(
    stream: Stream, db: asyncpg.Connection, processes: Processes, settings: Settings
) -> None:
    total = 200_000
    await stream.publish(*chunks(recs(1, total), 500))  # queued while no persistor runs

    first = start(processes)

    async def some_written() -> bool:
        return await db.fetchval("SELECT count(*) FROM events") >= 10_000

    await wait_for(some_written, timeout=60, interval=0.01, what="the first batches")
    processes.stop(first, signal.SIGKILL)
    written_before = await db.fetchval("SELECT count(*) FROM events")
    assert written_before < total, "the kill came too late to be mid-stream"

    second = start(processes)

    async def all_written() -> bool:
        return await db.fetchval("SELECT count(*) FROM events") >= total

    await wait_for(all_written, timeout=90, what="every record")
    stats = await db.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, min(seq) AS lo, max(seq) AS hi"
        " FROM events"
    )
    assert dict(stats) == {"n": total, "ids": total, "lo": 1, "hi": total}
    assert processes.stop(second) == 0
    assert await stream.ready(settings.persistor_queue) == 0
    errors = [line for line in log_lines(second) if line["level"] == "error"]
    assert errors == []


async def test_a_gap_is_logged_as_an_error_and_the_record_is_written(
    stream: Stream, db: asyncpg.Connection, processes: Processes
) -> None:
    proc = start(processes)
    await wait_http(proc, "/healthz")
    await stream.publish(recs(1, 5), [rec(8), rec(9)])

    async def written() -> bool:
        return len(await rows(db)) == 7

    await wait_for(written, what="seven rows")
    assert [r["seq"] for r in await rows(db)] == [1, 2, 3, 4, 5, 8, 9]

    def gap_logged() -> bool:
        return any(line["event"] == "seq gap in the log" for line in log_lines(proc))

    await wait_for(gap_logged, what="the gap log line")
    gap = next(line for line in log_lines(proc) if line["event"] == "seq gap in the log")
    assert gap["level"] == "error"
    assert (gap["expected_seq"], gap["actual_seq"], gap["service"]) == (6, 8, "persistor-service")


async def test_health_status_metrics_and_clean_sigterm(
    stream: Stream, db: asyncpg.Connection, processes: Processes
) -> None:
    proc = start(processes)
    health = await wait_http(proc, "/healthz")
    assert health.json()["status"] == "ok"
    await stream.publish(recs(1, 3))

    async with httpx.AsyncClient() as client:

        async def written() -> bool:
            return (await client.get(proc.url + "/status")).json()["last_seq"] == 3

        await wait_for(written, what="last_seq 3 in /status")
        metrics = (await client.get(proc.url + "/metrics")).text
        status = (await client.get(proc.url + "/status")).json()
    assert "rca_persistor_records_written_total 3.0" in metrics
    assert "rca_persistor_batch_seconds_bucket" in metrics
    assert "rca_persistor_zombies_fenced_total 0.0" in metrics
    assert (status["last_seq"], status["phase"]) == (3, "running")

    assert processes.stop(proc) == 0
    events = [line["event"] for line in log_lines(proc)]
    assert events[-1] == "stopped"


def test_a_bad_setting_exits_2_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "persistor_service"],
        env={**os.environ, "PERSISTOR_BATCH_MAX": "0"},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"PERSISTOR_BATCH_MAX" in result.stderr
