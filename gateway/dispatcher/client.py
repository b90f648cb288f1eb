"""The HTTP side of a delivery: one shared session per dispatcher, one bounded send per attempt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import aiohttp
from aiohttp.http import HttpProcessingError
from yarl import URL

from gateway.dispatcher.outbound import OutboundRequest
from gateway.dispatcher.ssrf import make_connector

MAX_TIMEOUT = 60.0  # the bound of [outgoing] timeout and of a hook's settings.timeout
MALFORMED = "malformed HTTP response from the target (status line or headers could not be parsed)"


class Answer(NamedTuple):
    """What came back: status, the Retry-After header, the start of the body (or None)."""

    status: int
    retry_after: str | None
    excerpt: str | None


def new_session(
    *,
    allow_private_targets: bool,
    concurrency: int,
    dns_timeout: float,
    nameservers: Sequence[str] | None = None,
) -> aiohttp.ClientSession:
    """The session every delivery of a dispatcher goes through (SSRF guard unless allowed);
    ``nameservers`` replace resolv.conf's (tests)."""
    connector = make_connector(
        allow_private_targets=allow_private_targets,
        limit=concurrency,
        dns_timeout=dns_timeout,
        nameservers=nameservers,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # A backstop only: each request runs under its own, shorter, timeout (see send).
        timeout=aiohttp.ClientTimeout(total=MAX_TIMEOUT * 2),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # never route deliveries through an environment proxy
        # Excerpts are stored as sent: ask for no compression (a hook's own header still wins).
        headers={"Accept-Encoding": "identity"},
        auto_decompress=False,
    )


def clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return text.replace("\x00", "")


def failure_message(exc: BaseException) -> str:
    """Why a request got no answer, as recorded and logged. aiohttp's own text is kept where it
    names only the host and the cause (DNS, a refused connection, TLS); where it would quote the
    target's bytes (a reflected credential) or the full target URL (whose path or query can be
    a credential), a fixed description stands instead."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        # From aiohttp's parser the status is its own 400, not the target's.
        known = exc.status and not isinstance(exc.__cause__, HttpProcessingError)
        return f"{name}: {MALFORMED}" + (f", HTTP {exc.status}" if known else "")
    if isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(exc.message, str):
        # The headers had started: aiohttp's text is all of them.
        status = getattr(exc.message, "code", None)
        return f"{name}: the target closed the connection in the middle of the response " + (
            f"headers (HTTP {status})" if status else "headers"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{name}: the response body could not be read"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{name}: the target URL is not valid"
    return f"{name}: {exc}"


async def send(
    session: aiohttp.ClientSession,
    request: OutboundRequest,
    seconds: float,
    excerpt_bytes: int,
    on_answer: Callable[[aiohttp.ClientResponse], None] | None = None,
) -> Answer:
    """Send ``request`` without following redirects and read at most ``excerpt_bytes`` of the
    answer, all within ``seconds``. No status by then: TimeoutError (connection problems and
    SSRF refusals raise aiohttp.ClientError). Once the status has arrived it is the answer: a
    body still arriving at the deadline, or cut off (closing the response given to
    ``on_answer`` when the status arrived), only shortens the excerpt."""
    deadline = asyncio.get_running_loop().time() + seconds
    async with asyncio.timeout_at(deadline):
        response = await session.request(
            request.method,
            URL(request.url, encoded=True),  # already percent-encoded by the template
            data=request.body,
            headers=request.headers,
            allow_redirects=False,  # a redirect is an answer, not an instruction
        )
    try:
        if on_answer is not None:
            on_answer(response)
        excerpt = await _read_excerpt(response, excerpt_bytes, deadline)
    finally:
        response.release()  # back to the pool when the body was read, closed otherwise
    return Answer(response.status, response.headers.get("Retry-After"), excerpt)


async def _read_excerpt(
    response: aiohttp.ClientResponse, limit: int, deadline: float
) -> str | None:
    if not limit:
        return None
    chunks: list[bytes] = []
    remaining = limit
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout_at(deadline):
            while remaining > 0:
                chunk = await response.content.read(remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
    return clean(b"".join(chunks).decode("utf-8", "replace"))
