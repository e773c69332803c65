"""docker-compose.yml, .env.example and the Dockerfiles, checked without running
containers: a real compose implementation validates the file (``config``), and
the structure the failover depends on is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.containers import ROOT, clean_env, compose_validators, run

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT_SERVICES = ("collector", "persistor", "graph-a", "graph-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("impl", list(compose_validators()))
def test_a_real_compose_implementation_accepts_the_file(impl: str) -> None:
    cmd = compose_validators()[impl]
    if cmd is None:
        pytest.skip(f"{impl} is not installed")
    args = ["config", "-q"] if impl != "podman-compose" else ["config"]
    env = clean_env(COMPOSE_PROJECT_NAME="rcavalidate")
    proc = run([*cmd, "-f", str(COMPOSE_FILE), *args], cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr.upper(), proc.stderr[-3000:]


def test_services_images_and_overrides(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "rabbitmq", *PROJECT_SERVICES}
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:15-bookworm}"
    assert services["rabbitmq"]["image"] == "${RABBITMQ_IMAGE:-rabbitmq:3.13}"
    assert "pgdata" in compose["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    commands = {s: services[s]["command"] for s in PROJECT_SERVICES}
    assert commands == {
        "collector": ["collector-stub"],
        "persistor": ["persistor-service"],
        "graph-a": ["graph-service"],
        "graph-b": ["graph-service"],
    }
    for name in PROJECT_SERVICES:
        svc = services[name]
        assert svc["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim-bookworm}"
        assert svc["init"] is True and svc["restart"] == "unless-stopped", name
        env = svc["environment"]
        assert env["HTTP_HOST"] == "0.0.0.0", name
        assert "@rabbitmq:5672/" in env["AMQP_URL"] and "@postgres:5432/" in env["DATABASE_URL"]


def test_graphs_are_published_checked_and_restarted(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ports = {g: services[g]["ports"] for g in ("graph-a", "graph-b")}
    assert ports == {
        "graph-a": ["${GRAPH_BIND_ADDRESS:-127.0.0.1}:${GRAPH_A_PORT:-8999}:8999"],
        "graph-b": ["${GRAPH_BIND_ADDRESS:-127.0.0.1}:${GRAPH_B_PORT:-9000}:8999"],
    }
    for name in ("graph-a", "graph-b", "persistor", "postgres", "rabbitmq"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("graph-a", "graph-b"):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "urllib" in test and "/healthz" in test  # the image has no curl
        deps = services[name]["depends_on"]
        assert {d: c["condition"] for d, c in deps.items()} == {
            "postgres": "service_healthy",
            "rabbitmq": "service_healthy",
            "persistor": "service_healthy",
        }  # not on the collector: podman restarts a container only while its deps run


def test_env_example_and_settings_block_are_generated_from_the_settings() -> None:
    proc = run([sys.executable, "deploy/gen_env.py", "--check"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_env_example_documents_every_variable_the_stack_uses() -> None:
    documented = set(
        re.findall(r"^#([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )
    text = COMPOSE_FILE.read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert interpolated <= documented
    passed_through = set(re.findall(r"^  ([A-Z_][A-Z0-9_]*):$", text, re.M))
    assert passed_through and passed_through <= documented


def test_dockerfiles_take_the_base_image_as_argument() -> None:
    for path in (ROOT / "Dockerfile", ROOT / "deploy/Dockerfile.postgres",
                 ROOT / "deploy/Dockerfile.rabbitmq"):  # fmt: skip
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm", path
        assert lines[1].startswith("FROM ${BASE_IMAGE}"), path
    main = (ROOT / "Dockerfile").read_text()
    assert "STOPSIGNAL SIGTERM" in main and "\nUSER " in main
    assert "COPY --from=build /opt/venv /opt/venv" in main
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "drill-logs", ".run"} <= set(ignored)


def test_drill_script_is_valid_bash() -> None:
    proc = run(["bash", "-n", str(Path(ROOT, "deploy/compose-drill.sh"))])
    assert proc.returncode == 0, proc.stderr
