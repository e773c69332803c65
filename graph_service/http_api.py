"""The HTTP API: health, readiness, status, the graph, Prometheus metrics.

Handlers only read; they run on the event loop between processed messages, so
they always see a graph that is consistent at a message boundary.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from graph_service import crashpoints
from graph_service.entity_graph import CATEGORY, IS_DELETED, TYPE, EntityGraph
from graph_service.evaluation import Evaluation
from graph_service.metrics import Metrics
from graph_service.rca import rca
from graph_service.templates import TemplateError, validate_text
from graph_service.transformers import AGGREGATED_SEVERITY, RESOURCE_VID
from rca_common.settings import Settings


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
            vertices = [attrs for _, attrs in graph.vertices()]
            edges = [_edge(s, t, k, a) for s, t, k, a in graph.edges()]
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
