"""Clients that send slowly or never finish cannot hold connections for ever: a body that does
not arrive within ``[server] body_timeout`` is answered 408 (and recorded, on the ingest route),
and a connection that never completes its request headers is closed after
``[server] keepalive_timeout``. Before, neither had any bound (aiohttp's own default keeps such
a connection an hour), so one client could use up a worker's file descriptors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.acceptance.lb_client import Api, client_from, until
from tests.acceptance.live_gateway import LiveGateway, fresh_database, start_gateway, stop_gateway
from tests.integration.ops_helpers import parse_metrics, sample

BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.5
# After answering a request whose body it did not read in full, aiohttp reads and drops what
# still comes for up to this long (so that a client still sending gets the answer rather than
# a reset), then closes the connection.
LINGERING = 10.0


@pytest.fixture
def live(server_dsn: str, template_database: str, tmp_path: Path) -> Iterator[LiveGateway]:
    with fresh_database(server_dsn, template_database) as dsn:
        gateway = start_gateway(
            tmp_path,
            dsn,
            server={"body_timeout": BODY_TIMEOUT, "keepalive_timeout": KEEPALIVE_TIMEOUT},
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


async def _send_and_wait_for_close(port: int, head: bytes) -> tuple[bytes, float]:
    """Send ``head`` (a request cut short) and return everything the server sends until it
    closes the connection, and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), timeout=15)  # read() returns at EOF
        return data, time.monotonic() - started
    finally:
        writer.close()


