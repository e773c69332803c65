"""The container failover drill, for real: images, docker-compose.yml, kills.

Builds the project image and (unless official ones are at hand) the PostgreSQL
and RabbitMQ test images, then runs ``deploy/compose-drill.sh`` with two kills:
``compose kill -s KILL`` of the active while events flow, then a crash of the
new active inside its container with the collector paused (the restart policy
must bring it back, and the graphs must be equal). Skips, with the reason, when
no container engine works here. The stack is always taken down (``down -v``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.deploy.containers import (
    LOCAL_BASE,
    OFFICIAL_BASE,
    ROOT,
    SETUP_HINT,
    Engine,
    clean_env,
    find_engine,
    run,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

TEST_POSTGRES = "localhost/rca-test-postgres:15"
TEST_RABBITMQ = "localhost/rca-test-rabbitmq:3"
OFFICIAL_POSTGRES = "postgres:15-bookworm"  # docker-compose.yml's defaults
OFFICIAL_RABBITMQ = "rabbitmq:3.13"


@pytest.fixture(scope="module")
def engine() -> Engine:
    found, reason = find_engine()
    if found is None:
        pytest.skip(f"no container engine: {reason}")
    return found


def _base_image(engine: Engine) -> str:
    """The official base when it is here (or can be pulled), else the local stand-in."""
    if engine.image_exists(OFFICIAL_BASE):
        return OFFICIAL_BASE
    if engine.image_exists(LOCAL_BASE):
        return LOCAL_BASE
    if (
        run([engine.name, "pull", f"docker.io/library/{OFFICIAL_BASE}"], timeout=300).returncode
        == 0
    ):
        return OFFICIAL_BASE
    pytest.skip(f"no base image: {OFFICIAL_BASE} cannot be pulled and {LOCAL_BASE} is missing"
                f" ({SETUP_HINT})")  # fmt: skip


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, Any]:
    """Build what the stack needs; layer caches make a second run quick."""
    base = _base_image(engine)
    timings = {}
    started = time.monotonic()
    engine.build("Dockerfile", ".", "localhost/rca-graph:test", base)
    timings["project_image_s"] = round(time.monotonic() - started, 1)
    picked = {}
    for name, official, test_tag in (
        ("postgres", OFFICIAL_POSTGRES, TEST_POSTGRES),
        ("rabbitmq", OFFICIAL_RABBITMQ, TEST_RABBITMQ),
    ):
        if engine.image_exists(official):
            picked[name] = official
            continue
        started = time.monotonic()
        engine.build(f"deploy/Dockerfile.{name}", "deploy", test_tag, base)
        timings[f"{name}_image_s"] = round(time.monotonic() - started, 1)
        picked[name] = test_tag
    return {
        "RCA_IMAGE": "localhost/rca-graph:test",
        "BASE_IMAGE": base,
        "POSTGRES_IMAGE": picked["postgres"],
        "RABBITMQ_IMAGE": picked["rabbitmq"],
        "timings": timings,
    }


@pytest.fixture
def project(engine: Engine) -> Iterator[str]:
    """A unique compose project, always taken down with its volumes."""
    name = f"rcatest{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        compose = [*engine.compose, "-p", name, "-f", "docker-compose.yml"]
        env = clean_env(COMPOSE_PROJECT_NAME=name)
        run([*compose, "down", "-v"], timeout=180, cwd=ROOT, env=env)
        left = run([engine.name, "ps", "-a", "-q", "--filter",
                    f"label=com.docker.compose.project={name}"])  # fmt: skip
        assert not left.stdout.strip(), f"containers of {name} left behind"


def test_compose_drill_two_kills(
    engine: Engine, images: dict[str, Any], project: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "drill"
    env = clean_env(
        COMPOSE=" ".join(engine.compose),
        COMPOSE_PROJECT_NAME=project,
        RCA_IMAGE=images["RCA_IMAGE"],
        BASE_IMAGE=images["BASE_IMAGE"],
        POSTGRES_IMAGE=images["POSTGRES_IMAGE"],
        RABBITMQ_IMAGE=images["RABBITMQ_IMAGE"],
        GRAPH_A_PORT=str(free_port()),
        GRAPH_B_PORT=str(free_port()),
        COLLECTOR_RATE="20",
        KILLS="2",
        KILL_HOW="compose,crash",
        TRAFFIC="flowing,quiesced",
        FLOW_S="3",
        BUILD="0",  # built above, with the right base image
        DRILL_LOG_DIR=str(log_dir),
    )
    started = time.monotonic()
    proc = run(["bash", "deploy/compose-drill.sh"], timeout=600, cwd=ROOT, env=env)
    duration = time.monotonic() - started
    where = f"drill stderr (tail):\n{proc.stderr[-4000:]}\ncontainer logs: {log_dir}/containers"
    assert proc.stdout.strip(), f"no report (exit {proc.returncode})\n{where}"
    report = json.loads(proc.stdout)
    print(json.dumps({"images": images["timings"], "drill_s": round(duration, 1),
                      "totals": report["totals"]}))  # fmt: skip
    assert proc.returncode == 0 and report["ok"], f"{json.dumps(report, indent=1)}\n{where}"

    totals = report["totals"]
    assert totals["kills"] == 2 and totals["graph_preserved"] and totals["seq_continuous"]
    first, second = report["kills"]
    assert {first["victim"], second["victim"]} == {"graph-a", "graph-b"}  # alternating
    for kill in report["kills"]:
        assert 0 < kill["kill_to_ready_s"] < 30, kill
        assert kill["recovery_mode"] in ("hot", "snapshot", "fresh"), kill
        assert kill["graph"]["lost_vertices"] == 0 and kill["graph"]["lost_edges"] == 0
        assert kill["seq"]["new_last_seq_at_ready"] >= kill["seq"]["old_confirmed_seq"]
        assert kill["events_before_kill"]["events"] > 0, "no events flowed before the kill"
    assert second["graph"]["mode"] == "equal"  # quiesced: nothing arrived since
    assert second["restarted_by"] == "restart policy"
