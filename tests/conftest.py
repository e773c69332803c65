"""Shared fixtures: unique broker names per test, real processes, clean-up.

Integration tests use the real RabbitMQ and PostgreSQL on loopback. Every test
gets its own queue, exchange and schema names, and removes them afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest

from failover_drill.cluster import free_port, isolated_names
from graph_service import gc_policy
from rca_common import db
from rca_common.broker import BrokerTopology, delete_topology
from rca_common.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def unique_env(tag: str = "t") -> dict[str, str]:
    """Environment overrides that isolate one test run on the shared broker and DB."""
    return isolated_names(tag)


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(**{k.lower(): v for k, v in env.items()})


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """Code under test may freeze the heap (graph_service/gc_policy.py): each test
    starts with a heap the collector sees in full."""
    yield
    gc_policy.thaw()


@pytest.fixture
def test_env() -> dict[str, str]:
    return unique_env()


@pytest.fixture
async def broker(test_env: dict[str, str]) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the real broker; the test's topology is deleted afterwards."""
    settings = settings_from(test_env)
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    try:
        yield channel
    finally:
        cleanup = await conn.channel()
        await delete_topology(cleanup, BrokerTopology.from_settings(settings))
        await conn.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    http_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Starts the project's console scripts as real processes and always stops them."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[Proc] = []

    def start(self, script: str, *args: str, http: bool = False, **extra: str) -> Proc:
        env = {**os.environ, **self.env, "LOG_FORMAT": "json", **extra}
        port = None
        if http:
            port = free_port()
            env["HTTP_PORT"] = str(port)
        log_path = self.tmp / f"{script}-{len(self.procs)}.log"
        with log_path.open("wb") as fh:  # the child keeps its own descriptor
            popen = subprocess.Popen([str(BIN / script), *args], env=env, stdout=fh, stderr=fh)
        proc = Proc(script, popen, log_path, port, env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if proc.alive():
            proc.popen.send_signal(sig)
        return proc.popen.wait(timeout)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)


@pytest.fixture
async def processes(
    tmp_path: Path, test_env: dict[str, str], broker: aio_pika.abc.AbstractChannel
) -> AsyncIterator[Processes]:
    """Real processes of the project; stopped before the test's topology is deleted
    (they depend on ``broker``), and their DB schema dropped, afterwards."""
    procs = Processes(tmp_path, test_env)
    try:
        yield procs
    finally:
        procs.stop_all()
        await drop_test_schema(test_env)


async def drop_test_schema(env: dict[str, str]) -> None:
    settings = settings_from(env)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await db.drop_schema(conn, settings.db_schema)
    finally:
        await conn.close()


async def wait_http(
    proc: Proc, path: str, timeout: float = 60, status: int = 200
) -> httpx.Response:
    """Wait until ``path`` answers ``status``; fail with the process log otherwise."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()[-4000:]}")
            try:
                resp = await client.get(proc.url + path)
                if resp.status_code == status:
                    return resp
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{proc.name} {path} not {status} in {timeout}s:\n{proc.log()[-4000:]}")
            await asyncio.sleep(0.05)


async def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    """Await a condition that has no event to wait on (an external process's state)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
