"""Administration of who may do what: roles, teams and team members (administrators only).

Links between teams and environments live in ``environment_teams.py``; the permission check
itself in ``permissions.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import accounts, appkeys, permissions_catalog
from gateway.exceptions import MissingReference
from gateway.http import ApiError, ValidationFailed, json_response
from gateway.logs import get_logger
from gateway.management.bodies import (
    Fields,
    decimal_in_range,
    page_headers,
    pagination,
    read_json_object,
)
from gateway.management.framework import endpoint, require_admin
from gateway.models import User
from gateway.storage import access, users
from gateway.storage.database import Database

log = get_logger(__name__)
routes = web.RouteTableDef()

_MAX_ID = 2**63 - 1


def path_id(request: web.Request, key: str, what: str) -> int:
    """A bigint id from the path; 404 naming ``what`` when it cannot be one."""
    text = request.match_info[key]
    value = decimal_in_range(text, 1, _MAX_ID)
    if value is None:
        raise ApiError(404, f"{what} {text[:40]} not found")
    return value


def role_json(row: dict[str, Any]) -> dict[str, Any]:
    """A role as the API shows it."""
    return {
        "id": row["id"],
        "name": row["name"],
        "permissions": permissions_catalog.sort_permissions(row["permissions"]),
        "created_at": row["created_at"].isoformat(),
    }


def _team_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "member_count": row["member_count"],
        "created_at": row["created_at"].isoformat(),
    }


# Permission catalogue ---------------------------------------------------------------------------


@routes.get("/permissions")
@endpoint()
async def list_permissions(request: web.Request) -> web.Response:
    """Every permission a role may grant, with the permissions each one requires."""
    return json_response(
        [
            {"name": p, "requires": permissions_catalog.implied_by(p)}
            for p in permissions_catalog.PERMISSIONS
        ]
    )


# Roles ------------------------------------------------------------------------------------------


async def _role_fields(request: web.Request) -> tuple[str, list[str]]:
    body = await read_json_object(request)
    fields = Fields(body, ("name", "permissions"))
    name = fields.name("name", max_length=100)
    permissions: list[str] = []
    if "permissions" not in body:
        fields.add("permissions", "is required")
    else:
        permissions, errors = permissions_catalog.validate_role_permissions(body["permissions"])
        for message in errors:
            fields.add("permissions", message)
    fields.check()
    return name, permissions


@routes.post("/roles")
@endpoint()
async def create_role(request: web.Request) -> web.Response:
    """Create a role ``{name, permissions[]}``; 422 names unknown or missing implied ones."""
    require_admin(request)
    name, permissions = await _role_fields(request)
    role = await access.insert_role(request.app[appkeys.DATABASE], name, permissions)
    log.info("role_created", role_id=role["id"], permissions=permissions)
    return json_response(role_json(role), status=201)


@routes.get("/roles")
@endpoint()
async def list_roles(request: web.Request) -> web.Response:
    """All roles, paginated."""
    require_admin(request)
    page, per_page = pagination(request)
    rows, total = await access.list_roles(
        request.app[appkeys.DATABASE], per_page, (page - 1) * per_page
    )
    return json_response(
        [role_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


@routes.get("/roles/{role_id}")
@endpoint()
async def get_role(request: web.Request) -> web.Response:
    """One role."""
    require_admin(request)
    role_id = path_id(request, "role_id", "role")
    role = await access.role_by_id(request.app[appkeys.DATABASE], role_id)
    if role is None:
        raise ApiError(404, f"role {role_id} not found")
    return json_response(role_json(role))


@routes.put("/roles/{role_id}")
@endpoint()
async def update_role(request: web.Request) -> web.Response:
    """Replace a role's name and permissions; takes effect on the next request of its users."""
    acting = require_admin(request)
    role_id = path_id(request, "role_id", "role")
    name, permissions = await _role_fields(request)
    async with request.app[appkeys.DATABASE].transaction() as session:
        await accounts.still_admin(session, acting)  # demoted meanwhile: grants nothing
        role = await access.update_role(session, role_id, name, permissions)
    if role is None:
        raise ApiError(404, f"role {role_id} not found")
    log.info("role_updated", role_id=role_id, permissions=permissions)
    return json_response(role_json(role))


@routes.delete("/roles/{role_id}")
@endpoint()
async def delete_role(request: web.Request) -> web.Response:
    """Delete a role; 409 while a team link still uses it."""
    require_admin(request)
    role_id = path_id(request, "role_id", "role")
    await access.delete_role(request.app[appkeys.DATABASE], role_id)
    log.info("role_deleted", role_id=role_id)
    return web.Response(status=204)


