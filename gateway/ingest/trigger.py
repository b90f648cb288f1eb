"""``POST /hooks/incoming/{hook_id}``: the hot path (DESIGN.md §3).

Cheapest rejection first: 404/403 from the in-process hook cache, 413 before reading, then one
read of the raw body and :func:`gateway.ingest.evaluation.evaluate` (401, 415, 400, skipped,
422). Every request to a known hook is recorded in ``hook_requests`` through the group-commit
batcher; an accepted one also queues a run in the same transaction, and its 202 (or the 200 of a
repeated delivery) is sent only after that commit. No middleware runs here.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.exceptions import DatabaseUnavailable, Overloaded
from gateway.ingest.batcher import (
    RUN_BATCHER,
    PendingRequest,
    RequestNotStored,
    RunBatcher,
    duplicate_message,
)
from gateway.ingest.evaluation import (
    ACCEPTED,
    REJECTED,
    SKIPPED,
    CompiledHook,
    Evaluation,
    delivery_id_of,
    evaluate,
    storable_text,
)
from gateway.ingest.hook_cache import HOOK_CACHE, HookCache
from gateway.logs import get_logger

log = get_logger(__name__)
routes = web.RouteTableDef()

_INGEST = "ingest"  # key in app[appkeys.SERVICES]
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REDACTED = "[redacted]"
_NOT_FOUND = orjson.dumps({"message": "incoming hook not found", "errors": None})


@dataclass(frozen=True, slots=True)
class _Ingest:
    hooks: HookCache
    batcher: RunBatcher
    max_body: int
    retry_after: str


@routes.post("/hooks/incoming/{hook_id}")
async def trigger_incoming_hook(request: web.Request) -> web.Response:
    """Verify, evaluate and durably enqueue one webhook delivery."""
    started = time.perf_counter()
    ingest: _Ingest = request.app[appkeys.SERVICES][_INGEST]
    row_id = uuid.uuid4()
    given = request.headers.get("X-Request-Id")
    request_id = given if given and _REQUEST_ID_OK.fullmatch(given) else row_id.hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    raw_id = request.match_info["hook_id"]

    try:
        hook = await ingest.hooks.get(raw_id)
    except DatabaseUnavailable:
        return _unavailable(ingest, request_id, "the database is unavailable; retry later")
    if hook is None:
        log.info("hook_request_rejected", hook_id=raw_id[:64], status=404, reason="unknown_hook")
        return web.Response(
            body=_NOT_FOUND, status=404, content_type="application/json",
            headers={"X-Request-Id": request_id},
        )  # fmt: skip

    evaluation: Evaluation | None = None
    body: bytes | None = None
    length = request.content_length
    if not hook.active:
        evaluation = Evaluation(403, REJECTED, "incoming hook is inactive", reason="inactive")
    elif length is not None and length > ingest.max_body:
        evaluation = _too_large(ingest.max_body)
    else:
        try:
            body = await _read_body(request, length, ingest.max_body)
        except asyncio.IncompleteReadError:
            evaluation = Evaluation(
                400, REJECTED, "request body ended before Content-Length bytes", reason="short_body"
            )
        else:
            if body is None:
                evaluation = _too_large(ingest.max_body)
    if evaluation is None:
        assert body is not None
        evaluation = evaluate(hook, request.headers, body)
    else:
        evaluation.delivery_id = delivery_id_of(hook, request.headers)

    item = PendingRequest(
        id=row_id,
        hook_id=hook.id,
        pipeline_id=hook.pipeline_id,
        received_at=datetime.now(UTC),
        client_ip=_client_ip(request.remote),
        headers=_history_headers(request.headers, hook.redacted_headers),
        body=body,
        body_size=len(body) if body is not None else (length or 0),
        outcome=evaluation.outcome,
        status_code=evaluation.status,
        message=evaluation.history_message(),
        delivery_id=evaluation.delivery_id,
        started=started,
    )
    if evaluation.outcome == ACCEPTED:
        item.run_id = uuid.uuid4()
        item.variables = evaluation.variables
    try:
        stored = await ingest.batcher.submit(item)
    except (Overloaded, DatabaseUnavailable, RequestNotStored) as exc:
        if evaluation.outcome == REJECTED:
            # The answer does not depend on the history row; losing it must not turn a 4xx
            # into a 503 that the sender would retry.
            log.warning("hook_request_history_lost", hook_id=str(hook.id), error=str(exc))
            return _rejected(hook, evaluation, request_id, body is None)
        if isinstance(exc, RequestNotStored):
            return _json(500, {"message": str(exc), "errors": None}, request_id)
        if isinstance(exc, DatabaseUnavailable):
            return _unavailable(ingest, request_id, "the database is unavailable; retry later")
        return _unavailable(ingest, request_id, str(exc))

    if evaluation.outcome == REJECTED:
        return _rejected(hook, evaluation, request_id, body is None)
    if evaluation.outcome == SKIPPED:
        log.debug("hook_request_skipped", hook_id=str(hook.id), reason=evaluation.reason)
        return _json(
            202,
            {
                "message": evaluation.message,
                "run_id": None,
                "skipped": True,
                "reason": evaluation.reason,
                "errors": None,
            },
            request_id,
        )
    run_id = None if stored.run_id is None else str(stored.run_id)
    headers = {"X-Run-Id": run_id} if run_id is not None else None
    if stored.duplicate:
        message = duplicate_message(evaluation.delivery_id, stored.run_id)
        log.info("hook_request_duplicate", hook_id=str(hook.id), delivery_id=item.delivery_id)
        data = {"message": message, "run_id": run_id, "duplicate": True, "errors": None}
        return _json(200, data, request_id, headers)
    log.debug("run_enqueued", hook_id=str(hook.id), run_id=run_id)
    return _json(
        202, {"message": evaluation.message, "run_id": run_id, "errors": None}, request_id, headers
    )


async def _read_body(request: web.Request, length: int | None, limit: int) -> bytes | None:
    """The raw body, read once; None when it turns out larger than ``limit``."""
    if length is not None:
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():  # chunked: no length known up front
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Evaluation:
    return Evaluation(
        413, REJECTED, f"request body is larger than the limit of {limit} bytes", reason="too_large"
    )


@functools.lru_cache(maxsize=4096)
def _client_ip(remote: str | None) -> str | None:
    """The peer address as PostgreSQL ``inet`` accepts it (no IPv6 zone), or None."""
    if not remote:
        return None
    try:
        return str(ipaddress.ip_address(remote.partition("%")[0]))
    except ValueError:
        return None


def _history_headers(headers: Mapping[str, str], redacted: frozenset[str]) -> dict[str, str]:
    """Request headers for the history: lower-case names, secret-bearing values redacted."""
    stored: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in redacted:
            value = _REDACTED
        elif not value.isascii():
            value = storable_text(value)
        stored[key] = f"{stored[key]}, {value}" if key in stored else value
    return stored


def _rejected(
    hook: CompiledHook, evaluation: Evaluation, request_id: str, body_unread: bool
) -> web.Response:
    log.info(
        "hook_request_rejected",
        hook_id=str(hook.id),
        status=evaluation.status,
        reason=evaluation.reason,
        delivery_id=evaluation.delivery_id,
    )
    response = _json(
        evaluation.status,
        {"message": evaluation.message, "errors": evaluation.errors},
        request_id,
    )
    if body_unread and evaluation.status == 413:
        response.force_close()  # don't drain a body we refused to read
    return response


def _unavailable(ingest: _Ingest, request_id: str, message: str) -> web.Response:
    log.warning("hook_request_unavailable", reason=message)
    return _json(
        503, {"message": message, "errors": None}, request_id, {"Retry-After": ingest.retry_after}
    )


def _json(
    status: int,
    data: dict[str, Any],
    request_id: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    response = web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )
    response.headers["X-Request-Id"] = request_id
    return response


async def ingest_services(app: web.Application) -> AsyncIterator[None]:
    """Per-process ingest services: the hook cache (with its listener) and the batcher.

    On shutdown the batcher writes everything still queued before the pool closes.
    """
    config, db = app[appkeys.CONFIG], app[appkeys.DATABASE]
    services = app[appkeys.SERVICES]
    hooks = HookCache(db, config)
    await hooks.start()
    batcher = RunBatcher(db, config)
    batcher.start()
    services[HOOK_CACHE] = hooks
    services[RUN_BATCHER] = batcher
    services[_INGEST] = _Ingest(
        hooks, batcher, config.server.max_body_bytes, str(config.batch.retry_after)
    )
    try:
        yield
    finally:
        await batcher.close()
        await hooks.close()
        for key in (_INGEST, RUN_BATCHER, HOOK_CACHE):
            services.pop(key, None)
