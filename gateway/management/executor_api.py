"""The executor side of runs over HTTP: claim, heartbeat, report status (``run:execute``), and
a pipeline's concurrency settings (``pipeline:update``).

Claiming without ``pipeline_id`` claims from every environment where the caller holds
``run:execute`` (administrators: all); nobody can claim a run they could not claim by naming its
pipeline. Reading runs lives in management/runs.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from gateway import appkeys, run_states
from gateway.exceptions import Conflict, GatewayError
from gateway.http import ApiError, json_response
from gateway.logs import get_logger
from gateway.management.bodies import Fields, read_json_object, read_optional_json_object
from gateway.management.framework import current_user, endpoint
from gateway.management.permissions import authorize
from gateway.management.resources import authorize_orphanable, path_uuid, pipeline_for
from gateway.management.runs import run_json
from gateway.storage import pipelines, runs, runs_read
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()

EXECUTE = "run:execute"
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT32 = 2**31 - 1


# A status report may carry a long process output, of which the last 64 KiB are kept
# (run_states.bound_output): take far more than other management bodies rather than refuse the
# report (the run would then stay in progress until its lease ran out, and run again).
STATUS_BODY_BYTES = 16 * 1024 * 1024


def _lease_token(
    fields: Fields, key: str = "lease_token", *, required: bool = True
) -> uuid.UUID | None:
    text = fields.string(key, max_length=64, required=required)
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        fields.add(key, "must be the lease_token returned by POST /runs/claim")
        return None


def claimed_json(row: Record) -> dict[str, Any]:
    """A claimed run: the run plus what its executor needs to keep and report it."""
    return {
        **run_json(row),
        "lease_token": str(row["lease_token"]),
        "lease_expires_at": row["lease_expires_at"],
    }


async def _run_for_executor(request: web.Request) -> Record:
    run_id = path_uuid(request, "run_id", "run")
    row = await runs_read.run_by_id(request.app[appkeys.DATABASE], run_id)
    if row is None:
        raise ApiError(404, "run not found")
    await authorize_orphanable(request, row["environment_id"], EXECUTE, resource="run")
    return row


def _executor(request: web.Request) -> str:
    """Who is calling, as a claim records it in ``claimed_by``."""
    return f"user:{current_user(request).id}"


@asynccontextmanager
async def _refusal_logged(
    event: str, request: web.Request, row: Record, **fields: Any
) -> AsyncIterator[None]:
    """Log a Conflict (answered 409) with the run, the caller and the reason, then let it go
    on: a stale executor being refused is worth seeing on the server side. Never the token.
    ``current`` is the run's status as the refusal left it, read again: the refused call may
    itself have changed it (a heartbeat cancels a superseded run), or another one meanwhile."""
    try:
        yield
    except Conflict as exc:
        try:
            now = await runs_read.run_by_id(request.app[appkeys.DATABASE], row["id"])
        except GatewayError:  # the 409 stands; the status read before it is logged then
            now = None
        log.info(
            event,
            run_id=str(row["id"]),
            executor=_executor(request),
            current=(now or row)["status"],
            reason=str(exc),
            **fields,
        )
        raise


def _lease_seconds(fields: Fields) -> Any:
    """The optional ``lease_seconds`` of a claim or heartbeat (60 by default)."""
    return fields.integer(
        "lease_seconds",
        required=False,
        default=60,
        minimum=run_states.MIN_LEASE_SECONDS,
        maximum=run_states.MAX_LEASE_SECONDS,
    )


@routes.post("/runs/claim")
@endpoint()
async def claim_runs(request: web.Request) -> web.Response:
    """Claim up to ``limit`` queued runs (oldest first) with a lease of ``lease_seconds``."""
    body = await read_optional_json_object(request)
    fields = Fields(body, ("pipeline_id", "limit", "lease_seconds"))
    pipeline_id = fields.integer("pipeline_id", required=False, minimum=1, maximum=2**63 - 1)
    limit = fields.integer("limit", required=False, default=1, minimum=1, maximum=100)
    lease = _lease_seconds(fields)
    fields.check()
    db = request.app[appkeys.DATABASE]
    user = current_user(request)
    environment_ids: list[int] | None = None
    if pipeline_id is not None:
        pipeline = await pipelines.pipeline_by_id(db, pipeline_id)
        if pipeline is None:
            raise ApiError(404, "pipeline not found")
        await authorize(request, pipeline["environment_id"], EXECUTE, resource="pipeline")
    elif not user.is_admin:
        environment_ids = await runs.environments_with(db, user.id, EXECUTE)
        if not environment_ids:  # else a token without it would poll [] for ever, unwarned
            raise ApiError(403, f"missing permission {EXECUTE!r} in every environment")
    claimed = await runs.claim(
        db,
        pipeline_id=pipeline_id,
        environment_ids=environment_ids,
        limit=limit,
        lease_seconds=lease,
        claimed_by=f"user:{user.id}",
    )
    # An executor polling an empty queue every second would otherwise log 86,400 lines a day.
    (log.info if claimed else log.debug)(
        "runs_claimed", pipeline_id=pipeline_id, count=len(claimed)
    )
    return json_response([claimed_json(r) for r in claimed])


@routes.post("/runs/{run_id}/status")
@endpoint()
async def report_status(request: web.Request) -> web.Response:
    """Finish (completed/failed) or release (queued) a claimed run, or cancel a queued or
    in-progress one (with or without its lease); 409 when illegal."""
    row = await _run_for_executor(request)
    # Process output may hold NUL bytes; storage strips them (run_states.bound_output/message).
    # Nor is a report refused for an unpaired surrogate escape (undecodable output, as Python's
    # surrogateescape spells it): it is taken with U+FFFD in its place, and logged.
    replaced: list[str] = []
    body = await read_json_object(
        request,
        nul_allowed=("message", "output"),
        max_bytes=STATUS_BODY_BYTES,
        replaced=replaced,
    )
    if replaced:
        log.info("run_status_text_replaced", run_id=str(row["id"]), fields=replaced)
    fields = Fields(body, ("status", "lease_token", "message", "output", "exit_code"))
    status = fields.string("status", max_length=20, choices=run_states.STATUSES)
    # Cancelling needs no lease: a queued run has none, and whoever may execute the pipeline's
    # runs may also call one off. Every other move is the lease holder's.
    token = _lease_token(fields, required=status != run_states.CANCELLED)
    message = fields.string("message", required=False, min_length=0, max_length=2000)
    output = body.get("output")
    if output is not None and not isinstance(output, str):
        fields.add("output", "must be a string")
        output = None
    exit_code = fields.integer("exit_code", required=False, minimum=-_INT32 - 1, maximum=_INT32)
    fields.check()
    async with _refusal_logged("run_status_refused", request, row, status=status):
        updated = await runs.report_status(
            request.app[appkeys.DATABASE],
            row["id"],
            token,
            status,
            message=message,
            output=output,
            exit_code=exit_code,
        )
    # The lease holder repeating the outcome it recorded (its first answer was lost): 200, and
    # nothing changed.
    repeated = row["status"] == status and status in run_states.FINISHED and token is not None
    event = "run_status_repeated" if repeated else "run_status_reported"
    log.info(event, run_id=str(row["id"]), status=status, executor=_executor(request))
    return json_response(run_json(updated))


@routes.post("/runs/{run_id}/heartbeat")
@endpoint()
async def heartbeat(request: web.Request) -> web.Response:
    """Extend a claimed run's lease; 409 once it was cancelled or the lease was lost."""
    row = await _run_for_executor(request)
    body = await read_json_object(request)
    fields = Fields(body, ("lease_token", "lease_seconds"))
    token = _lease_token(fields)
    lease = _lease_seconds(fields)
    fields.check()
    assert token is not None
    async with _refusal_logged("run_heartbeat_refused", request, row):
        expires = await runs.heartbeat(request.app[appkeys.DATABASE], row["id"], token, lease)
    return json_response(
        {"id": str(row["id"]), "status": run_states.IN_PROGRESS, "lease_expires_at": expires}
    )


