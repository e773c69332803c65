"""Health, status and Prometheus metrics of the persistor (read-only)."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from persistor_service.metrics import PersistorMetrics


class PersistorView(Protocol):
    metrics: PersistorMetrics

    def healthy(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def create_app(service: PersistorView) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        """200 only while both RabbitMQ and PostgreSQL are connected."""
        ok = service.healthy()
        return _json({"status": "ok" if ok else "degraded", **service.status()}, 200 if ok else 503)

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return _json(service.status())

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(service.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.add_routes(routes)
    return app
