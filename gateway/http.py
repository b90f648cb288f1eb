"""HTTP helpers shared by both route tables: JSON responses and the error body shape."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

JSON_TYPE = "application/json"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson (datetimes, UUIDs and dataclasses included)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type=JSON_TYPE,
        headers=headers,
    )


def error_body(message: str, errors: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The error body used everywhere: ``{"message": ..., "errors": {field: [..]} | null}``."""
    return {
        "message": message,
        "errors": {k: list(v) for k, v in errors.items()} if errors else None,
    }


def error_response(
    status: int,
    message: str,
    errors: Mapping[str, Sequence[str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error response."""
    return json_response(error_body(message, errors), status=status, headers=headers)


class ApiError(Exception):
    """Raised by views to answer with a JSON error; rendered by the management wrapper."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Mapping[str, Sequence[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.errors, self.headers)


# A 422 names at most this many fields (and says how many more): a body of a million unknown
# keys must not be answered with a list of them (a 100 MB answer, seconds of the event loop).
MAX_LISTED_FIELDS = 50
MAX_FIELD_NAME_CHARS = 200


def _field_name(name: str) -> str:
    return name if len(name) <= MAX_FIELD_NAME_CHARS else name[: MAX_FIELD_NAME_CHARS - 1] + "…"


class ValidationFailed(ApiError):
    """422 naming the bad fields: the first :data:`MAX_LISTED_FIELDS` of them, and how many more
    there are (``more``: problems a validator counted without collecting them)."""

    def __init__(
        self, errors: Mapping[str, Sequence[str]], message: str | None = None, *, more: int = 0
    ) -> None:
        listed: dict[str, list[str]] = {}
        for key, messages in errors.items():
            if len(listed) == MAX_LISTED_FIELDS:
                break
            listed.setdefault(_field_name(key), []).extend(messages)
        more += len(errors) - min(len(errors), MAX_LISTED_FIELDS)
        if message is None:
            fields = ", ".join(listed)
            message = f"The given data was invalid: {fields}"
            if more:
                message += f" and {more} more"
        super().__init__(422, message, listed)


def body_deadline(seconds_per_mib: float, length: int | None, limit: int) -> float:
    """Seconds a request body may take to arrive: ``[server] body_timeout`` for each MiB it
    declares (its Content-Length, else the largest allowed), at least once: a slow client on a
    large legitimate body is not cut off, one trickling a small body is."""
    size = limit if length is None else length
    return seconds_per_mib * max(1, math.ceil(size / 1_048_576))


def short_body_message(length: int | None) -> str:
    """The 400 message for a body whose connection closed before it was complete (a body ends
    early only with its connection): ``length`` is its Content-Length, None when chunked."""
    if length is None:
        return "request body ended before its last chunk"
    return "request body ended before Content-Length bytes"


# The 400 message for a chunked body that does not parse (a chunk-size line that is not
# hexadecimal, a chunk longer than its size). aiohttp's Python parser raises TransferEncodingError
# from the body read; its C parser never tells the handler, whose read then waits for the body
# deadline (README, Operations: "A malformed chunked body").
MALFORMED_CHUNKS_MESSAGE = "request body is not valid chunked transfer encoding"
# The interim answer to ``Expect: 100-continue`` (HTTP/1.1 only), sent before a body is read.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def unsupported_expectation(headers: Mapping[str, str]) -> str | None:
    """The 417 message for an ``Expect`` header other than 100-continue (the only expectation
    HTTP defines), or None: both route tables answer it in the JSON error shape, where
    aiohttp's own answer is plain text."""
    expect = headers.get("Expect", "")
    if expect.strip().lower() == "100-continue":
        return None
    return f"Expect {expect[:40]!r} is not supported: only 100-continue is"


async def send_continue(request: web.Request) -> None:
    """Tell a client that holds its body back (``Expect: 100-continue``) to send it."""
    await request.writer.write(CONTINUE)
    request.writer.output_size = 0  # as aiohttp's own: the response has not begun


def media_type(content_type: str) -> str:
    """The type/subtype of a Content-Type value, lower-cased, without its parameters."""
    return content_type.partition(";")[0].strip().lower()


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type value names JSON: application/json or any +json type (with
    parameters, any case), or is blank."""
    mime = media_type(content_type)
    return not mime or mime == "application/json" or mime.endswith("+json")


def compressed_body_problem(headers: Mapping[str, str]) -> str | None:
    """The 415 message for a body sent with a ``Content-Encoding`` other than identity, or None.

    The listeners read bodies as sent (gateway.app.HANDLER_OPTIONS): ingest because the
    signature covers the bytes sent and a small compressed body can expand far past
    max_body_bytes (webhook senders send bodies uncompressed), the management API likewise (it
    would otherwise say "not JSON")."""
    encoding = headers.get("Content-Encoding")
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return None
    return f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed"


# An X-Request-Id the gateway echoes (and logs) rather than replacing with its own.
REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is sane, else a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    return given if REQUEST_ID_OK.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def routing_errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn the router's own 404/405 into the JSON error shape (no work on matched routes)."""
    exc = request.match_info.http_exception
    if exc is None:
        return await handler(request)
    headers = {"X-Request-Id": request_id_for(request)}
    if "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    if exc.status == 405:
        return error_response(
            405, f"method {request.method} is not allowed on {request.path}", headers=headers
        )
    return error_response(
        exc.status, f"no route for {request.method} {request.path}", headers=headers
    )
