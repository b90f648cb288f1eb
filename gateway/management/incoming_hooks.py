"""Incoming hooks: the URLs external services call to start a pipeline run.

The secret is returned exactly twice in a hook's life cycle: in the create response and, for a
new secret, in a rotate response. Every other response masks it.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError, json_response
from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret, scheme_for_header
from gateway.logs import get_logger
from gateway.management.bodies import Fields, read_grace_period, read_json_object
from gateway.management.framework import current_user, endpoint
from gateway.management.incoming_hook_input import (
    check_delivery_id_header,
    merged_hook,
    parse_incoming_hook,
)
from gateway.management.resources import incoming_hook_for, pipeline_for
from gateway.reload import live_config
from gateway.storage import hooks
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()

MASK = "********"


def hook_url(base_url: str, hook_id: uuid.UUID | str) -> str:
    """The absolute URL senders POST to."""
    return f"{base_url}/hooks/incoming/{hook_id}"


def hook_json(row: Record, base_url: str, *, secret: str | None = None) -> dict[str, Any]:
    """The API shape of an incoming hook; ``secret`` is shown only when passed (create/rotate)."""
    return {
        "id": str(row["id"]),
        "type": "incoming",
        "pipeline_id": row["pipeline_id"],
        "environment_id": row["environment_id"],
        "name": row["name"],
        "active": row["active"],
        "url": hook_url(base_url, row["id"]),
        "action_type": row["action_type"],
        "requires_secret": row["requires_secret"],
        "secret_algorithm": row["secret_algorithm"],
        "secret_header_name": row["secret_header_name"],
        "secret": MASK if secret is None else secret,
        # When the secret replaced by the last rotation stops being accepted (null: none).
        "previous_secret_expires_at": row["previous_secret_expires_at"],
        "trigger_when": row["trigger_when"],
        "settings": row["settings"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _base_url(request: web.Request) -> str:
    return live_config(request.app).server.base_url


async def incoming_hooks_json(request: web.Request, pipeline: Record) -> list[dict[str, Any]]:
    """Every incoming hook of ``pipeline``, secrets masked (a lister for GET .../hooks)."""
    rows = await hooks.incoming_hooks_for_pipeline(request.app[appkeys.DATABASE], pipeline["id"])
    base_url = _base_url(request)
    return [hook_json(r, base_url) for r in rows]


@routes.post("/pipelines/{pipeline_id}/hooks/incoming")
@endpoint()
async def create_incoming_hook(request: web.Request) -> web.Response:
    """Create an incoming hook (``application:read`` + ``hook:create``); the response is the
    only one that carries the secret."""
    pipeline = await pipeline_for(request, "application:read", "hook:create")
    values = parse_incoming_hook(await read_json_object(request), partial=False)
    secret = generate_secret(scheme_for_header(values["secret_header_name"]))
    row = await hooks.insert_incoming_hook(
        request.app[appkeys.DATABASE],
        uuid.uuid4(),
        pipeline["id"],
        values,
        secret,
        current_user(request).id,
    )
    log.info("incoming_hook_created", hook_id=str(row["id"]), pipeline_id=pipeline["id"])
    return json_response(
        hook_json(row, _base_url(request), secret=secret),  # row["secret"] is sealed
        status=201,
        headers={"Location": f"/hooks/incoming/{row['id']}"},
    )


@routes.get("/hooks/incoming/{hook_id}")
@endpoint()
async def get_incoming_hook(request: web.Request) -> web.Response:
    """One incoming hook, secret masked (``hook:read``)."""
    row = await incoming_hook_for(request, "hook:read")
    return json_response(hook_json(row, _base_url(request)))


def _forget_cached(request: web.Request, hook_id: Any) -> None:
    # This process answers the sender's next call from its cache; NOTIFY reaches the other
    # workers a moment later. Dropping our own copy now gives read-your-writes here.
    cache = request.app[appkeys.SERVICES].get("hook_cache")
    if cache is not None:
        cache.invalidate(hook_id)


@routes.put("/hooks/incoming/{hook_id}")
@endpoint()
async def update_incoming_hook(request: web.Request) -> web.Response:
    """Change some or all fields of a hook (``hook:update``); the secret is changed only by
    rotation, or by a switch to Standard Webhooks (``secret_header_name: webhook-signature``),
    whose senders need a ``whsec_`` secret: a new one is issued, shown once in this response,
    and the old one stops at once. ``settings`` keys given replace the stored ones; others are
    kept."""
    hook = await incoming_hook_for(request, "hook:update")
    changes = parse_incoming_hook(await read_json_object(request), partial=True)
    secret = None
    # Decided on the hook as it is when written, locked: an update that committed meanwhile
    # may have changed the scheme or the delivery id header (or already issued the whsec_
    # secret), and the switch's new secret is written with the switch, not after it.
    async with request.app[appkeys.DATABASE].transaction() as session:
        locked = await hooks.lock_incoming_hook(session, hook["id"])
        if locked is None:
            raise ApiError(404, "hook not found")
        fields = Fields({}, ())
        check_delivery_id_header(fields, merged_hook(dict(locked), changes))
        fields.check()
        row = await hooks.update_incoming_hook(session, hook["id"], changes)
        if row is None:
            raise ApiError(404, "hook not found")
        old_scheme = scheme_for_header(locked["secret_header_name"])
        new_scheme = scheme_for_header(row["secret_header_name"])
        if new_scheme == STANDARD_WEBHOOKS != old_scheme:
            secret = generate_secret(new_scheme)
            row = await hooks.rotate_incoming_secret(session, hook["id"], secret, 0)
            if row is None:
                raise ApiError(404, "hook not found")
    _forget_cached(request, row["id"])
    log.info(
        "incoming_hook_updated",
        hook_id=str(row["id"]),
        fields=sorted(changes),
        signing_reissued=secret is not None,
    )
    return json_response(hook_json(row, _base_url(request), secret=secret))


@routes.delete("/hooks/incoming/{hook_id}")
@endpoint()
async def delete_incoming_hook(request: web.Request) -> web.Response:
    """Delete a hook (``hook:delete``); its URL stops working, its request history remains."""
    hook = await incoming_hook_for(request, "hook:delete")
    if not await hooks.delete_incoming_hook(request.app[appkeys.DATABASE], hook["id"]):
        raise ApiError(404, "hook not found")
    _forget_cached(request, hook["id"])
    log.info("incoming_hook_deleted", hook_id=str(hook["id"]))
    return web.Response(status=204)


@routes.post("/hooks/incoming/{hook_id}/secret/rotate")
@endpoint()
async def rotate_secret(request: web.Request) -> web.Response:
    """Issue a new secret, shown once in this response (``hook:update``). The old one keeps
    working for ``grace_period_seconds`` (default ``hooks.secret_grace_period``; 0: stops now)."""
    hook = await incoming_hook_for(request, "hook:update")
    grace = await read_grace_period(request)
    async with request.app[appkeys.DATABASE].transaction() as session:
        # The kind of secret is the scheme's as the rotation finds it (an update switching to
        # Standard Webhooks may have committed meanwhile: its senders need a whsec_ secret).
        locked = await hooks.lock_incoming_hook(session, hook["id"])
        if locked is None:
            raise ApiError(404, "hook not found")
        secret = generate_secret(scheme_for_header(locked["secret_header_name"]))
        row = await hooks.rotate_incoming_secret(session, hook["id"], secret, grace)
        if row is None:
            raise ApiError(404, "hook not found")
    _forget_cached(request, row["id"])
    log.info("incoming_hook_secret_rotated", hook_id=str(row["id"]), grace_period_seconds=grace)
    return json_response(hook_json(row, _base_url(request), secret=secret))
