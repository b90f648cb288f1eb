"""The OpenAPI 3.1 document of the management API, the trigger endpoint and the probes, served
at ``GET /openapi.json`` (no authentication) on the management listener.

The document is hand-written data (schemas.py, inputs.py, paths_*.py) rather than generated
from the views: it is the contract, and tests/unit/test_openapi.py fails when a registered route
is missing from it (or it names one that does not exist), while tests/acceptance/
test_schemathesis.py checks a live server against it.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from gateway.openapi import paths_access, paths_core, paths_hooks, paths_ingest
from gateway.openapi.common import Schema
from gateway.openapi.schemas import COMPONENT_SCHEMAS
from gateway.version import package_version

routes = web.RouteTableDef()

TITLE = "hookgate"
VERSION = package_version()  # the release, as `gateway --version` prints it
DESCRIPTION = """\
An async webhook gateway: signed webhooks in, durable pipeline runs out.

Management endpoints take `Authorization: Bearer <token>` (from `POST /users/login` or a personal
access token). Errors always have the body `{"message": str, "errors": {field: [str]} | null}`.
Lists are JSON arrays paginated with `page`/`per_page`, with `Link` and `X-Total-Count` headers.
With `server.management_port` set, the trigger endpoint, probes and metrics are served on the
ingest listener and everything else (this document included) on the management listener.
"""


def _merge(*groups: dict[str, Schema]) -> dict[str, Schema]:
    """Path items of every group; a path in several groups gets the union of its methods."""
    merged: dict[str, Schema] = {}
    for group in groups:
        for path, item in group.items():
            methods = merged.setdefault(path, {})
            clash = set(methods) & set(item)
            if clash:
                raise ValueError(f"{path}: {sorted(clash)} documented twice")
            methods.update(item)
    return dict(sorted(merged.items()))


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once per process)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "tags": [
            {"name": name}
            for name in (
                "ingest",
                "users",
                "environments",
                "pipelines",
                "incoming hooks",
                "outgoing hooks",
                "hooks",
                "history",
                "runs",
                "executors",
                "access",
                "operations",
            )
        ],
        "security": [{"bearer": []}],
        "paths": _merge(
            paths_ingest.paths(), paths_core.paths(), paths_hooks.paths(), paths_access.paths()
        ),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token from POST /users/login, or a personal "
                    "access token (hgp_...).",
                }
            },
            "schemas": COMPONENT_SCHEMAS,
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2)


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document."""
    return web.Response(body=_document_bytes(), content_type="application/json")
