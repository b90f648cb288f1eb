"""Reading request bodies and query strings: clear 400/422 errors naming each bad field."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import TransferEncodingError
from yarl import URL

from gateway.http import (
    MALFORMED_CHUNKS_MESSAGE,
    MAX_LISTED_FIELDS,
    ApiError,
    ValidationFailed,
    body_deadline,
    compressed_body_problem,
    is_json_media_type,
    media_type,
    short_body_message,
)
from gateway.ingest.client_ip import ClientAddressResolver
from gateway.json_numbers import json_integer
from gateway.reload import live_config
from gateway.unknown_fields import unknown_keys

MAX_PER_PAGE = 100


# Largest management request body by default: they are small JSON documents. A view may allow
# more (an executor's status report carries process output, of which only the tail is kept).
MAX_BODY_BYTES = 1024 * 1024


async def read_body(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The raw body as sent, or a 415 (compressed, or declared as a type that cannot hold JSON
    text), 413 naming the limit or 408 (not arrived in time, see :func:`body_deadline`).

    Read here rather than by ``request.read()``, whose limit is the application's (the ingest
    one's max_body_bytes when the management API shares its listener) and whose 413 names none.
    """
    compressed = compressed_body_problem(request.headers)
    if compressed is not None:
        raise ApiError(415, compressed)
    too_large = ApiError(413, f"request body is larger than {max_bytes} bytes, the most taken here")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise too_large
    seconds = body_deadline(live_config(request.app).server.body_timeout, length, max_bytes)
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await request.content.read(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
    except TimeoutError:
        raise ApiError(408, f"request body not received within {seconds:g} s") from None
    except (asyncio.IncompleteReadError, ConnectionError):
        # A body ends early only with its connection (aiohttp raises the ConnectionResetError it
        # was lost with): the client's doing, not the gateway's error. Nobody reads this answer.
        raise ApiError(400, short_body_message(length)) from None
    except TransferEncodingError:  # the client's bad framing, not the gateway's error
        raise ApiError(400, MALFORMED_CHUNKS_MESSAGE) from None
    declared = request.headers.get("Content-Type")
    if body.strip() and declared is not None and not _may_hold_json(declared):
        # A form or multipart body is a client mistake worth naming (it was read as JSON). An
        # empty body has nothing to misread, whatever a client library declares for it.
        raise ApiError(415, f"unsupported content type {declared[:100]!r}: send application/json")
    return bytes(body)


# Invisible characters with no place in a name: the zero-width space and no-break space, word
# joiner and invisible operators, the bidi marks, embeddings, overrides and isolates, the
# Mongolian vowel separator. (Zero-width joiner and non-joiner, U+200D and U+200C, are part of
# ordinary spelling in several scripts and of emoji sequences: allowed.)
_HIDDEN = frozenset(
    (
        0x061C,
        0x180E,
        0x200B,
        0x200E,
        0x200F,
        0xFEFF,
        *range(0x202A, 0x202F),
        *range(0x2060, 0x2065),
        *range(0x2066, 0x206A),
    )
)


def _hidden(character: str) -> bool:
    return unicodedata.category(character) == "Cc" or ord(character) in _HIDDEN


def _may_hold_json(content_type: str) -> bool:
    """A JSON type, or one a JSON text may be sent as: text/plain (what fetch() and many HTTP
    libraries declare for a string body) and application/octet-stream (for raw bytes)."""
    return is_json_media_type(content_type) or (
        media_type(content_type) in ("text/plain", "application/octet-stream")
    )


async def read_json_object(
    request: web.Request,
    *,
    nul_allowed: Iterable[str] = (),
    max_bytes: int = MAX_BODY_BYTES,
    replaced: list[str] | None = None,
) -> dict[str, Any]:
    """The body as a JSON object (see :func:`parse_json_object`), read by :func:`read_body`."""
    raw = await read_body(request, max_bytes)
    return parse_json_object(raw, nul_allowed=nul_allowed, replaced=replaced)


async def read_optional_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (see :func:`read_json_object`) of an endpoint whose body is
    optional; ``{}`` when there is none, in any form a client sends that: no body, a chunked
    one of no bytes (Node's http module sends it for a POST without a body) or white space."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    return parse_json_object(raw)


def parse_json_object(
    raw: bytes, *, nul_allowed: Iterable[str] = (), replaced: list[str] | None = None
) -> dict[str, Any]:
    """``raw`` as a JSON object, or a 400 that says what is wrong with it.

    A string holding U+0000 anywhere in the body (keys included) is refused with 422 naming its
    field: PostgreSQL text and jsonb cannot store it, so it would otherwise fail the write with
    a 500. ``nul_allowed`` names top-level members whose view strips NULs itself.

    An unpaired surrogate escape (``"\\udcff"``) is not Unicode, and is a 400 too, unless
    ``replaced`` is given: each is then read as U+FFFD, and the top-level members that held one
    are appended to ``replaced``. (A Python program that decodes bytes with ``surrogateescape``
    and ``json.dumps`` the text sends exactly that for each byte that is not UTF-8.)
    """
    if not raw.strip():
        raise ApiError(400, "request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if replaced is None or "surrogate" not in str(exc):
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
        body = _loads_replacing_surrogates(raw, replaced)
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_json_type(body)}")
    if b"\\u0000" in raw:  # cheap pre-check: JSON can only spell NUL as an escape
        skip = set(nul_allowed)
        found = (
            f for key, value in body.items() if key not in skip for f in _nul_fields(key, value)
        )
        # The search stops past the most a 422 names: a body may hold a million such strings.
        fields = list(itertools.islice(found, MAX_LISTED_FIELDS + 1))
        if fields:
            message = "must not contain the NUL character (\\u0000)"
            errors = {field: [message] for field in fields[:MAX_LISTED_FIELDS]}
            if len(fields) > MAX_LISTED_FIELDS:
                named = ", ".join(errors)
                raise ValidationFailed(
                    errors, f"The given data was invalid: {named} and more (the first found)"
                )
            raise ValidationFailed(errors)
    return body


_SURROGATE = re.compile("[\ud800-\udfff]")


def _loads_replacing_surrogates(raw: bytes, replaced: list[str]) -> Any:
    """``raw`` read by the standard library (which takes unpaired surrogate escapes, where
    orjson refuses them), each unpaired surrogate replaced by U+FFFD; otherwise as strict as
    orjson: no NaN or Infinity, a 400 for what is not JSON or nested too deep."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: depth limit exceeded") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and the constants
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if isinstance(body, dict):
        body = {
            clean: _replace_surrogates(value, clean, replaced)
            for clean, value in ((_without_surrogates(k), v) for k, v in body.items())
        }
    return body


def _replace_surrogates(value: Any, field: str, replaced: list[str]) -> Any:
    if isinstance(value, str):
        clean = _without_surrogates(value)
        if clean is not value and field not in replaced:
            replaced.append(field)
        return clean
    if isinstance(value, dict):
        return {
            _without_surrogates(k): _replace_surrogates(v, field, replaced)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_replace_surrogates(item, field, replaced) for item in value]
    return value


def _without_surrogates(text: str) -> str:
    """``text`` itself when it holds no surrogate, else a copy with U+FFFD for each."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def _nul_fields(path: str, value: Any) -> Iterator[str]:
    """Dotted paths, below and including ``path``, whose key or string value holds U+0000
    (found one at a time: the caller stops when it has enough)."""
    if "\x00" in path:
        yield path
    elif isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_fields(f"{path}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_fields(f"{path}.{i}", item)


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class Fields:
    """Collects every problem in a JSON object before answering 422 once."""

    def __init__(self, body: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
        self.body = body
        self.prefix = prefix
        self.errors: dict[str, list[str]] = {}
        allowed_set = set(allowed)
        # more: problems counted but not listed (see ValidationFailed)
        names, self.more = unknown_keys(body, allowed_set)
        for key in names:
            self.add(key, f"unknown field; allowed: {', '.join(sorted(allowed_set))}")

    def add(self, key: str, message: str) -> None:
        self.errors.setdefault(self.prefix + key, []).append(message)

    def merge(self, errors: Mapping[str, list[str]], more: int = 0) -> None:
        """Add another validator's ``errors`` (and its count of problems not listed)."""
        self.more += more
        for key, messages in errors.items():
            self.errors.setdefault(key, []).extend(messages)

    def string(
        self,
        key: str,
        *,
        required: bool = True,
        default: str | None = None,
        max_length: int = 255,
        min_length: int = 1,
        choices: Iterable[str] | None = None,
        strip: bool = True,
    ) -> Any:
        """A string field, stripped unless ``strip=False`` (passwords are taken as given)."""
        if key not in self.body or self.body[key] is None:
            if required:
                self.add(key, "is required")
            return default
        value = self.body[key]
        if not isinstance(value, str):
            self.add(key, f"must be a string, got {_json_type(value)}")
            return default
        if strip:
            value = value.strip()
        if len(value) < min_length:
            self.add(
                key,
                "must not be empty"
                if min_length == 1
                else f"must be at least {min_length} characters",
            )
        elif len(value) > max_length:
            self.add(key, f"must be at most {max_length} characters")
        allowed = tuple(choices) if choices is not None else None
        if allowed is not None and value not in allowed:
            self.add(key, f"must be one of: {', '.join(allowed)}")
        return value

    def name(self, key: str = "name", **options: Any) -> Any:
        """A name shown in lists and chosen from by people (:meth:`string` otherwise): no
        control characters (a tab, a line break) nor invisible ones that only hide or reorder
        text (a zero-width space, a bidi override), by which two names that look the same would
        differ. The joiners that Persian, Hindi or emoji sequences need stay allowed."""
        value = self.string(key, **options)
        if isinstance(value, str):
            hidden = next((c for c in value if _hidden(c)), None)
            if hidden is not None:
                self.add(
                    key,
                    f"must not contain control or invisible characters (U+{ord(hidden):04X})",
                )
        return value

    def boolean(self, key: str, *, default: bool | None = None, required: bool = False) -> Any:
        if key not in self.body:
            if required:
                self.add(key, "is required")
            return default
        value = self.body[key]
        if not isinstance(value, bool):
            self.add(key, f"must be true or false, got {_json_type(value)}")
            return default
        return value

    def integer(
        self,
        key: str,
        *,
        required: bool = True,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        if key not in self.body or self.body[key] is None:
            if required:
                self.add(key, "is required")
            return default
        value = self.body[key]
        if isinstance(value, float) and abs(value) >= 2**63 and value.is_integer():
            # orjson reads integers beyond 64 bits as floats: an integer, just too large.
            bounds = (
                f"between {minimum} and {maximum}"
                if minimum is not None and maximum is not None
                else "that fits in 64 bits"
            )
            self.add(key, f"must be an integer {bounds}, got one too large")
            return default
        number = json_integer(value)
        if number is None:
            self.add(key, f"must be an integer, got {_json_type(value)}")
            return default
        value = number
        if minimum is not None and value < minimum:
            self.add(key, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.add(key, f"must be <= {maximum}")
        return value

    def check(self) -> None:
        """Raise 422 naming the bad fields (the first ones of many), if any."""
        if self.errors:
            raise ValidationFailed(self.errors, more=self.more)


MAX_GRACE_PERIOD = 365 * 86_400


async def read_grace_period(request: web.Request) -> int:
    """``grace_period_seconds`` of a secret rotation's optional body: how long the old secret
    keeps working (default ``hooks.secret_grace_period``; 0: not at all). 422 when it is not an
    integer in [0, one year] or the body holds any other field."""
    body = await read_optional_json_object(request)
    fields = Fields(body, ("grace_period_seconds",))
    grace = fields.integer(
        "grace_period_seconds",
        required=False,
        default=live_config(request.app).hooks.secret_grace_period,
        minimum=0,
        maximum=MAX_GRACE_PERIOD,
    )
    fields.check()
    return int(grace)


def decimal_in_range(text: str, low: int, high: int) -> int | None:
    """``text`` as an integer when it is plain ASCII decimal digits within [low, high]; None
    otherwise. The length is checked first: int() refuses texts over 4,300 digits with a
    ValueError (a 500), and any longer than ``high`` are out of range anyway."""
    # isascii: str.isdigit() also accepts digits like "²" that int() refuses.
    if not (0 < len(text) <= len(str(high)) + 4 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if low <= value <= high else None


def pagination(request: web.Request) -> tuple[int, int]:
    """(page, per_page) from the query string; 422 when they are not positive integers."""
    errors: dict[str, list[str]] = {}
    values = {}
    for key, default, maximum in (("page", 1, 1_000_000), ("per_page", 20, MAX_PER_PAGE)):
        value = decimal_in_range(request.query.get(key, str(default)), 1, maximum)
        if value is None:
            errors[key] = [f"must be an integer between 1 and {maximum}"]
        else:
            values[key] = value
    if errors:
        raise ValidationFailed(errors)
    return values["page"], values["per_page"]


def list_filter(request: web.Request, key: str, allowed: tuple[str, ...]) -> str | None:
    """The value of the list filter ``?key=`` (None when absent); 422 naming ``key`` and the
    allowed values otherwise: a typo must not answer an empty list, nor an unfiltered one."""
    value = request.query.get(key)
    if value is not None and value not in allowed:
        raise ValidationFailed({key: [f"must be one of: {', '.join(allowed)}"]})
    return value


def forwarded_client(request: web.Request) -> tuple[str | None, str]:
    """(client address, scheme) as ``[server] trusted_proxies`` resolve them (reloadable)."""
    trusted = live_config(request.app).server.trusted_proxies
    return ClientAddressResolver(trusted).resolve_headers(
        request.remote, request.headers, request.url.scheme
    )


def page_headers(request: web.Request, page: int, per_page: int, total: int) -> dict[str, str]:
    """RFC 8288 Link (first/prev/next/last) and X-Total-Count headers for a list response."""
    last = max(1, -(-total // per_page))
    url = URL(str(request.url))
    # Behind a trusted TLS-terminating proxy, the scheme the client used (X-Forwarded-Proto).
    scheme = forwarded_client(request)[1]
    if scheme != url.scheme:
        url = url.with_scheme(scheme)

    def link(p: int, rel: str) -> str:
        return f'<{url.update_query(page=p, per_page=per_page)}>; rel="{rel}"'

    links = [link(1, "first")]
    if page > 1:
        links.append(link(min(page - 1, last), "prev"))
    if page < last:
        links.append(link(page + 1, "next"))
    links.append(link(last, "last"))
    return {"Link": ", ".join(links), "X-Total-Count": str(total)}
