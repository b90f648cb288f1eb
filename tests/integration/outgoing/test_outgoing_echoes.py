"""What a target sends back never puts a sent credential into the history, the API or the log.

Real targets on 127.0.0.1: echo services that write the request's headers back escaped the way
PHP (``\\/``), .NET (``\\u002F``) or a form encoder (``%2f``) does, and broken HTTP servers
whose malformed answers aiohttp would quote in its error. The history (``hook:read``) is read
through the API and the log is the rendered JSON output; the secrets are looked for with every
escape undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote, urlencode

import pytest
from aiohttp import web

from gateway.config import Config
from gateway.logs import configure_logging
from gateway.storage.database import Database
from tests.integration.ingest_helpers import new_pipeline
from tests.integration.outgoing_helpers import (
    complete_run,
    create_hook,
    dispatch_until,
    hook_body,
)

TOKEN = "OUT_AUTH_abc/def+ghi/jkl"  # '/' and '+': what the escapes change
AUTHORIZATION = f"Bearer {TOKEN}=="


def revealed(text: str) -> str:
    """``text`` with JSON, percent and HTML escapes undone (a few layers deep): what a reader
    could recover from it."""
    for _ in range(3):
        text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
        text = unquote(html.unescape(text.replace("\\/", "/").replace("\\\\", "\\")))
    return text


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.items() for v in item for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


async def shown(client: Any, headers: dict[str, str], hook_id: str) -> dict[str, Any]:
    """The hook's attempts (``requests``) and ``deliveries`` as the API shows them to
    ``hook:read``."""
    pages: dict[str, Any] = {}
    for page in ("requests", "deliveries"):
        response = await client.get(f"/hooks/outgoing/{hook_id}/{page}", headers=headers)
        assert response.status == 200
        pages[page] = await response.json()
        assert pages[page], page
    return pages


def shown_strings(pages: dict[str, Any]) -> list[str]:
    """Every string of :func:`shown`'s pages but the attempts' ``target_url`` (shown as
    configured, by design)."""
    rows = [row for page in pages.values() for row in page]
    return _strings([{k: v for k, v in row.items() if k != "target_url"} for row in rows])


def assert_nowhere(secrets: list[str], places: list[str]) -> None:
    for place in places:
        for secret in secrets:
            assert secret not in revealed(place), (secret, place)


def _php(text: str) -> str:
    return text.replace("/", "\\/")  # json_encode without JSON_UNESCAPED_SLASHES


def _dotnet(text: str) -> str:
    return re.sub(r"[/+=]", lambda m: f"\\u{ord(m[0]):04X}", text)


def _form(text: str) -> str:
    # The headers form-encoded (quote_plus), with lower-case hex digits.
    fields = urlencode(json.loads(text)["headers"])
    return re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), fields)


ECHO_STYLES: dict[str, Callable[[str], str]] = {"php": _php, "dotnet": _dotnet, "form": _form}


@pytest.mark.parametrize("style", sorted(ECHO_STYLES))
async def test_an_echo_of_the_request_in_any_escaping_keeps_the_credentials_out(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    config: Config,
    aiohttp_server: Any,
    capsys: pytest.CaptureFixture[str],
    style: str,
) -> None:
    """The reviewer's PHP echo (``\\/``), a .NET one (``\\u002F``) and a form-encoded one
    (``%2f``): the bearer token and both signatures sent stay out of the history."""
    received: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        text = json.dumps({"headers": dict(request.headers), "path": request.path})
        return web.Response(text=ECHO_STYLES[style](text), content_type="application/json")

    target = web.Application()
    target.router.add_post("/{style}/echo", echo)
    server = await aiohttp_server(target)
    settings = {
        "request_headers": [{"name": "Authorization", "value": AUTHORIZATION}],
        "signature_header": "X-Hub-Signature-256",
    }
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        hook_body(f"http://127.0.0.1:{server.port}/{style}/echo", settings=settings),
    )
    configure_logging("info", "json")
    capsys.readouterr()
    await complete_run(db, pipeline_id)
    await dispatch_until(db, config, hook["id"], ["succeeded"])

    [sent] = received
    signatures = [
        sent["webhook-signature"].removeprefix("v1,"),
        sent["X-Hub-Signature-256"].removeprefix("sha256="),
    ]
    pages = await shown(client, admin_headers, hook["id"])
    assert_nowhere([TOKEN, *signatures], [*shown_strings(pages), capsys.readouterr().err])
    # The rest of the answer is kept as the target wrote it.
    [attempt] = pages["requests"]
    assert sent["webhook-id"] in attempt["response_excerpt"]
    assert "[redacted]" in attempt["response_excerpt"]


def _reflected(head: bytes) -> bytes:
    """The reviewer's tcpecho.py: the request's Authorization and webhook-signature come back
    as response headers with an invalid name."""
    lines = head.split(b"\r\n")[1:]
    secret = [line for line in lines if line.lower().startswith((b"authorization", b"webhook-"))]
    echoed = [b"X-Echo-" + line.replace(b": ", b"\x01: ", 1) for line in secret]
    return b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(echoed) + b"\r\nContent-Length: 0\r\n\r\n"


def _cut_short(head: bytes) -> bytes:
    """Valid response headers, the reflected Authorization among them; the connection closes
    before they end (aiohttp's error is then the headers read so far)."""
    [auth] = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization")]
    return b"HTTP/1.1 201 Created\r\nX-Echo-" + auth + b"\r\n"


def _bad_status_line(head: bytes) -> bytes:
    return b"HXXP/1.1 200 OK\r\n\r\n"


@contextlib.asynccontextmanager
async def raw_target(answer: Callable[[bytes], bytes]) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that reads one request and writes ``answer(request head)``
    as the whole response; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        await reader.readexactly(int(length[1]) if length else 0)
        writer.write(answer(head))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


URL_SECRETS = ["URLSECRET_zz", "URLKEY_zz"]
MALFORMED = (
    "ClientResponseError: malformed HTTP response from the target (status line or headers "
    "could not be parsed)"
)
BROKEN_TARGETS = {
    "reflects into an invalid header": (_reflected, "/x", MALFORMED),
    "closes within the headers": (
        _cut_short,
        "/x",
        "ServerDisconnectedError: the target closed the connection in the middle of the "
        "response headers (HTTP 201)",
    ),
    "bad status line, a credential in the URL": (
        _bad_status_line,
        f"/services/T000/B000/{URL_SECRETS[0]}?api_key={URL_SECRETS[1]}",
        MALFORMED,
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_TARGETS))
async def test_a_malformed_answer_is_recorded_and_logged_without_its_bytes_or_the_url(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    config: Config,
    capsys: pytest.CaptureFixture[str],
    broken: str,
) -> None:
    """aiohttp's error for a malformed answer quotes the answer's bytes and the full target
    URL; the attempts' ``message``, the delivery's ``last_error`` and the log line say what
    went wrong in fixed words, with the target's origin."""
    answer, path, expected = BROKEN_TARGETS[broken]
    async with raw_target(answer) as port:
        origin = f"http://127.0.0.1:{port}"
        settings = {"request_headers": [{"name": "Authorization", "value": AUTHORIZATION}]}
        pipeline_id = await new_pipeline(client, admin_headers)
        hook = await create_hook(
            client, admin_headers, pipeline_id, hook_body(origin + path, settings=settings)
        )
        configure_logging("info", "json")
        capsys.readouterr()
        await complete_run(db, pipeline_id)
        await dispatch_until(db, config, hook["id"], ["failed"])

    pages = await shown(client, admin_headers, hook["id"])
    log = capsys.readouterr().err
    assert_nowhere([TOKEN, *URL_SECRETS], [*shown_strings(pages), log])
    gave_up = f"{expected}; gave up after 3 attempts"
    assert [a["message"] for a in pages["requests"]] == [gave_up, expected, expected]
    [delivery] = pages["deliveries"]
    assert delivery["last_error"] == gave_up
    logged = [json.loads(line) for line in log.splitlines() if "outgoing_delivery_attempt" in line]
    assert [(line["error"], line["target"]) for line in logged][-1] == (
        delivery["last_error"],
        origin,
    )
