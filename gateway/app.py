"""The application factory: two route tables (ingest and management) over one database.

The ingest table carries the hot path and no per-request middleware work; the management table
is wrapped per route (see management.framework). With ``server.management_port`` set, the
management API gets its own Application and listener, so a load balancer can expose only ingest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web, web_response

from gateway import appkeys
from gateway.config import Config
from gateway.dispatcher import service as dispatcher_service
from gateway.http import routing_errors_as_json
from gateway.ingest import health, metrics_route
from gateway.ingest import trigger as ingest_trigger
from gateway.management import access as access_api
from gateway.management import environment_teams as environment_teams_api
from gateway.management import environments as environments_api
from gateway.management import executor_api
from gateway.management import history as history_api
from gateway.management import incoming_hooks as incoming_hooks_api
from gateway.management import outgoing_history as outgoing_history_api
from gateway.management import outgoing_hooks as outgoing_hooks_api
from gateway.management import pipeline_hooks as pipeline_hooks_api
from gateway.management import pipelines as pipelines_api
from gateway.management import runs as runs_api
from gateway.management import tokens as tokens_api
from gateway.management import users as users_api
from gateway.management.bodies import MAX_BODY_BYTES
from gateway.management.framework import with_expect_handler
from gateway.openapi import routes as openapi_routes
from gateway.reload import CONFIG_HOLDER, ConfigHolder
from gateway.security.login_throttle import LOGIN_THROTTLE, LoginThrottle
from gateway.security.secret_service import secret_box_service
from gateway.shutdown import SHUTDOWN, Shutdown
from gateway.storage.database import Database

# Route tables in registration order. Later parts append to these lists.
# Options of the request handler of every listener serving these apps (gateway.server, and the
# tests' server). Bodies are read as they were sent: ingest refuses a compressed one with its
# own 415 (the signature covers the bytes sent, and a small compressed body can expand far
# past max_body_bytes), the management API likewise; left on, aiohttp would answer a body in
# an encoding it cannot decode (br, zstd) with a bare 400 before any handler runs.
HANDLER_OPTIONS: dict[str, Any] = {"auto_decompress": False}

# The Server header of every response, aiohttp's own answers to requests it cannot parse
# included, instead of "Python/3.x aiohttp/3.y.z": versions are no one else's business. The
# value aiohttp's responses default to (web_response.StreamResponse._prepare_headers); set
# once here, it costs no request anything (tests/integration pins it, parser errors too).
web_response.SERVER_SOFTWARE = "hookgate"

INGEST_ROUTES: list[web.RouteTableDef] = [health.routes]
MANAGEMENT_ROUTES: list[web.RouteTableDef] = [users_api.routes]
# Environments, pipelines, incoming hooks, request history and runs (read side).
MANAGEMENT_ROUTES += [
    environments_api.routes,
    pipelines_api.routes,
    incoming_hooks_api.routes,
    pipeline_hooks_api.routes,
    runs_api.routes,
    history_api.routes,
]
# Access: roles, teams, members, team links to environments, personal access tokens.
MANAGEMENT_ROUTES += [access_api.routes, environment_teams_api.routes, tokens_api.routes]
# Executors: claim, heartbeat, status; pipeline concurrency settings (issue 5).
MANAGEMENT_ROUTES += [executor_api.routes]

# Hooks that start and stop per-process services (hook cache, batcher, dispatcher ...).
ServiceContext = Callable[[web.Application], AsyncIterator[None]]
SERVICE_CONTEXTS: list[ServiceContext] = []
# Operations (issue 8): hook secrets at rest; first, since the services below read secrets.
SERVICE_CONTEXTS.append(secret_box_service)
# Ingest: POST /hooks/incoming/{hook_id}, its hook cache and group-commit batcher.
INGEST_ROUTES.append(ingest_trigger.routes)
SERVICE_CONTEXTS.append(ingest_trigger.ingest_services)
# Outgoing hooks (issue 6): their management API, and the dispatcher inside `gateway serve`.
MANAGEMENT_ROUTES += [outgoing_hooks_api.routes, outgoing_history_api.routes]
# API reference (issue 8): GET /openapi.json, unauthenticated, beside the API it describes.
MANAGEMENT_ROUTES.append(openapi_routes)
SERVICE_CONTEXTS.append(dispatcher_service.dispatcher_service)
# Operations (issue 8): GET /metrics (Prometheus) and its per-process pool sampler.
INGEST_ROUTES.append(metrics_route.routes)
SERVICE_CONTEXTS.append(metrics_route.metrics_service)


def _base_app(
    config: Config, db: Database, services: dict[str, Any], max_body: int
) -> web.Application:
    app = web.Application(client_max_size=max_body, middlewares=[routing_errors_as_json])
    app[appkeys.CONFIG] = config
    app[appkeys.DATABASE] = db
    app[appkeys.SERVICES] = services
    return app


def create_apps(
    config: Config, db: Database, holder: ConfigHolder | None = None
) -> tuple[web.Application, web.Application | None]:
    """(ingest app, management app or None when both share the ingest listener).

    ``holder`` carries the config in force after SIGHUP reloads (gateway.reload); services and
    views that follow reloads find it in ``app[appkeys.SERVICES]``.
    """
    services: dict[str, Any] = {
        CONFIG_HOLDER: holder or ConfigHolder(config),
        LOGIN_THROTTLE: LoginThrottle(),
        SHUTDOWN: Shutdown(),
    }
    # Ingest bodies may be as large as max_body_bytes; management bodies are small JSON.
    ingest = _base_app(config, db, services, config.server.max_body_bytes)
    for table in INGEST_ROUTES:
        ingest.add_routes(table)
    for context in SERVICE_CONTEXTS:
        ingest.cleanup_ctx.append(context)
    if config.server.management_port:
        # Views read their bodies with gateway.management.bodies.read_body and its limits.
        management = _base_app(config, db, services, MAX_BODY_BYTES)
        for table in MANAGEMENT_ROUTES:
            management.add_routes(with_expect_handler(table))
        return ingest, management
    for table in MANAGEMENT_ROUTES:
        ingest.add_routes(with_expect_handler(table))
    return ingest, None


def create_app(config: Config, db: Database) -> web.Application:
    """One Application serving both route tables (tests and single-listener deployments)."""
    shared = config.server.management_port == 0
    if not shared:
        from dataclasses import replace

        config = replace(config, server=replace(config.server, management_port=0))
    app, _ = create_apps(config, db)
    return app
