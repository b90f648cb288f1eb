"""Request history of incoming hooks: list, inspect, replay.

Headers were redacted when the request was recorded, and are again when shown: a row recorded
while the rule (gateway.security.sensitive_headers) knew fewer credential headers still holds
their values until retention removes it, and must not show them. Bodies are decoded here
(zstd, then JSON when the body is a JSON object or array, else text, else base64).

A replay re-evaluates the stored request against the hook's *current* definition (without the
signature check: the request was verified when it arrived, and its signature headers were
redacted) and records the outcome as a new history row with ``retry_of`` = the original, through
the same group-commit batcher as live requests. Its run has no delivery id, so replaying a
delivery that already has a run still queues a new one: a replay is deliberate.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.exceptions import DatabaseUnavailable, Overloaded
from gateway.http import ApiError, json_response
from gateway.ingest.batcher import (
    DUPLICATE,
    RUN_BATCHER,
    PendingRequest,
    RequestNotStored,
    RunBatcher,
)
from gateway.ingest.evaluation import (
    ACCEPTED,
    REJECTED,
    SKIPPED,
    CompiledHook,
    Evaluation,
    evaluate,
)
from gateway.logs import get_logger
from gateway.management import outgoing_history
from gateway.management.bodies import list_filter, page_headers, pagination
from gateway.management.framework import endpoint
from gateway.management.resources import authorize_orphanable, incoming_hook_for, path_uuid
from gateway.reload import live_config
from gateway.security.sensitive_headers import redact_headers
from gateway.storage import history, hooks
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()

# What the ingest path records (evaluation.py, batcher.py); a typo is a 422, not an empty list.
OUTCOMES = (ACCEPTED, SKIPPED, REJECTED, DUPLICATE)
# Statuses the live endpoint answers before (or instead of) verifying the signature: 403
# inactive, 413 too large, 401 bad signature, 500 broken definition.
_UNVERIFIED_STATUSES = frozenset({401, 403, 413, 500})


def request_summary_json(row: Record) -> dict[str, Any]:
    """The API shape of a recorded request in lists (no headers or body)."""
    return {
        "id": str(row["id"]),
        "hook_id": str(row["hook_id"]),
        "hook_type": row["hook_type"],
        "received_at": row["received_at"],
        "client_ip": None if row["client_ip"] is None else str(row["client_ip"]),
        "outcome": row["outcome"],
        "status_code": row["status_code"],
        "message": row["message"],
        "run_id": None if row["run_id"] is None else str(row["run_id"]),
        "delivery_id": row["delivery_id"],
        "latency_ms": row["latency_ms"],
        "retry_of": None if row["retry_of"] is None else str(row["retry_of"]),
        "body_size": row["body_size"],
        # body_encoding is NULL exactly when the body was not kept (hooks.store_bodies).
        "body_stored": row["body_encoding"] is not None,
    }


def decoded_body(raw: bytes | None) -> tuple[str | None, Any]:
    """(format, value) of a stored body: ``json`` (parsed object/array), ``text`` or
    ``base64`` (not UTF-8); (None, None) when the body was not stored."""
    if raw is None:
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(raw).decode("ascii")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "text", text
    # A bare JSON scalar ("42", "true") is more likely a text body than a payload.
    return ("json", parsed) if isinstance(parsed, dict | list) else ("text", text)


def request_detail_json(row: Record) -> dict[str, Any]:
    """The API shape of one recorded request: the summary plus headers (redacted again, see
    the module docstring) and body; an outgoing attempt's summary is its shape in the
    attempts list (method, target URL, answer excerpt, attempt number)."""
    body_format, body = decoded_body(history.stored_body(row))
    if row["hook_type"] == "outgoing":
        summary = outgoing_history.attempt_json(row)
    else:
        summary = {**request_summary_json(row), "headers": redact_headers(row["headers"])}
    return {
        **summary,
        "pipeline_id": row["pipeline_id"],
        "environment_id": row["environment_id"],
        "body_format": body_format,
        "body": body,
    }


@routes.get("/hooks/incoming/{hook_id}/requests")
@endpoint()
async def list_requests(request: web.Request) -> web.Response:
    """A hook's requests, newest first, paginated (``hook:read``); ``?outcome=`` filters."""
    hook = await incoming_hook_for(request, "hook:read")
    page, per_page = pagination(request)
    rows, total = await history.list_hook_requests(
        request.app[appkeys.DATABASE],
        hook["id"],
        "incoming",
        list_filter(request, "outcome", OUTCOMES),
        per_page,
        (page - 1) * per_page,
    )
    return json_response(
        [request_summary_json(r) for r in rows],
        headers=page_headers(request, page, per_page, total),
    )


async def _recorded_request(request: web.Request, *required: str) -> Record:
    """The recorded request named in the path, once the caller holds ``required`` in the
    environment of its hook (administrators only once the hook is deleted)."""
    request_id = path_uuid(request, "request_id", "hook request")
    row = await history.hook_request_by_id(request.app[appkeys.DATABASE], request_id)
    if row is None:
        raise ApiError(404, "hook request not found")
    await authorize_orphanable(request, row["environment_id"], *required, resource="hook request")
    return row


