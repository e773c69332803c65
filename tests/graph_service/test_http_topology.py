"""GET /v1/topology of a large graph is rendered in a forked child, as of the fork."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from graph_service import http_api
from graph_service.entity_graph import IS_DELETED, SAMPLE_TS, TYPE, VID, EntityGraph
from graph_service.forked import FORK_AVAILABLE, run_in_child, write_all
from tests.conftest import wait_for
from tests.graph_service.core_helpers import ts

pytestmark = pytest.mark.skipif(not FORK_AVAILABLE, reason="no os.fork")


def graph_of(n: int) -> EntityGraph:
    g = EntityGraph()
    g.apply(
        [["v", f"h{i}", {VID: f"h{i}", TYPE: "host", SAMPLE_TS: ts(0), IS_DELETED: False}, []]
         for i in range(n)]
    )  # fmt: skip
    g.apply(
        [["e", "h0", f"h{i}", "contains", {"relationship_type": "contains"}, []]
         for i in range(1, n)]
    )  # fmt: skip
    g.apply(
        [["v", "h1", {IS_DELETED: True}, []], ["e", "h0", "h1", "contains", {IS_DELETED: True}, []]]
    )
    return g


async def get_topology(graph: EntityGraph, query: str = "") -> tuple[int, bytes]:
    app = http_api.create_app(SimpleNamespace(graph=graph))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/topology" + query)
        return response.status, await response.read()


@pytest.mark.parametrize("query", ["", "?include_deleted=true"])
async def test_forked_rendering_equals_rendering_on_the_loop(
    monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    g = graph_of(50)
    monkeypatch.setattr(http_api, "TOPOLOGY_FORK_MIN_VERTICES", 10**9)
    status, inline = await get_topology(g, query)
    assert status == 200
    forks: list[str] = []
    real = http_api.run_in_child

    async def counting(work, name):  # type: ignore[no-untyped-def]
        forks.append(name)
        return await real(work, name)

    monkeypatch.setattr(http_api, "TOPOLOGY_FORK_MIN_VERTICES", 10)
    monkeypatch.setattr(http_api, "STREAM_CHUNK", 1000)  # several chunks
    monkeypatch.setattr(http_api, "run_in_child", counting)
    status, forked = await get_topology(g, query)
    assert (status, forks) == (200, ["topology"])
    assert forked == inline
    body = orjson.loads(forked)
    assert len(body["vertices"]) == (50 if query else 49)
    assert len(body["edges"]) == (49 if query else 48)


async def test_one_topology_child_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each child may copy up to the graph's size: concurrent requests queue for one."""
    running = peak = 0
    real = http_api.run_in_child

    async def tracking(work, name):  # type: ignore[no-untyped-def]
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.05)  # let the other requests arrive meanwhile
            return await real(work, name)
        finally:
            running -= 1

    monkeypatch.setattr(http_api, "TOPOLOGY_FORK_MIN_VERTICES", 10)
    monkeypatch.setattr(http_api, "run_in_child", tracking)
    app = http_api.create_app(SimpleNamespace(graph=graph_of(30)))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:

        async def get() -> int:
            response = await client.get("/v1/topology")
            await response.read()
            return response.status

        assert await asyncio.gather(*(get() for _ in range(4))) == [200] * 4
    assert peak == 1


async def test_a_failing_child_is_a_500_not_a_broken_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_api, "TOPOLOGY_FORK_MIN_VERTICES", 10)

    def die(graph: EntityGraph, include_deleted: bool) -> bytes:
        os.kill(os.getpid(), signal.SIGKILL)
        return b""

    monkeypatch.setattr(http_api, "render_topology", die)
    status, body = await get_topology(graph_of(20))
    assert status == 500
    assert b"rendering the topology failed" in body


async def test_the_child_renders_the_graph_as_of_the_fork(tmp_path: Path) -> None:
    """The parent goes on changing its graph while the child renders: the child does
    not see those changes (and the loop is not held while it renders)."""
    g = graph_of(20)
    started, go = tmp_path / "started", tmp_path / "go"

    def work(fd: int) -> None:
        started.touch()
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        write_all(fd, http_api.render_topology(g, include_deleted=False))

    task = asyncio.create_task(run_in_child(work, "topology"))
    await wait_for(started.exists, timeout=10, what="the child to start")
    g.apply([["v", "late", {VID: "late", TYPE: "host", IS_DELETED: False}, []], ["V", "h5"]])
    go.touch()
    run = await task
    try:
        assert run.failure("topology") is None
        body = orjson.loads(os.pread(run.fd, os.fstat(run.fd).st_size, 0))
    finally:
        os.close(run.fd)
    ids = {v[VID] for v in body["vertices"]}
    assert ids == {f"h{i}" for i in range(20)} - {"h1"}  # h1 is deleted; no "late", h5 kept
    assert "late" in g and "h5" not in g
    assert any(e["target"] == "h5" for e in body["edges"])  # as of the fork
