"""The processes a drill runs, behind the two operations that differ per platform.

A drill only needs to start an instance, kill it, and reach its HTTP API. This
module runs them as local processes; the container drill supplies the same
operations for ``docker compose`` (kill = ``compose kill -s KILL``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def isolated_names(prefix: str) -> dict[str, str]:
    """Queue, exchange and schema names of one throw-away deployment (unique per call),
    as environment variables: runs share one broker and one database server."""
    tag = f"{prefix}{uuid.uuid4().hex[:8]}"
    return {
        "EVENTS_QUEUE": f"{tag}.events",
        "DEAD_LETTER_QUEUE": f"{tag}.dlq",
        "COLLECTOR_RPC_QUEUE": f"{tag}.rpc",
        "PROCESSED_EXCHANGE": f"{tag}.processed",
        "PERSISTOR_QUEUE": f"{tag}.persistor",
        "DB_SCHEMA": f"{tag}_log",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    """One named service instance (graph-a, graph-b, persistor)."""

    name: str
    script: str
    env: dict[str, str]
    log_dir: Path
    http_port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, **extra: str) -> None:
        self.starts += 1
        env = {**os.environ, **self.env, **extra}
        if self.http_port is not None:
            env["HTTP_PORT"] = str(self.http_port)
        log = self.log_dir / f"{self.name}.{self.starts}.log"
        with log.open("wb") as fh:
            self.popen = subprocess.Popen([str(BIN / self.script)], env=env, stdout=fh, stderr=fh)

    def kill(self) -> float:
        """SIGKILL; returns the monotonic time of the kill."""
        assert self.popen is not None
        now = time.monotonic()
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        return now

    def stop(self, timeout: float = 20) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(10)

    async def wait_exit(self, timeout: float) -> float:
        """Until the process has died on its own (a crash point); monotonic time of death."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still alive after {timeout}s")
            await asyncio.sleep(0.005)
        return time.monotonic()

    def last_log(self, chars: int = 3000) -> str:
        log = self.log_dir / f"{self.name}.{self.starts}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""


async def get_json(client: httpx.AsyncClient, url: str) -> dict | None:  # type: ignore[type-arg]
    try:
        resp = await client.get(url)
    except httpx.TransportError:
        return None
    if resp.status_code != 200:
        return None
    return resp.json()  # type: ignore[no-any-return]


async def wait_ready(
    instances: list[Instance], timeout: float, poll: float = 0.01
) -> tuple[Instance, float]:
    """The first instance whose /readyz answers 200, and the monotonic time it did."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            for inst in instances:
                if inst.alive() and await get_json(client, inst.url + "/readyz") is not None:
                    return inst, time.monotonic()
            await asyncio.sleep(poll)
    logs = "\n".join(f"--- {i.name}\n{i.last_log()}" for i in instances)
    raise TimeoutError(f"no instance ready within {timeout}s\n{logs}")
