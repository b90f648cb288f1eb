"""Linking teams to environments with a role (administrators only).

A user's permissions in an environment are the union of the roles of their teams' links there;
the check lives in ``permissions.authorize``. Links are read on every request, so a change here
takes effect on the users' next request.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import accounts, appkeys, permissions_catalog
from gateway.exceptions import MissingReference
from gateway.http import ApiError, ValidationFailed, json_response
from gateway.logs import get_logger
from gateway.management.access import existing_team, path_id
from gateway.management.bodies import Fields, page_headers, pagination, read_json_object
from gateway.management.framework import endpoint, require_admin
from gateway.storage import access
from gateway.storage.database import Database

log = get_logger(__name__)
routes = web.RouteTableDef()


def _link_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "environment_id": row["environment_id"],
        "team": {"id": row["team_id"], "name": row["team_name"]},
        "role": {
            "id": row["role_id"],
            "name": row["role_name"],
            "permissions": permissions_catalog.sort_permissions(row["permissions"]),
        },
    }


async def _existing_environment(request: web.Request, db: Database) -> int:
    environment_id = path_id(request, "environment_id", "environment")
    if not await access.environment_exists(db, environment_id):
        raise ApiError(404, f"environment {environment_id} not found")
    return environment_id


async def _role_to_link(db: Database, role_id: int) -> None:
    """422 ``no role with id N`` unless the role a body names exists."""
    if await access.role_by_id(db, role_id) is None:
        raise ValidationFailed({"role_id": [f"no role with id {role_id}"]})


@routes.post("/environments/{environment_id}/teams/{team_id}/link")
@endpoint()
async def link_team(request: web.Request) -> web.Response:
    """Link a team ``{role_id}``: 201 when new, 200 when an existing link changes its role."""
    acting = require_admin(request)
    db = request.app[appkeys.DATABASE]
    environment_id = await _existing_environment(request, db)
    team_id = path_id(request, "team_id", "team")
    await existing_team(db, team_id)
    body = await read_json_object(request)
    fields = Fields(body, ("role_id",))
    role_id = fields.integer("role_id", minimum=1, maximum=2**63 - 1)
    fields.check()
    await _role_to_link(db, role_id)
    try:
        async with db.transaction() as session:
            await accounts.still_admin(session, acting)  # demoted meanwhile: grants nothing
            created = await access.link_team(session, environment_id, team_id, role_id)
    except MissingReference:
        # Deleted since it was looked up above: answered as a request after the delete is.
        await _existing_environment(request, db)
        await existing_team(db, team_id)
        await _role_to_link(db, role_id)
        raise
    log.info(
        "team_linked",
        environment_id=environment_id,
        team_id=team_id,
        role_id=role_id,
        created=created,
    )
    link = await access.environment_link(db, environment_id, team_id)
    if link is None:  # unlinked concurrently
        raise ApiError(404, f"team {team_id} is not linked to environment {environment_id}")
    return json_response(_link_json(link), status=201 if created else 200)


@routes.delete("/environments/{environment_id}/teams/{team_id}/link")
@endpoint()
async def unlink_team(request: web.Request) -> web.Response:
    """Remove a team's link to an environment (its members lose access on their next request)."""
    require_admin(request)
    db = request.app[appkeys.DATABASE]
    environment_id = await _existing_environment(request, db)
    team_id = path_id(request, "team_id", "team")
    if not await access.unlink_team(db, environment_id, team_id):
        await existing_team(db, team_id)  # a missing team is named as such
        raise ApiError(404, f"team {team_id} is not linked to environment {environment_id}")
    log.info("team_unlinked", environment_id=environment_id, team_id=team_id)
    return web.Response(status=204)


@routes.get("/environments/{environment_id}/teams")
@endpoint()
async def list_links(request: web.Request) -> web.Response:
    """The teams linked to an environment with their roles, paginated."""
    require_admin(request)
    db = request.app[appkeys.DATABASE]
    environment_id = await _existing_environment(request, db)
    page, per_page = pagination(request)
    rows, total = await access.environment_links(
        db, environment_id, per_page, (page - 1) * per_page
    )
    return json_response(
        [_link_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )
