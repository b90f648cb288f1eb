"""Authorisation for management views: admins bypass; others need the permission in the
environment that owns the resource.

A user with no team linked to that environment gets 404 for the resource (its existence is not
revealed); a user who can see the environment but lacks the permission gets 403 naming both.
"""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError
from gateway.management.framework import current_user
from gateway.storage import permissions as store


async def authorize(
    request: web.Request, environment_id: int, *required: str, resource: str = "resource"
) -> None:
    """Raise 404/403 unless the current user holds every ``required`` permission there."""
    user = current_user(request)
    if user.is_admin:
        return
    held = await store.permissions_in_environment(
        request.app[appkeys.DATABASE], environment_id, user.id
    )
    if held is None:
        raise ApiError(404, f"{resource} not found")
    missing = [p for p in required if p not in held]
    if missing:
        raise ApiError(
            403,
            f"missing permission {', '.join(repr(p) for p in missing)} "
            f"in environment {environment_id}",
        )


async def visible_environments(request: web.Request) -> set[int] | None:
    """Environment ids the user may list; None means all (administrators)."""
    user = current_user(request)
    if user.is_admin:
        return None
    return await store.visible_environment_ids(request.app[appkeys.DATABASE], user.id)
