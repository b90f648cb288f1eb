"""Outgoing hooks' history: attempts (``hook_requests`` rows), deliveries, manual redelivery."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError, json_response
from gateway.logs import get_logger
from gateway.management.bodies import list_filter, page_headers, pagination
from gateway.management.framework import endpoint
from gateway.management.outgoing_hooks import outgoing_hook_for
from gateway.security.sensitive_headers import redact_headers
from gateway.storage import outgoing
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()

# What the dispatcher records per attempt (dispatcher.py), and the states of a delivery
# (schema.sql outgoing_deliveries.status); a typo in a list filter is a 422, not every row.
ATTEMPT_OUTCOMES = ("succeeded", "failed", "refused")
DELIVERY_STATUSES = ("pending", "delivering", "succeeded", "failed", "skipped")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def attempt_json(row: Record) -> dict[str, Any]:
    """The API shape of one outgoing attempt (headers redacted when recorded, and again, as in
    management.history; no body)."""
    return {
        "id": str(row["id"]),
        "hook_id": str(row["hook_id"]),
        "hook_type": "outgoing",
        "sent_at": row["received_at"],
        "attempt": row["attempt"],
        "method": row["request_method"],
        "target_url": row["target_url"],
        "headers": redact_headers(row["headers"]),
        "body_size": row["body_size"],
        "body_stored": row["body_encoding"] is not None,
        "outcome": row["outcome"],  # one of ATTEMPT_OUTCOMES
        "status_code": row["status_code"],  # 0: no response (timeout, refused, network error)
        "message": row["message"],
        "response_excerpt": row["response_excerpt"],
        "latency_ms": row["latency_ms"],
        "run_id": _text(row["run_id"]),
        "delivery_id": row["delivery_id"],
        "retry_of": _text(row["retry_of"]),
    }


def delivery_json(row: Record) -> dict[str, Any]:
    """The API shape of one delivery (its state across attempts)."""
    return {
        "id": str(row["id"]),
        "hook_id": str(row["hook_id"]),
        "run_id": _text(row["run_id"]),
        "event": row["event"],
        "status": row["status"],  # one of DELIVERY_STATUSES
        "attempt": row["attempt"],
        "next_attempt_at": row["next_attempt_at"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "retry_of": _text(row["retry_of"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


@routes.get("/hooks/outgoing/{hook_id}/requests")
@endpoint()
async def list_attempts(request: web.Request) -> web.Response:
    """A hook's attempts, newest first, paginated (``hook:read``); ``?outcome=`` filters."""
    hook = await outgoing_hook_for(request, "hook:read")
    page, per_page = pagination(request)
    rows, total = await outgoing.list_attempts(
        request.app[appkeys.DATABASE],
        hook["id"],
        list_filter(request, "outcome", ATTEMPT_OUTCOMES),
        per_page,
        (page - 1) * per_page,
    )
    return json_response(
        [attempt_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


@routes.get("/hooks/outgoing/{hook_id}/deliveries")
@endpoint()
async def list_deliveries(request: web.Request) -> web.Response:
    """A hook's deliveries, newest first, paginated (``hook:read``); ``?status=`` filters."""
    hook = await outgoing_hook_for(request, "hook:read")
    page, per_page = pagination(request)
    rows, total = await outgoing.list_deliveries(
        request.app[appkeys.DATABASE],
        hook["id"],
        list_filter(request, "status", DELIVERY_STATUSES),
        per_page,
        (page - 1) * per_page,
    )
    return json_response(
        [delivery_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


async def redeliver_attempt(request: web.Request, original: Record) -> web.Response:
    """``POST /hook-requests/{id}/replay`` for an outgoing attempt, once the caller was
    authorized (``hook:update``): queue a new delivery of the same event snapshot, its attempts
    recorded with ``retry_of`` = the replayed attempt. 202 with the new ``delivery_id``."""
    db = request.app[appkeys.DATABASE]
    delivery = None
    if original["delivery_id"]:
        delivery = await outgoing.delivery_by_id(db, uuid.UUID(original["delivery_id"]))
    if delivery is None:
        raise ApiError(409, "the delivery of this request is gone (hook deleted, or pruned)")
    if not delivery["hook_active"]:
        raise ApiError(409, "the hook is inactive; activate it before redelivering its requests")
    new = await outgoing.redeliver(db, delivery["id"], original["id"])
    if new is None:  # the delivery vanished meanwhile
        raise ApiError(409, "the delivery of this request is gone (hook deleted, or pruned)")
    log.info("outgoing_redelivery_queued", delivery_id=str(new["id"]), retry_of=str(original["id"]))
    return json_response(
        {
            "message": "redelivery queued",
            "delivery_id": str(new["id"]),
            "retry_of": str(original["id"]),
            "errors": None,
        },
        status=202,
    )
