"""Path parameters and "load it, then check the caller may touch it" for management views.

Every lookup loads the resource first (404 when absent) and then authorizes against the
environment that owns it, so an invisible resource and a missing one look the same to a
non-admin.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError
from gateway.management.bodies import decimal_in_range
from gateway.management.framework import current_user
from gateway.management.permissions import authorize
from gateway.storage import environments, hooks, pipelines
from gateway.storage.database import Record

_MAX_BIGINT = 2**63 - 1


def path_int(request: web.Request, key: str, resource: str) -> int:
    """An integer id from the path; 404 (not 400) when it cannot name anything."""
    value = decimal_in_range(request.match_info[key], 1, _MAX_BIGINT)
    if value is None:
        raise ApiError(404, f"{resource} not found")
    return value


def path_uuid(request: web.Request, key: str, resource: str) -> uuid.UUID:
    """A UUID from the path; 404 when it is malformed."""
    try:
        return uuid.UUID(request.match_info[key])
    except ValueError:
        raise ApiError(404, f"{resource} not found") from None


async def authorize_orphanable(
    request: web.Request, environment_id: int | None, *required: str, resource: str
) -> None:
    """Authorize access to a record that outlives its owner (runs, request history): once the
    pipeline or hook is deleted there is no environment to check, so only admins see it."""
    if environment_id is None:
        if not current_user(request).is_admin:
            raise ApiError(404, f"{resource} not found")
        return
    await authorize(request, environment_id, *required, resource=resource)


async def environment_for(
    request: web.Request, *required: str, key: str = "environment_id"
) -> Record:
    """The environment named in the path, once the caller holds ``required`` in it."""
    environment_id = path_int(request, key, "environment")
    row = await environments.environment_by_id(request.app[appkeys.DATABASE], environment_id)
    if row is None:
        raise ApiError(404, "environment not found")
    await authorize(request, environment_id, *required, resource="environment")
    return row


async def pipeline_for(request: web.Request, *required: str, key: str = "pipeline_id") -> Record:
    """The pipeline named in the path, once the caller holds ``required`` in its environment."""
    pipeline_id = path_int(request, key, "pipeline")
    row = await pipelines.pipeline_by_id(request.app[appkeys.DATABASE], pipeline_id)
    if row is None:
        raise ApiError(404, "pipeline not found")
    await authorize(request, row["environment_id"], *required, resource="pipeline")
    return row


async def incoming_hook_for(request: web.Request, *required: str, key: str = "hook_id") -> Record:
    """The incoming hook (without secrets) named in the path, once the caller holds
    ``required`` in its environment."""
    hook_id = path_uuid(request, key, "hook")
    row = await hooks.incoming_hook_by_id(request.app[appkeys.DATABASE], hook_id)
    if row is None:
        raise ApiError(404, "hook not found")
    await authorize(request, row["environment_id"], *required, resource="hook")
    return row