# Teams ------------------------------------------------------------------------------------------


@routes.post("/teams")
@endpoint()
async def create_team(request: web.Request) -> web.Response:
    """Create a team ``{name}``."""
    require_admin(request)
    body = await read_json_object(request)
    fields = Fields(body, ("name",))
    name = fields.name("name", max_length=100)
    fields.check()
    team = await access.insert_team(request.app[appkeys.DATABASE], name)
    log.info("team_created", team_id=team["id"])
    return json_response(_team_json(team), status=201)


@routes.get("/teams")
@endpoint()
async def list_teams(request: web.Request) -> web.Response:
    """All teams, paginated."""
    require_admin(request)
    page, per_page = pagination(request)
    rows, total = await access.list_teams(
        request.app[appkeys.DATABASE], per_page, (page - 1) * per_page
    )
    return json_response(
        [_team_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


async def existing_team(db: Database, team_id: int) -> dict[str, Any]:
    """The team, or 404 ``team N not found``."""
    team = await access.team_by_id(db, team_id)
    if team is None:
        raise ApiError(404, f"team {team_id} not found")
    return team


async def _existing_team(request: web.Request) -> dict[str, Any]:
    return await existing_team(request.app[appkeys.DATABASE], path_id(request, "team_id", "team"))


@routes.get("/teams/{team_id}")
@endpoint()
async def get_team(request: web.Request) -> web.Response:
    """One team."""
    require_admin(request)
    return json_response(_team_json(await _existing_team(request)))


@routes.delete("/teams/{team_id}")
@endpoint()
async def delete_team(request: web.Request) -> web.Response:
    """Delete a team with its memberships and environment links."""
    require_admin(request)
    team_id = path_id(request, "team_id", "team")
    if not await access.delete_team(request.app[appkeys.DATABASE], team_id):
        raise ApiError(404, f"team {team_id} not found")
    log.info("team_deleted", team_id=team_id)
    return web.Response(status=204)


# Members ----------------------------------------------------------------------------------------


@routes.post("/teams/{team_id}/members")
@endpoint()
async def add_member(request: web.Request) -> web.Response:
    """Add a user ``{user_id}`` to a team; 409 when they already are a member."""
    acting = require_admin(request)
    db = request.app[appkeys.DATABASE]
    team = await _existing_team(request)
    body = await read_json_object(request)
    fields = Fields(body, ("user_id",))
    user_id = fields.integer("user_id", minimum=1, maximum=_MAX_ID)
    fields.check()
    user = await _user_to_add(db, user_id)
    try:
        async with db.transaction() as session:
            await accounts.still_admin(session, acting)  # demoted meanwhile: grants nothing
            added = await access.add_member(session, team["id"], user_id)
    except MissingReference:
        # Deleted since it was looked up above: answered as a request after the delete is.
        await existing_team(db, team["id"])
        await _user_to_add(db, user_id)
        raise
    if not added:
        raise ApiError(409, f"user {user_id} already is a member of team {team['id']}")
    log.info("team_member_added", team_id=team["id"], member_id=user_id)
    return json_response(user.to_json(), status=201)


async def _user_to_add(db: Database, user_id: int) -> User:
    """The user a body names, or 422 ``no user with id N``."""
    user = await users.user_by_id(db, user_id)
    if user is None:
        raise ValidationFailed({"user_id": [f"no user with id {user_id}"]})
    return user


@routes.get("/teams/{team_id}/members")
@endpoint()
async def list_members(request: web.Request) -> web.Response:
    """A team's members (users), paginated."""
    require_admin(request)
    team = await _existing_team(request)
    page, per_page = pagination(request)
    rows, total = await access.list_members(
        request.app[appkeys.DATABASE], team["id"], per_page, (page - 1) * per_page
    )
    return json_response(
        [User.from_row(r).to_json() for r in rows],
        headers=page_headers(request, page, per_page, total),
    )


@routes.delete("/teams/{team_id}/members/{user_id}")
@endpoint()
async def remove_member(request: web.Request) -> web.Response:
    """Remove a user from a team."""
    require_admin(request)
    team_id = path_id(request, "team_id", "team")
    user_id = path_id(request, "user_id", "member")
    db = request.app[appkeys.DATABASE]
    if not await access.remove_member(db, team_id, user_id):
        await existing_team(db, team_id)  # a missing team is named as such
        raise ApiError(404, f"user {user_id} is not a member of team {team_id}")
    log.info("team_member_removed", team_id=team_id, member_id=user_id)
    return web.Response(status=204)