def concurrency_json(row: Record) -> dict[str, Any]:
    """A pipeline's concurrency settings."""
    return {
        "pipeline_id": row["id"],
        "policy": row["concurrency_policy"],
        "key": row["concurrency_key"],
        "max_attempts": row["max_attempts"],
    }


@routes.get("/pipelines/{pipeline_id}/concurrency")
@endpoint()
async def get_concurrency(request: web.Request) -> web.Response:
    """A pipeline's concurrency policy, key variable and max attempts."""
    pipeline = await pipeline_for(request, "pipeline:read")
    settings = await runs.pipeline_settings(request.app[appkeys.DATABASE], pipeline["id"])
    if settings is None:
        raise ApiError(404, "pipeline not found")
    return json_response(concurrency_json(settings))


@routes.put("/pipelines/{pipeline_id}/concurrency")
@endpoint()
async def put_concurrency(request: web.Request) -> web.Response:
    """Set ``{policy, key, max_attempts}``; queued and in-progress runs are re-keyed at once."""
    pipeline = await pipeline_for(request, "pipeline:update")
    body = await read_json_object(request)
    fields = Fields(body, ("policy", "key", "max_attempts"))
    policy = fields.string("policy", max_length=40, choices=run_states.POLICIES)
    key = fields.string("key", required=False, max_length=64)
    if isinstance(key, str) and key and not _VARIABLE_NAME.fullmatch(key):
        fields.add("key", "must be a variable name (letters, digits and '_')")
    max_attempts = fields.integer("max_attempts", required=False, default=3, minimum=1, maximum=100)
    fields.check()
    row = await runs.set_concurrency(
        request.app[appkeys.DATABASE], pipeline["id"], policy, key, max_attempts
    )
    log.info("pipeline_concurrency_set", pipeline_id=pipeline["id"], policy=policy, key=key)
    return json_response({**concurrency_json(row), "rekeyed_runs": row["rekeyed"]})
