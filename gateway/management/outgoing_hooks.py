"""Outgoing hooks: requests the gateway sends when a pipeline's runs change state.

The signing secret (Standard Webhooks ``whsec_`` form) is returned once: in the create response,
the update response that turns ``requires_secret`` on, or the rotate response that issues a new
one. Every other response masks it, and values of credential-like request headers
(``Authorization``, ``*token*``...) are always masked.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError, json_response
from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret
from gateway.logs import get_logger
from gateway.management.bodies import (
    page_headers,
    pagination,
    read_grace_period,
    read_json_object,
)
from gateway.management.framework import current_user, endpoint
from gateway.management.outgoing_hook_input import MASK, parse_outgoing_hook
from gateway.management.permissions import authorize
from gateway.management.resources import path_uuid, pipeline_for
from gateway.security.secret_box import StoredSecret
from gateway.security.sensitive_headers import is_sensitive_header
from gateway.storage import outgoing
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()


def _masked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    headers = [
        {"name": h["name"], "value": MASK if is_sensitive_header(h["name"]) else h["value"]}
        for h in settings.get("request_headers", [])
    ]
    return {**settings, "request_headers": headers}


def hook_json(row: Record, *, secret: str | None = None) -> dict[str, Any]:
    """The API shape of an outgoing hook; ``secret`` is shown only when passed."""
    return {
        "id": str(row["id"]),
        "type": "outgoing",
        "pipeline_id": row["pipeline_id"],
        "environment_id": row["environment_id"],
        "name": row["name"],
        "active": row["active"],
        "target_url": row["target_url"],
        "requires_secret": row["requires_secret"],
        "secret": secret if secret is not None else (MASK if row["secret"] else None),
        # Until when deliveries are also signed with the secret the last rotation replaced
        # (null: none).
        "previous_secret_expires_at": row["previous_secret_expires_at"],
        "trigger_when": row["trigger_when"],
        "settings": _masked_settings(row["settings"]),
        "consecutive_failures": row["consecutive_failures"],
        # Why the gateway turned the hook off (410 Gone, too many failures); null otherwise.
        "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def stored_values(row: Record) -> dict[str, Any]:
    """A hook row as the values ``parse_outgoing_hook`` merges an update into."""
    keys = ("name", "target_url", "active", "requires_secret", "events", "trigger_when")
    return {**{k: row[k] for k in keys}, "settings": row["settings"]}


async def outgoing_hook_for(request: web.Request, *required: str) -> Record:
    """The outgoing hook named in the path, once the caller holds ``required`` there."""
    hook_id = path_uuid(request, "hook_id", "hook")
    row = await outgoing.hook_by_id(request.app[appkeys.DATABASE], hook_id)
    if row is None:
        raise ApiError(404, "hook not found")
    await authorize(request, row["environment_id"], *required, resource="hook")
    return row


async def outgoing_hooks_json(request: web.Request, pipeline: Record) -> list[dict[str, Any]]:
    """Every outgoing hook of ``pipeline``, secrets masked (a lister for GET .../hooks)."""
    rows = await outgoing.hooks_for_pipeline(request.app[appkeys.DATABASE], pipeline["id"])
    return [hook_json(r) for r in rows]


@routes.post("/pipelines/{pipeline_id}/hooks/outgoing")
@endpoint()
async def create_outgoing_hook(request: web.Request) -> web.Response:
    """Create an outgoing hook (``hook:create``); the response carries the secret once."""
    pipeline = await pipeline_for(request, "hook:create")
    values = parse_outgoing_hook(await read_json_object(request))
    secret = generate_secret(STANDARD_WEBHOOKS) if values["requires_secret"] else None
    row = await outgoing.insert_hook(
        request.app[appkeys.DATABASE],
        uuid.uuid4(),
        pipeline["id"],
        values,
        secret,
        current_user(request).id,
    )
    log.info("outgoing_hook_created", hook_id=str(row["id"]), pipeline_id=pipeline["id"])
    return json_response(
        hook_json(row, secret=secret),
        status=201,
        headers={"Location": f"/hooks/outgoing/{row['id']}"},
    )


@routes.get("/pipelines/{pipeline_id}/hooks/outgoing")
@endpoint()
async def list_outgoing_hooks(request: web.Request) -> web.Response:
    """A pipeline's outgoing hooks, oldest first (``hook:read``), paginated."""
    pipeline = await pipeline_for(request, "hook:read")
    page, per_page = pagination(request)
    found = await outgoing_hooks_json(request, pipeline)
    start = (page - 1) * per_page
    return json_response(
        found[start : start + per_page],
        headers=page_headers(request, page, per_page, len(found)),
    )


