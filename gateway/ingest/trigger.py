"""``POST /hooks/incoming/{hook_id}``: the hot path (DESIGN.md §3).

Cheapest rejection first: 404/403 from the in-process hook cache, then the hook's own limits
(403 for a client address outside its ``allowed_ips``, 429 + ``Retry-After`` over its rate),
413 before reading, then one read of the raw body and
:func:`gateway.ingest.evaluation.evaluate` (401, 415, 400, skipped, 422). Every other request to
a known hook is recorded in ``hook_requests`` through the group-commit batcher; an accepted one
also queues a run in the same transaction, and its 202 (or the 200 of a repeated delivery) is
sent only after that commit. The 403/429 of the limits are not recorded, so a flood costs the
database nothing; they are counted in the metrics. No middleware runs here: each response is
counted once (gateway.metrics) and the client address is the one behind trusted proxies
(gateway.ingest.client_ip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import TransferEncodingError

from gateway import appkeys, metrics
from gateway.config import Config
from gateway.exceptions import DatabaseUnavailable, Overloaded, TransientConflict
from gateway.http import (
    MALFORMED_CHUNKS_MESSAGE,
    REQUEST_ID_OK,
    body_deadline,
    compressed_body_problem,
    request_id_for,
    send_continue,
    short_body_message,
    unsupported_expectation,
)
from gateway.ingest.batcher import (
    DUPLICATE,
    RUN_BATCHER,
    PendingRequest,
    RequestNotStored,
    RunBatcher,
    duplicate_message,
)
from gateway.ingest.client_ip import ClientAddressResolver
from gateway.ingest.evaluation import (
    ACCEPTED,
    MAX_DELIVERY_ID_LENGTH,
    REJECTED,
    SKIPPED,
    CompiledHook,
    Evaluation,
    delivery_id_of,
    evaluate,
    storable_text,
)
from gateway.ingest.hook_cache import HOOK_CACHE, HookCache
from gateway.ingest.ids import new_id
from gateway.ingest.limits import RateLimiter, retry_after_header
from gateway.log_throttle import LogThrottle
from gateway.logs import get_logger
from gateway.reload import CONFIG_HOLDER, ConfigHolder, live_config, touches
from gateway.security.sensitive_headers import REDACTED, recorded_name

log = get_logger(__name__)
routes = web.RouteTableDef()

_INGEST = "ingest"  # key in app[appkeys.SERVICES]
# hook_requests.body_size is an integer column. A body refused unread (413, inactive hook) is
# recorded with the size its Content-Length claimed, which a client can set to anything: one
# over 2**31 - 1 would fail the whole batch's statement (each request then retried alone).
MAX_RECORDED_SIZE = 2**31 - 1
_NOT_FOUND = orjson.dumps({"message": "incoming hook not found", "errors": None})
# Metric outcomes besides the evaluation's (accepted, skipped, rejected) and "duplicate".
UNAVAILABLE, FAILED, RATE_LIMITED, FORBIDDEN = "unavailable", "error", "rate_limited", "forbidden"
# A 503 is logged once per reason and interval, not per request (gateway.log_throttle): an
# outage or a full queue answers every request so, and the metrics count each one. So is a 404
# for an unknown hook: anyone who can reach the port can send those, as fast as they like.
FLOOD_LOG_INTERVAL = 10.0
_UNKNOWN_HOOK = "404 unknown_hook"  # its key in the throttle, beside the 503s' reasons


@dataclass(frozen=True, slots=True)
class _Ingest:
    """What the handler needs, built from the config in force (rebuilt on SIGHUP reload)."""

    hooks: HookCache
    batcher: RunBatcher
    limiter: RateLimiter  # kept across reloads: its buckets are the senders' state
    flood_log: LogThrottle  # 503s and 404s (see FLOOD_LOG_INTERVAL); kept across reloads too
    resolver: ClientAddressResolver
    max_body: int
    retry_after: str
    body_timeout: float

    @classmethod
    def build(
        cls,
        config: Config,
        hooks: HookCache,
        batcher: RunBatcher,
        limiter: RateLimiter,
        flood_log: LogThrottle,
    ) -> _Ingest:
        return cls(
            hooks,
            batcher,
            limiter,
            flood_log,
            ClientAddressResolver(config.server.trusted_proxies),
            config.server.max_body_bytes,
            str(config.batch.retry_after),
            config.server.body_timeout,
        )


# Set on a request whose client holds its body back until a "100 Continue" (Expect): the 100
# is sent by _read_body, once the body is to be read, never for a request refused unread.
_CONTINUE_PENDING: web.RequestKey[bool] = web.RequestKey("continue_pending", bool)


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """The route's ``Expect`` handler (aiohttp's default sends the 100 before the handler runs,
    which has the client send a body about to be refused: over the size limit, to an unknown
    or inactive hook...). Only requests with an ``Expect`` header come here, and they are
    answered here, so that the others pay nothing for it."""
    started = time.perf_counter()
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no 100 (aiohttp's rule too): handled as usual
    message = unsupported_expectation(request.headers)
    if message is not None:
        response: web.StreamResponse = _json(
            417, {"message": message, "errors": None}, request_id_for(request)
        )
        metrics.record_ingest(REJECTED, 417, time.perf_counter() - started)
    else:
        request[_CONTINUE_PENDING] = True
        response = await trigger_incoming_hook(request)
    if request.get(_CONTINUE_PENDING, True) and not request.content.is_eof():
        # Answered without the body, which the client still holds back: it will not come, so
        # the connection cannot carry another request.
        response.force_close()
    return response


@routes.post("/hooks/incoming/{hook_id}", expect_handler=_expect)
async def trigger_incoming_hook(request: web.Request) -> web.Response:
    """Verify, evaluate and durably enqueue one webhook delivery."""
    started = time.perf_counter()
    try:
        response, outcome = await _trigger(request, started)
    except Exception:
        # A bug must still answer in the JSON shape, counted, with an id to find its log line
        # (aiohttp's own 500 is bare text). Not a 2xx: the sender retries, and a delivery id
        # makes that retry safe.
        request_id = new_id().hex
        log.exception(
            "hook_request_failed", hook_id=request.match_info["hook_id"][:64], request_id=request_id
        )
        message = "the request could not be handled; see the gateway log"
        response, outcome = _json(500, {"message": message, "errors": None}, request_id), FAILED
    metrics.record_ingest(outcome, response.status, time.perf_counter() - started)
    return response


async def _trigger(request: web.Request, started: float) -> tuple[web.Response, str]:
    """The response and its metric outcome (see the module docstring)."""
    ingest: _Ingest = request.app[appkeys.SERVICES][_INGEST]
    row_id = new_id()
    given = request.headers.get("X-Request-Id")
    request_id = given if given and REQUEST_ID_OK.fullmatch(given) else row_id.hex
    # request_id is passed to each log call instead of bound in a contextvar: most requests log
    # nothing, and binding costs every request (the management API binds it, see framework.py).
    raw_id = request.match_info["hook_id"]

    try:
        hook = await ingest.hooks.get(raw_id)
    except DatabaseUnavailable:
        return _unavailable(ingest, request_id, "the database is unavailable; retry later")
    if hook is None:
        _log_unknown_hook(ingest, raw_id, request_id)
        return web.Response(
            body=_NOT_FOUND, status=404, content_type="application/json",
            headers={"X-Request-Id": request_id},
        ), REJECTED  # fmt: skip

    client_ip = ingest.resolver.resolve_headers(request.remote, request.headers)[0]
    if hook.active:
        # Hooks without limits pay these two attribute checks only.
        if hook.allowlist is not None and not hook.allowlist.allows(client_ip):
            return _forbidden(hook, client_ip, request_id), FORBIDDEN
        if hook.rate > 0:
            allowed, wait = ingest.limiter.check(hook.id, hook.rate, hook.burst)
            if not allowed:
                return _rate_limited(hook, wait, request_id), RATE_LIMITED

    evaluation: Evaluation | None = None
    body: bytes | None = None
    length = request.content_length
    compressed = compressed_body_problem(request.headers)
    if not hook.active:
        evaluation = Evaluation(403, REJECTED, "incoming hook is inactive", reason="inactive")
    elif length is not None and length > ingest.max_body:
        evaluation = _too_large(ingest.max_body)
    elif compressed is not None:
        evaluation = Evaluation(415, REJECTED, compressed, reason="content_encoding")
    else:
        try:
            body = await _read_body(request, length, ingest.max_body, ingest.body_timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            # A body that ends early ends with its connection: aiohttp then raises the
            # ConnectionResetError the connection was lost with. Nobody reads this answer, but
            # the history records it, and it is the sender's doing, not the gateway's error.
            evaluation = Evaluation(400, REJECTED, short_body_message(length), reason="short_body")
        except TransferEncodingError:  # the sender's bad framing, not the gateway's error
            evaluation = Evaluation(
                400, REJECTED, MALFORMED_CHUNKS_MESSAGE, reason="bad_chunked_body"
            )
        except TimeoutError:  # answered with Connection: close (see _rejected)
            deadline = body_deadline(ingest.body_timeout, length, ingest.max_body)
            evaluation = Evaluation(
                408,
                REJECTED,
                f"request body not received within {deadline:g} s",
                reason="body_timeout",
            )
        else:
            if body is None:
                evaluation = _too_large(ingest.max_body)
    if evaluation is None:
        assert body is not None
        evaluation = evaluate(hook, request.headers, body)
    else:  # refused unread: the id as a refusal after the read records it (cut to its limit)
        delivery_id = delivery_id_of(hook, request.headers)
        evaluation.delivery_id = delivery_id and delivery_id[:MAX_DELIVERY_ID_LENGTH]

    item = PendingRequest(
        id=row_id,
        hook_id=hook.id,
        pipeline_id=hook.pipeline_id,
        client_ip=client_ip,
        headers=_history_headers(request.headers, hook.redacted_headers),
        body=body,
        body_size=len(body) if body is not None else min(length or 0, MAX_RECORDED_SIZE),
        outcome=evaluation.outcome,
        status_code=evaluation.status,
        message=evaluation.history_message(),
        delivery_id=evaluation.delivery_id,
        started=started,
    )
    if evaluation.outcome == ACCEPTED:
        item.run_id = new_id()
        item.variables = evaluation.variables
    try:
        stored = await ingest.batcher.submit(item)
    except (Overloaded, DatabaseUnavailable, RequestNotStored) as exc:
        if evaluation.outcome == REJECTED:
            # The answer does not depend on the history row; losing it must not turn a 4xx
            # into a 503 that the sender would retry.
            log.warning(
                "hook_request_history_lost",
                hook_id=str(hook.id),
                error=str(exc),
                request_id=request_id,
            )
            return _rejected(hook, evaluation, request_id, body is None), _rejected_outcome(
                evaluation
            )
        if isinstance(exc, RequestNotStored):
            return _json(500, {"message": str(exc), "errors": None}, request_id), FAILED
        if isinstance(exc, TransientConflict):  # a lock or deadlock: the database answered
            message = "a concurrent change held up or conflicted with this write; retry later"
            return _unavailable(ingest, request_id, message)
        if isinstance(exc, DatabaseUnavailable):
            return _unavailable(ingest, request_id, "the database is unavailable; retry later")
        return _unavailable(ingest, request_id, str(exc))

    if evaluation.outcome == REJECTED:
        return _rejected(hook, evaluation, request_id, body is None), _rejected_outcome(evaluation)
    if evaluation.outcome == SKIPPED:
        log.debug(
            "hook_request_skipped",
            hook_id=str(hook.id),
            reason=evaluation.reason,
            request_id=request_id,
        )
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
        ), SKIPPED
    run_id = None if stored.run_id is None else str(stored.run_id)
    headers = {"X-Run-Id": run_id} if run_id is not None else None
    if stored.duplicate:
        message = duplicate_message(evaluation.delivery_id, stored.run_id)
        log.info(
            "hook_request_duplicate",
            hook_id=str(hook.id),
            delivery_id=item.delivery_id,
            request_id=request_id,
        )
        data = {"message": message, "run_id": run_id, "duplicate": True, "errors": None}
        return _json(200, data, request_id, headers), DUPLICATE
    log.debug("run_enqueued", hook_id=str(hook.id), run_id=run_id, request_id=request_id)
    return _json(
        202, {"message": evaluation.message, "run_id": run_id, "errors": None}, request_id, headers
    ), ACCEPTED


async def _read_body(
    request: web.Request, length: int | None, limit: int, per_mib: float
) -> bytes | None:
    """The raw body, read once; None when it turns out larger than ``limit``. TimeoutError
    when it has not all arrived in time (:func:`body_deadline` of ``per_mib`` seconds)."""
    if not request.content.is_eof():  # not all here yet (the common case skips the timer)
        if request.get(_CONTINUE_PENDING):  # the client waits for this before it sends it
            request[_CONTINUE_PENDING] = False
            await send_continue(request)
        async with asyncio.timeout(body_deadline(per_mib, length, limit)):
            return await _read_body_now(request, length, limit)
    return await _read_body_now(request, length, limit)


async def _read_body_now(request: web.Request, length: int | None, limit: int) -> bytes | None:
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


def _history_headers(headers: Mapping[str, str], redacted: frozenset[str]) -> dict[str, str]:
    """Request headers for the history: lower-case names, the values of credentials and
    signatures redacted (gateway.security.sensitive_headers, and the hook's own ``redacted``
    headers)."""
    stored: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}  # joined once at the end: not quadratic in repeats
    for name, value in headers.items():
        key, sensitive = recorded_name(name)
        if sensitive or key in redacted:
            value = REDACTED
        elif not value.isascii():
            value = storable_text(value)
        if key in stored:
            repeated.setdefault(key, [stored[key]]).append(value)
        else:
            stored[key] = value
    for key, values in repeated.items():
        stored[key] = ", ".join(values)
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
        request_id=request_id,
    )
    response = _json(
        evaluation.status,
        {"message": evaluation.message, "errors": evaluation.errors},
        request_id,
    )
    if evaluation.status == 401 and hook.verifier is not None:
        response.headers["WWW-Authenticate"] = hook.verifier.challenge
    if (body_unread and evaluation.status == 413) or evaluation.status == 408:
        response.force_close()  # don't drain a body we refused to read, or one still arriving
    return response


def _forbidden(hook: CompiledHook, client_ip: str | None, request_id: str) -> web.Response:
    shown = client_ip or "unknown"
    # debug, like 429s: a flood from outside the allowlist must not flood the log either.
    log.debug(
        "hook_request_rejected",
        hook_id=str(hook.id),
        status=403,
        reason="ip_not_allowed",
        client_ip=shown,
        request_id=request_id,
    )
    message = f"client address {shown} is not allowed to call this hook"
    return _json(403, {"message": message, "errors": None}, request_id)


def _rate_limited(hook: CompiledHook, wait: float, request_id: str) -> web.Response:
    # Debug only: a flood must not turn into a flood of log lines (metrics count these).
    log.debug(
        "hook_request_rate_limited",
        hook_id=str(hook.id),
        retry_in=round(wait, 3),
        request_id=request_id,
    )
    retry_after = retry_after_header(wait)
    message = f"rate limit of this hook exceeded; retry after {retry_after} seconds"
    return _json(
        429, {"message": message, "errors": None}, request_id, {"Retry-After": retry_after}
    )


def _log_unknown_hook(ingest: _Ingest, raw_id: str, request_id: str) -> None:
    suppressed = ingest.flood_log.take(_UNKNOWN_HOOK)
    fields = {"hook_id": raw_id[:64], "status": 404, "reason": "unknown_hook"}
    if suppressed is None:
        log.debug("hook_request_rejected", **fields, request_id=request_id)
    else:
        log.info(
            "hook_request_rejected",
            **fields,
            request_id=request_id,
            suppressed=suppressed,
            interval=FLOOD_LOG_INTERVAL,
        )


def _unavailable(ingest: _Ingest, request_id: str, message: str) -> tuple[web.Response, str]:
    suppressed = ingest.flood_log.take(message)
    if suppressed is None:
        log.debug("hook_request_unavailable", reason=message, request_id=request_id)
    else:
        log.warning(
            "hook_request_unavailable",
            reason=message,
            request_id=request_id,
            suppressed=suppressed,
            interval=FLOOD_LOG_INTERVAL,
        )
    return _json(
        503, {"message": message, "errors": None}, request_id, {"Retry-After": ingest.retry_after}
    ), UNAVAILABLE


def _rejected_outcome(evaluation: Evaluation) -> str:
    # The metric's outcome (README, Metrics): a 5xx is the gateway's error (a hook whose stored
    # definition cannot be opened, e.g. a secret sealed with a key this host lacks), not the
    # sender's mistake; the history still records it as rejected.
    return FAILED if evaluation.status >= 500 else REJECTED


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

    They follow SIGHUP reloads (gateway.reload). On shutdown the batcher writes everything still
    queued before the pool closes.
    """
    db, services = app[appkeys.DATABASE], app[appkeys.SERVICES]
    holder: ConfigHolder | None = services.get(CONFIG_HOLDER)
    config = live_config(app)
    hooks = HookCache(db, config)
    await hooks.start()
    batcher = RunBatcher(db, config)
    batcher.start()
    limiter = RateLimiter()
    flood_log = LogThrottle(FLOOD_LOG_INTERVAL)
    services[HOOK_CACHE] = hooks
    services[RUN_BATCHER] = batcher
    services[_INGEST] = _Ingest.build(config, hooks, batcher, limiter, flood_log)

    def reconfigure(old: Config, new: Config, changed: frozenset[str]) -> None:
        # Compiled hooks hold decrypted secrets, the timestamp tolerance and resolved limits.
        if touches(changed, "hooks", "limits", "security"):
            hooks.reconfigure(new)
        if touches(changed, "batch", "hooks.store_bodies"):
            batcher.reconfigure(new)
        services[_INGEST] = _Ingest.build(new, hooks, batcher, limiter, flood_log)

    unsubscribe = holder.on_reload(reconfigure) if holder is not None else None
    try:
        yield
    finally:
        if unsubscribe is not None:
            unsubscribe()
        await batcher.close()
        await hooks.close()
        for key in (_INGEST, RUN_BATCHER, HOOK_CACHE):
            services.pop(key, None)
