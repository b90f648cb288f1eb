"""``GET /pipelines/{id}/hooks``: every hook of a pipeline, of every type, secrets masked.

Each hook type contributes a *lister* to HOOK_LISTERS; the list is their concatenation in
registration order (incoming hooks first), each lister returning its hooks oldest first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.http import json_response
from gateway.management import incoming_hooks, outgoing_hooks
from gateway.management.bodies import page_headers, pagination
from gateway.management.framework import endpoint
from gateway.management.resources import pipeline_for
from gateway.storage.database import Record

routes = web.RouteTableDef()

# (request, pipeline row) -> the JSON of that type's hooks of the pipeline, secrets masked.
HookLister = Callable[[web.Request, Record], Awaitable[list[dict[str, Any]]]]

# Outgoing hooks: append their lister here (one import + one entry).
HOOK_LISTERS: list[HookLister] = [
    incoming_hooks.incoming_hooks_json,
    outgoing_hooks.outgoing_hooks_json,
]


@routes.get("/pipelines/{pipeline_id}/hooks")
@endpoint()
async def list_pipeline_hooks(request: web.Request) -> web.Response:
    """All hooks of a pipeline (``hook:read``), paginated; secrets are always masked."""
    pipeline = await pipeline_for(request, "hook:read")
    page, per_page = pagination(request)
    found: list[dict[str, Any]] = []
    for lister in HOOK_LISTERS:
        found.extend(await lister(request, pipeline))
    start = (page - 1) * per_page
    return json_response(
        found[start : start + per_page],
        headers=page_headers(request, page, per_page, len(found)),
    )