@routes.get("/hooks/outgoing/{hook_id}")
@endpoint()
async def get_outgoing_hook(request: web.Request) -> web.Response:
    """One outgoing hook (``hook:read``)."""
    return json_response(hook_json(await outgoing_hook_for(request, "hook:read")))


@routes.put("/hooks/outgoing/{hook_id}")
@endpoint()
async def update_outgoing_hook(request: web.Request) -> web.Response:
    """Change an outgoing hook (``hook:update``); fields sent replace the stored ones."""
    hook = await outgoing_hook_for(request, "hook:update")
    body = await read_json_object(request)
    async with request.app[appkeys.DATABASE].transaction() as session:
        locked = await outgoing.lock_hook(session, hook["id"])
        if locked is None:
            raise ApiError(404, "hook not found")
        values = parse_outgoing_hook(body, stored_values(locked))
        secret: str | StoredSecret | None = None
        if locked["secret"] is not None:  # kept: written back as stored
            secret = StoredSecret(locked["secret"])
        shown = None
        if not values["requires_secret"]:
            secret = None
        elif secret is None:
            secret = shown = generate_secret(STANDARD_WEBHOOKS)
        row = await outgoing.update_hook(session, hook["id"], values, secret)
    log.info("outgoing_hook_updated", hook_id=str(row["id"]))
    return json_response(hook_json(row, secret=shown))


@routes.delete("/hooks/outgoing/{hook_id}")
@endpoint()
async def delete_outgoing_hook(request: web.Request) -> web.Response:
    """Delete an outgoing hook and its undelivered deliveries (``hook:delete``)."""
    hook = await outgoing_hook_for(request, "hook:delete")
    if not await outgoing.delete_hook(request.app[appkeys.DATABASE], hook["id"]):
        raise ApiError(404, "hook not found")
    log.info("outgoing_hook_deleted", hook_id=str(hook["id"]))
    return web.Response(status=204)


@routes.post("/hooks/outgoing/{hook_id}/secret/rotate")
@endpoint()
async def rotate_outgoing_secret(request: web.Request) -> web.Response:
    """Issue a new signing secret, shown once in this response (``hook:update``). For
    ``grace_period_seconds`` (default ``hooks.secret_grace_period``; 0: none) deliveries carry a
    ``webhook-signature`` by the old secret too, so receivers can switch at their own pace;
    the custom ``settings.signature_header`` carries one signature: the new secret's. 409 for
    a hook without a secret (``requires_secret`` false)."""
    hook = await outgoing_hook_for(request, "hook:update")
    grace = await read_grace_period(request)
    secret = generate_secret(STANDARD_WEBHOOKS)
    async with request.app[appkeys.DATABASE].transaction() as session:
        locked = await outgoing.lock_hook(session, hook["id"])
        if locked is None:
            raise ApiError(404, "hook not found")
        if not locked["requires_secret"]:
            raise ApiError(
                409,
                "the hook has no secret to rotate: requires_secret is false (turn it on with "
                "PUT to issue one)",
            )
        row = await outgoing.rotate_secret(session, hook["id"], secret, grace)
    log.info("outgoing_hook_secret_rotated", hook_id=str(row["id"]), grace_period_seconds=grace)
    return json_response(hook_json(row, secret=secret))
