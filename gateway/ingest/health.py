"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.http import error_response, json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready to accept hooks: the database answers."""
    if await request.app[appkeys.DATABASE].ping():
        return json_response({"status": "ready", "database": "ok"})
    return error_response(
        503, "not ready: the database is unreachable", headers={"Retry-After": "1"}
    )