@routes.get("/hook-requests/{request_id}")
@endpoint()
async def get_request(request: web.Request) -> web.Response:
    """One recorded request with its (redacted) headers and decoded body (``hook:read``)."""
    return json_response(request_detail_json(await _recorded_request(request, "hook:read")))


@routes.post("/hook-requests/{request_id}/replay")
@endpoint()
async def replay_request(request: web.Request) -> web.Response:
    """Re-run a recorded request against the hook's current settings (``hook:update``).

    Answers like ``POST /hooks/incoming/{id}`` would: 202 with ``run_id``, 202 ``skipped``, or
    the rejection status (e.g. 422 naming the variables); plus ``request_id`` (the new history
    row) and ``retry_of`` (the replayed one).
    """
    started = time.perf_counter()
    original = await _recorded_request(request, "hook:update")
    db, config = request.app[appkeys.DATABASE], live_config(request.app)
    if original["hook_type"] == "outgoing":  # a manual redelivery (issue 6)
        return await outgoing_history.redeliver_attempt(request, original)
    if original["hook_type"] != "incoming":
        raise ApiError(409, "only requests to incoming hooks can be replayed")
    if original["status_code"] in _UNVERIFIED_STATUSES:
        # Replay skips the signature check; it must not launder a forged or unchecked request.
        raise ApiError(
            409,
            "the original request did not pass signature verification; it cannot be replayed",
        )
    hook_row = await hooks.incoming_hook_with_secrets(db, original["hook_id"])
    if hook_row is None:
        raise ApiError(409, "the hook this request was sent to has been deleted")
    if not hook_row["active"]:
        raise ApiError(409, "the hook is inactive; activate it before replaying its requests")
    body = history.stored_body(original)
    if body is None:
        raise ApiError(
            409,
            "the original request body was not stored (refused before it was read, or not "
            "kept by hooks.store_bodies)",
        )

    hook = CompiledHook.from_row(hook_row, config, box=db.secret_box)
    evaluation = evaluate(hook, original["headers"], body, verify_signature=False)
    item = PendingRequest(
        id=uuid.uuid4(),
        hook_id=hook.id,
        pipeline_id=hook.pipeline_id,
        client_ip=None if original["client_ip"] is None else str(original["client_ip"]),
        headers=redact_headers(original["headers"]),  # an old row's may hold more
        body=body,
        body_size=len(body),
        outcome=evaluation.outcome,
        status_code=evaluation.status,
        message=_history_message(evaluation),
        delivery_id=None,  # the unique (hook, delivery id) index would refuse the new run
        started=started,
        retry_of=original["id"],
    )
    if evaluation.outcome == ACCEPTED:
        item.run_id = uuid.uuid4()
        item.variables = evaluation.variables
    stored = await _store(request, item)
    log.info(
        "hook_request_replayed",
        hook_id=str(hook.id),
        retry_of=str(original["id"]),
        outcome=evaluation.outcome,
        status=evaluation.status,
        run_id=None if stored is None else str(stored),
    )
    return _replay_response(evaluation, item, stored)


async def _store(request: web.Request, item: PendingRequest) -> uuid.UUID | None:
    """Commit the history row (and run) through the ingest batcher; the run id, if any."""
    batcher: RunBatcher | None = request.app[appkeys.SERVICES].get(RUN_BATCHER)
    retry_after = str(live_config(request.app).batch.retry_after)
    if batcher is None:
        raise ApiError(
            503, "the ingest writer is not running", headers={"Retry-After": retry_after}
        )
    try:
        stored = await batcher.submit(item)
    except Overloaded as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": retry_after}) from exc
    except DatabaseUnavailable as exc:  # its text is for the log, not for API clients
        raise ApiError(
            503, "the database is unavailable; retry later", headers={"Retry-After": retry_after}
        ) from exc
    except RequestNotStored as exc:
        raise ApiError(500, str(exc)) from exc
    return stored.run_id


def _history_message(evaluation: Evaluation) -> str:
    # The same text the live endpoint records, so replays and originals read alike.
    if evaluation.outcome == SKIPPED:
        return f"{evaluation.message}: {evaluation.reason}"
    if evaluation.errors:
        details = "; ".join(f"{k}: {', '.join(v)}" for k, v in evaluation.errors.items())
        return f"{evaluation.message} ({details})"
    return evaluation.message


def _replay_response(
    evaluation: Evaluation, item: PendingRequest, run_id: uuid.UUID | None
) -> web.Response:
    ids = {"request_id": str(item.id), "retry_of": str(item.retry_of)}
    data: dict[str, Any]
    if evaluation.outcome == ACCEPTED:
        run = str(run_id)
        data = {"message": evaluation.message, "run_id": run, "errors": None, **ids}
        return json_response(data, status=202, headers={"X-Run-Id": run})
    if evaluation.outcome == SKIPPED:
        data = {
            "message": evaluation.message,
            "run_id": None,
            "skipped": True,
            "reason": evaluation.reason,
            "errors": None,
            **ids,
        }
        return json_response(data, status=202)
    data = {"message": evaluation.message, "errors": evaluation.errors, **ids}
    return json_response(data, status=evaluation.status)
