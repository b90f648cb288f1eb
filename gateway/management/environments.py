"""Environments: the unit of access control (teams are linked to them with a role)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import json_response
from gateway.logs import get_logger
from gateway.management.bodies import Fields, page_headers, pagination, read_json_object
from gateway.management.framework import endpoint, require_admin
from gateway.management.permissions import visible_environments
from gateway.management.resources import environment_for
from gateway.storage import environments
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()


def environment_json(row: Record) -> dict[str, Any]:
    """The API shape of an environment."""
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "created_at": row["created_at"],
    }


@routes.post("/environments")
@endpoint()
async def create_environment(request: web.Request) -> web.Response:
    """Create an environment (administrators only)."""
    require_admin(request)
    body = await read_json_object(request)
    fields = Fields(body, ("name", "description"))
    name = fields.name("name", max_length=100)
    description = fields.string(
        "description", required=False, default="", min_length=0, max_length=1000
    )
    fields.check()
    row = await environments.insert_environment(request.app[appkeys.DATABASE], name, description)
    log.info("environment_created", environment_id=row["id"])
    return json_response(
        environment_json(row), status=201, headers={"Location": f"/environments/{row['id']}"}
    )


@routes.get("/environments")
@endpoint()
async def list_environments(request: web.Request) -> web.Response:
    """The environments the caller can see (all of them for administrators), paginated."""
    page, per_page = pagination(request)
    visible = await visible_environments(request)
    rows, total = await environments.list_environments(
        request.app[appkeys.DATABASE], visible, per_page, (page - 1) * per_page
    )
    return json_response(
        [environment_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


@routes.get("/environments/{environment_id}")
@endpoint()
async def get_environment(request: web.Request) -> web.Response:
    """One environment (``environment:read``)."""
    row = await environment_for(request, "environment:read")
    return json_response(environment_json(row))
