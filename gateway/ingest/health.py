"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.http import error_response, json_response
from gateway.shutdown import SHUTDOWN, Shutdown

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving."""
    return json_response({"status": "ok"})


# How long /readyz waits for the database, a free pool connection included: a probe must get
# an answer (503) from a worker whose pool is exhausted, not hang until the prober times out.
READY_TIMEOUT = 2.0


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready to accept hooks: not stopping, and the database answers within READY_TIMEOUT
    seconds."""
    # Only `gateway serve`'s apps stop with a drain_delay (`gateway dispatch` has no services).
    shutdown: Shutdown | None = request.app.get(appkeys.SERVICES, {}).get(SHUTDOWN)
    if shutdown is not None and shutdown.announced:  # during [server] drain_delay
        return error_response(
            503, "not ready: the gateway is stopping", headers={"Retry-After": "1"}
        )
    if await request.app[appkeys.DATABASE].ping(READY_TIMEOUT):
        return json_response({"status": "ready", "database": "ok"})
    return error_response(
        503,
        f"not ready: the database is unavailable or did not answer within {READY_TIMEOUT:g}s",
        headers={"Retry-After": "1"},
    )
