"""The wrapper every management view runs in: request id, authentication, error translation.

It is applied per route rather than as an application middleware, so the ingest route sharing
the same listener never pays for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import HttpVersion11, web

from gateway import accounts, appkeys, metrics
from gateway.exceptions import (
    AlreadyExists,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    NotFound,
    OperationTimedOut,
    Overloaded,
    TooManyAttempts,
    TransientConflict,
)
from gateway.http import (
    ApiError,
    error_response,
    request_id_for,
    send_continue,
    unsupported_expectation,
)
from gateway.logs import get_logger
from gateway.models import User

log = get_logger(__name__)

View = Callable[[web.Request], Awaitable[web.StreamResponse]]

USER_KEY: web.RequestKey[User] = web.RequestKey("user", User)
# The bearer token that authenticated the request, as _authenticate read it.
_BEARER_KEY: web.RequestKey[str] = web.RequestKey("bearer", str)


def current_user(request: web.Request) -> User:
    """The authenticated user of a view that requires authentication."""
    user: User = request[USER_KEY]
    return user


async def _authenticate(request: web.Request) -> User:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise InvalidToken("missing Authorization header: expected 'Bearer <token>'")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("malformed Authorization header: expected 'Bearer <token>'")
    request[_BEARER_KEY] = token
    return await accounts.authenticate_bearer(request.app[appkeys.DATABASE], token)


def _translate(exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, InvalidToken):
        return error_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, InvalidCredentials):
        return error_response(401, str(exc))
    if isinstance(exc, Forbidden):
        return error_response(403, str(exc))
    if isinstance(exc, NotFound):
        return error_response(404, str(exc))
    if isinstance(exc, AlreadyExists | Conflict):
        return error_response(409, str(exc))
    if isinstance(exc, TooManyAttempts):
        return error_response(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, OperationTimedOut):  # rolled back, nothing written; says what and why
        return error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TransientConflict):  # rolled back, nothing written
        return error_response(
            503, "a concurrent change conflicted with this one; retry", headers={"Retry-After": "1"}
        )
    if isinstance(exc, DatabaseUnavailable):
        return error_response(
            503, "the database is unavailable; retry later", headers={"Retry-After": "1"}
        )
    if isinstance(exc, Overloaded):
        return error_response(503, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, web.HTTPException):
        return error_response(exc.status, exc.reason)
    log.exception("management_request_failed", error_type=type(exc).__name__)
    return error_response(500, "internal error; see the gateway log for this request id")


def endpoint(*, auth: bool = True) -> Callable[[View], View]:
    """Wrap a management view: bind request_id, authenticate, render errors as JSON."""

    def wrap(view: View) -> View:
        @functools.wraps(view)
        async def handler(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            request_id = request_id_for(request)
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                if auth:
                    user = await _authenticate(request)
                    request[USER_KEY] = user
                    structlog.contextvars.bind_contextvars(user_id=user.id)
                response = await view(request)
            except Exception as exc:
                response = _translate(exc)
            if response.status == 408:  # the body may still be arriving: end the connection
                response.force_close()
            return _finished(request, response, request_id, started)

        return handler

    return wrap


def bearer_token(request: web.Request) -> str:
    """The bearer token that authenticated the request (of a view that requires it)."""
    return request[_BEARER_KEY]


def _finished(
    request: web.Request, response: web.StreamResponse, request_id: str, started: float
) -> web.StreamResponse:
    """``response`` with the headers every management answer carries, counted."""
    response.headers["X-Request-Id"] = request_id
    # Tokens, secrets shown once, user data: no cache on the way may keep any of it
    # (RFC 6749 §5.1 asks it of token responses).
    response.headers.setdefault("Cache-Control", "no-store")
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.record_management(request.method, route, response.status, time.perf_counter() - started)
    return response


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """The ``Expect`` handler of management routes (aiohttp runs it before the view): a 100
    Continue for 100-continue, as aiohttp's default does, and for any other expectation a 417
    in the JSON error shape, where aiohttp's default answers plain text."""
    started = time.perf_counter()
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no 100 (aiohttp's rule too): handled as usual
    message = unsupported_expectation(request.headers)
    if message is None:
        await send_continue(request)
        return None
    response = _finished(request, error_response(417, message), request_id_for(request), started)
    if not request.content.is_eof():  # the body the client holds back will not come
        response.force_close()
    return response


def with_expect_handler(table: web.RouteTableDef) -> list[web.AbstractRouteDef]:
    """The routes of ``table``, each with the management ``Expect`` handler (:func:`_expect`)
    unless it names its own."""
    return [
        web.RouteDef(
            route.method, route.path, route.handler, {"expect_handler": _expect, **route.kwargs}
        )
        if isinstance(route, web.RouteDef)
        else route
        for route in table
    ]


def require_admin(request: web.Request) -> User:
    """The current user when they are an administrator; 403 otherwise."""
    user = current_user(request)
    if not user.is_admin:
        raise ApiError(403, "this action requires an administrator")
    return user