def _status_and_json(data: bytes) -> tuple[int, dict[str, object]]:
    """The status and JSON body of a 408, which must tell the client the connection ends (a
    client that finished its body late and sent another request on it was never answered)."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head, head
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


async def test_an_ingest_body_that_stops_arriving_gets_408_and_is_recorded(
    live: LiveGateway,
) -> None:
    async with client_from("127.0.0.1") as session:
        api = Api(session, live.url, live.token)
        _, hook = await api.seed_hook()
        head = (
            f"POST /hooks/incoming/{hook['id']} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            '{"action":'
        ).encode()
        data, waited = await _send_and_wait_for_close(live.port, head)
        status, body = _status_and_json(data)
        assert (status, body["message"]) == (408, "request body not received within 1 s")
        assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + LINGERING + 5  # answered, then closed
        _, history = await api.call(
            "GET", f"/hooks/incoming/{hook['id']}/requests?outcome=rejected", expect=200
        )
        assert [(h["status_code"], h["message"]) for h in history] == [
            (408, "request body not received within 1 s")
        ]


@pytest.mark.parametrize(
    ("framing", "sent", "message"),
    [
        ("Content-Length: 100", b'{"action":', "request body ended before Content-Length bytes"),
        (
            "Transfer-Encoding: chunked",
            b'a\r\n{"action":\r\n',
            "request body ended before its last chunk",
        ),
    ],
    ids=["content-length", "chunked"],
)
async def test_an_ingest_body_cut_off_by_a_disconnect_is_a_recorded_400_not_an_error(
    live: LiveGateway, framing: str, sent: bytes, message: str
) -> None:
    """A sender whose connection drops mid-body: aiohttp raises ConnectionResetError (not
    IncompleteReadError) from the body read. It was handled as the gateway's own bug: a
    traceback logged at error level, counted as a 500, and no history row; any client could
    fill the error log so. It is a rejected 400 in the history, like a body that stops
    arriving (408). (The integration tests' server cancels a handler whose client went away,
    which ``gateway serve`` does not: hence a live gateway here.)"""
    async with client_from("127.0.0.1") as session:
        api = Api(session, live.url, live.token)
        _, hook = await api.seed_hook()
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        try:
            # Expect: 100-continue, as curl sends with a large body: once the 100 is in, the
            # handler runs, so the connection is lost while it reads the body, not before.
            writer.write(
                f"POST /hooks/incoming/{hook['id']} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\n{framing}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
            writer.write(sent)
            await writer.drain()
        finally:
            writer.close()

        path = f"/hooks/incoming/{hook['id']}/requests?outcome=rejected"

        async def recorded() -> bool:
            return bool((await api.call("GET", path, expect=200))[1])

        await until(recorded, 10, "the cut-off request's history row")
        _, history = await api.call("GET", path, expect=200)
        assert [(h["status_code"], h["message"]) for h in history] == [(400, message)]
    # Logged after the row's commit, and read from the gateway's stderr by a thread: the row
    # visible through the API does not mean the line is in yet.
    rejected = live.gateway.wait_event("hook_request_rejected", 10, status=400)
    assert (rejected["level"], rejected["reason"]) == ("info", "short_body")
    assert len([e for e in live.gateway.named("hook_request_rejected") if e["status"] == 400]) == 1
    assert live.gateway.named("hook_request_failed") == []


async def test_a_management_body_that_stops_arriving_gets_408(live: LiveGateway) -> None:
    head = (
        b"POST /users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 80\r\n\r\n{"email":'
    )
    data, waited = await _send_and_wait_for_close(live.port, head)
    status, body = _status_and_json(data)
    assert (status, body["message"]) == (408, "request body not received within 1 s")
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + LINGERING + 5


async def test_headers_that_never_end_are_cut_off_after_the_keepalive_timeout(
    live: LiveGateway,
) -> None:
    data, waited = await _send_and_wait_for_close(
        live.port, b"POST /hooks/incoming/x HTTP/1.1\r\nHost: x\r\n"
    )
    assert data == b""  # nothing to answer: no request was ever complete
    assert KEEPALIVE_TIMEOUT - 0.5 <= waited < KEEPALIVE_TIMEOUT + 5


@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        ("Content-Length: 100", b'{"email":'),
        ("Transfer-Encoding: chunked", b'9\r\n{"email":\r\n'),
    ],
    ids=["content-length", "chunked"],
)
async def test_a_management_body_cut_off_by_a_disconnect_is_a_400_not_an_error(
    live: LiveGateway, framing: str, sent: bytes
) -> None:
    """The same disconnect on the unauthenticated login route: it was a 500 with an error-level
    ``management_request_failed`` traceback (ConnectionResetError), which anyone could repeat
    to fill the error log and trip alerts on the gateway's errors."""
    login = {"method": "POST", "route": "/users/login"}

    async def count(code: str) -> float:
        async with aiohttp.ClientSession() as session:
            async with session.get(live.url + "/metrics") as response:
                metrics = parse_metrics(await response.text())
        return sample(metrics, "hookgate_management_requests_total", **login, status=code)

    before = await count("400")
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        writer.write(
            f"POST /users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{framing}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        # Once the 100 is in, the view runs: the connection is lost while it reads the body.
        assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
        writer.write(sent)
        await writer.drain()
    finally:
        writer.close()

    async def counted() -> bool:
        return await count("400") > before

    await until(counted, 10, "the cut-off login counted")
    assert await count("500") == 0
    assert live.gateway.named("management_request_failed") == []


@pytest.fixture
def live_python_parser(
    server_dsn: str, template_database: str, tmp_path: Path
) -> Iterator[LiveGateway]:
    """A gateway on aiohttp's pure-Python HTTP parser, as where its C extension is not built
    (``AIOHTTP_NO_EXTENSIONS``): that parser hands a bad chunk to the handler reading the body."""
    with fresh_database(server_dsn, template_database) as dsn:
        gateway = start_gateway(tmp_path, dsn, env={"AIOHTTP_NO_EXTENSIONS": "1"})
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


async def _send_bad_chunk(port: int, path: str) -> tuple[int, dict[str, object]]:
    """POST ``path`` with a chunked body whose first chunk-size line is not hexadecimal, sent
    once the handler reads the body (after its 100 Continue); the status and JSON answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
        await reader.readline()  # the blank line after it
        writer.write(b"zz\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return int(head.split(b" ", 2)[1]), orjson.loads(body)
    finally:
        writer.close()


async def test_a_malformed_chunked_body_is_a_400_naming_it_not_an_error(
    live_python_parser: LiveGateway,
) -> None:
    """With aiohttp's Python parser, a bad chunk reaches the body read as TransferEncodingError:
    the ingest route answered 500 with an error-level ``hook_request_failed`` traceback and
    recorded nothing, the management API 500 with ``management_request_failed``. (aiohttp's C
    parser never tells the handler: README, Operations, "A malformed chunked body".)"""
    live = live_python_parser
    message = "request body is not valid chunked transfer encoding"
    async with client_from("127.0.0.1") as session:
        api = Api(session, live.url, live.token)
        _, hook = await api.seed_hook()
        assert await _send_bad_chunk(live.port, f"/hooks/incoming/{hook['id']}") == (
            400,
            {"message": message, "errors": None},
        )
        _, history = await api.call("GET", f"/hooks/incoming/{hook['id']}/requests", expect=200)
        assert [(h["status_code"], h["outcome"], h["message"]) for h in history] == [
            (400, "rejected", message)
        ]
        assert await _send_bad_chunk(live.port, "/users/login") == (
            400,
            {"message": message, "errors": None},
        )
    rejected = live.gateway.wait_event("hook_request_rejected", 10, status=400)
    assert rejected["reason"] == "bad_chunked_body"
    assert live.gateway.named("hook_request_failed") == []
    assert live.gateway.named("management_request_failed") == []
