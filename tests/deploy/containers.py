"""Finding a container engine and a compose implementation for the deploy tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rca_common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/python:3.11-slim-bookworm"  # made by ../shared/containers/setup.sh
SETUP_HINT = "run ../shared/containers/setup.sh (as root), or `make containers`"
# Variables the stack reads: scrubbed from the environment handed to compose, so
# that nothing from the test run's own environment leaks into the containers.
STACK_VARS = (
    "RCA_IMAGE", "BASE_IMAGE", "POSTGRES_IMAGE", "RABBITMQ_IMAGE", "POSTGRES_USER",
    "POSTGRES_PASSWORD", "POSTGRES_DB", "RABBITMQ_USER", "RABBITMQ_PASSWORD",
    "GRAPH_BIND_ADDRESS", "GRAPH_A_PORT", "GRAPH_B_PORT", "COMPOSE_PROJECT_NAME",
    "COMPOSE", "ENGINE", "KILLS", "KILL_HOW", "TRAFFIC", "FLOW_S", "KEEP", "BUILD",
)  # fmt: skip


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def clean_env(**extra: str) -> dict[str, str]:
    names = {n.upper() for n in Settings.model_fields} | set(STACK_VARS)
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {**env, **extra}


@dataclass
class Engine:
    name: str  # docker or podman
    compose: list[str]

    def image_exists(self, image: str) -> bool:
        """The image is here under that very name. (Podman resolves a short name
        such as python:3.11-slim-bookworm to localhost/python:... too: that one
        does not count as the official image.)"""
        proc = run([self.name, "image", "inspect", "--format", "{{json .RepoTags}}", image])
        if proc.returncode != 0:
            return False
        if image.startswith("localhost/"):
            return True
        tags = json.loads(proc.stdout.strip() or "[]") or []
        return any(not tag.startswith("localhost/") for tag in tags)

    def build(self, dockerfile: str, context: str, tag: str, base: str) -> None:
        proc = run(
            [self.name, "build", "-q", "-f", dockerfile, "--build-arg", f"BASE_IMAGE={base}",
             "-t", tag, context],
            timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, f"building {tag} failed:\n{proc.stderr[-3000:]}"


def find_engine() -> tuple[Engine | None, str]:
    """A working engine with its compose, or None and the reason why not."""
    reasons = []
    if shutil.which("docker"):
        info = run(["docker", "info"])
        has_v2 = run(["docker", "compose", "version"]).returncode == 0
        if info.returncode == 0 and (has_v2 or shutil.which("docker-compose")):
            return Engine("docker", ["docker", "compose"] if has_v2 else ["docker-compose"]), ""
        reasons.append("docker: no engine running or no compose" if info.returncode else
                       "docker: no compose plugin")  # fmt: skip
    if shutil.which("podman"):
        if not shutil.which("podman-compose"):
            reasons.append("podman: podman-compose is not installed")
        else:
            info = run(["podman", "info"])
            if info.returncode == 0:
                return Engine("podman", ["podman-compose"]), ""
            reasons.append(f"podman: `podman info` failed: {info.stderr.strip()[-300:]}")
    if not reasons:
        reasons.append("neither docker nor podman is installed")
    return None, "; ".join(reasons) + f" ({SETUP_HINT})"


def compose_validators() -> dict[str, list[str] | None]:
    """Every compose implementation that can check a file offline (None: not installed)."""
    out: dict[str, list[str] | None] = {
        "docker-compose-validate": ["docker-compose-validate"]
        if shutil.which("docker-compose-validate")
        else None,
        "docker compose": None,
        "podman-compose": ["podman-compose"] if shutil.which("podman-compose") else None,
    }
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        out["docker compose"] = ["docker", "compose"]
    return out
