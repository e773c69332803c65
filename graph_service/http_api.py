"""The HTTP API: health, readiness, status, the graph, Prometheus metrics.

Handlers only read; they run on the event loop between processed messages, so
they always see a graph that is consistent at a message boundary. The whole
topology of a large graph is rendered in a forked child instead (:mod:`forked`):
rendering 100k vertices takes 0.4 s, a million would hold the loop longer than
``LEADER_FENCE_TIMEOUT`` and the active would fence itself for a GET.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from graph_service import crashpoints
from graph_service.entity_graph import CATEGORY, IS_DELETED, TYPE, EntityGraph
from graph_service.evaluation import Evaluation
from graph_service.forked import FORK_AVAILABLE, ForkError, run_in_child, write_all
from graph_service.metrics import Metrics
from graph_service.rca import rca
from graph_service.templates import TemplateError, validate_text
from graph_service.transformers import AGGREGATED_SEVERITY, RESOURCE_VID
from rca_common.logging import get_logger
from rca_common.settings import Settings

log = get_logger(__name__)

# The whole topology of a graph this large is rendered in a forked child (about
# 40 ms of the loop's time at this size if rendered on it; the fork pauses it 1-20 ms).
TOPOLOGY_FORK_MIN_VERTICES = 10_000
STREAM_CHUNK = 1 << 20


class ServiceView(Protocol):
    """What the API needs from the service."""

    graph: EntityGraph
    metrics: Metrics
    settings: Settings
    evaluation: Evaluation

    def is_ready(self) -> bool: ...

    def phase(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def request_snapshot(self) -> bool: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def create_app(service: ServiceView) -> web.Application:
    routes = web.RouteTableDef()
    # One topology child at a time: each may copy up to the graph's size (copy-on-write)
    # while it runs, and requests piling up must not multiply that.
    topology_child = asyncio.Lock()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok", "phase": service.phase()})

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        ready = service.is_ready()
        return _json({"ready": ready, "phase": service.phase()}, 200 if ready else 503)

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return _json(service.status())

    @routes.get("/v1/topology")
    async def topology(request: web.Request) -> web.Response:
        graph = service.graph
        include_deleted = _truthy(request.query.get("include_deleted"))
        root = request.query.get("root")
        if root is not None:
            if root not in graph:
                return _json({"error": f"no vertex {root}"}, 404)
            try:
                depth = int(request.query.get("depth", "1"))
            except ValueError:
                return _json({"error": "depth must be an integer"}, 400)
            vids, edge_ids = graph.subgraph(root, max(depth, 0))
            vertices = [graph.vertex(v) for v in vids]
            edges = [_edge(s, t, k, graph.edge(s, t, k) or {}) for s, t, k in edge_ids]
        else:
            if FORK_AVAILABLE and len(graph) >= TOPOLOGY_FORK_MIN_VERTICES:
                with_deleted = include_deleted  # the child renders the graph as of the fork
                return await _from_child(
                    request,
                    lambda fd: write_all(fd, render_topology(service.graph, with_deleted)),
                    topology_child,
                )
            return _body(render_topology(graph, include_deleted))
        if not include_deleted:
            vertices = [v for v in vertices if v and not v.get(IS_DELETED)]
            edges = [e for e in edges if not e.get(IS_DELETED)]
        return _json({"vertices": vertices, "edges": edges})

    @routes.get("/v1/resources/{vid}")
    async def resource(request: web.Request) -> web.Response:
        attrs = service.graph.vertex(request.match_info["vid"])
        if attrs is None:
            return _json({"error": "not found"}, 404)
        return _json(attrs)

    @routes.get("/v1/alarms")
    async def alarms(request: web.Request) -> web.Response:
        want_type = request.query.get("type")
        want_sev = request.query.get("severity")
        want_res = request.query.get("resource")
        include_deleted = _truthy(request.query.get("include_deleted"))
        out = []
        for _, attrs in service.graph.vertices():
            if attrs.get(CATEGORY) != "ALARM":
                continue
            if attrs.get(IS_DELETED) and not include_deleted:
                continue
            if want_type and attrs.get(TYPE) != want_type:
                continue
            if want_sev and str(attrs.get(AGGREGATED_SEVERITY, "")).upper() != want_sev.upper():
                continue
            if want_res and want_res not in (attrs.get(RESOURCE_VID), attrs.get("resource_id")):
                continue
            out.append(attrs)
        return _json({"alarms": out})

    @routes.post("/v1/admin/snapshot")
    async def snapshot(request: web.Request) -> web.Response:
        """Take a snapshot now (before maintenance, or in a drill); 409 unless active."""
        if not service.request_snapshot():
            return _json({"error": "not the active instance, or persistency is off"}, 409)
        return _json({"requested": True}, 202)

    @routes.post("/v1/admin/crash-point")
    async def crash_point(request: web.Request) -> web.Response:
        """Drills only (DRILL_HOOKS=true): arm a crash point, e.g. {"point": "replay"}."""
        if not service.settings.drill_hooks:
            return _json({"error": "drill hooks are disabled"}, 404)
        body = await request.json()
        try:
            crashpoints.arm(str(body["point"]), int(body.get("after", 1)))
        except (KeyError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"armed": body})

    @routes.get("/v1/alarms/{vid}")
    async def alarm(request: web.Request) -> web.Response:
        attrs = service.graph.vertex(request.match_info["vid"])
        if attrs is None or attrs.get(CATEGORY) != "ALARM":
            return _json({"error": "no such alarm"}, 404)
        return _json(attrs)

    @routes.get("/v1/rca/{vid}")
    async def root_cause(request: web.Request) -> web.Response:
        vid = request.match_info["vid"]
        attrs = service.graph.vertex(vid)
        if attrs is None or attrs.get(CATEGORY) != "ALARM":
            return _json({"error": "no such alarm"}, 404)
        return _json(rca(service.graph, vid))

    @routes.get("/v1/templates")
    async def templates(request: web.Request) -> web.Response:
        return _json({"templates": service.evaluation.listing()})

    @routes.post("/v1/templates/validate")
    async def validate(request: web.Request) -> web.Response:
        """Check a template (the YAML text as the body) without loading it."""
        name = request.query.get("name", "template.yaml")
        try:
            template = validate_text(await request.text(), name)
        except TemplateError as exc:
            return _json({"valid": False, "file": exc.file, "line": exc.line,
                          "reason": exc.reason}, 400)  # fmt: skip
        return _json({"valid": True, "name": template.name, "scenarios": len(template.scenarios)})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        service.gc_timer.drain(service.metrics.observe_gc)  # pauses since the last scrape
        body = generate_latest(service.metrics.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.add_routes(routes)
    return app


def _edge(src: str, dst: str, label: str, attrs: dict[str, Any]) -> dict[str, Any]:
    return {"source": src, "target": dst, **attrs, "relationship_type": label}


def _body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def render_topology(graph: EntityGraph, include_deleted: bool) -> bytes:
    """The JSON of ``GET /v1/topology`` without ``root``: every vertex and edge."""
    vertices = [a for _, a in graph.vertices() if include_deleted or not a.get(IS_DELETED)]
    edges = [
        _edge(s, t, k, a)
        for s, t, k, a in graph.edges()
        if include_deleted or not a.get(IS_DELETED)
    ]
    return orjson.dumps({"vertices": vertices, "edges": edges})


async def _from_child(
    request: web.Request, work: Callable[[int], None], one_at_a_time: asyncio.Lock
) -> web.StreamResponse:
    """Run ``work`` in a forked child (one at a time) and stream the JSON it wrote to the
    client (the next child may run meanwhile: the result is a file of its own)."""
    try:
        async with one_at_a_time:
            run = await run_in_child(work, "topology")
    except ForkError as exc:  # not rendered on the loop instead: that is what would stall it
        log.warning("topology not rendered: no child", error=str(exc))
        return _json({"error": f"cannot render the topology now: {exc}"}, 503)
    try:
        failure = run.failure("topology")
        if failure is not None:
            log.error("topology child failed", error=failure)
            return _json({"error": "rendering the topology failed; see the service log"}, 500)
        size = os.fstat(run.fd).st_size
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = size
        await response.prepare(request)
        offset = 0
        while offset < size:
            chunk = os.pread(run.fd, min(STREAM_CHUNK, size - offset), offset)
            if not chunk:
                break
            await response.write(chunk)
            offset += len(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(run.fd)
