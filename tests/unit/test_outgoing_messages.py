"""An attempt's message: aiohttp's text where it is safe, a fixed description where it would
quote the target's bytes or the full URL, and never a sent secret or the URL's path."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
from aiohttp.http import HttpProcessingError
from yarl import URL

from gateway.dispatcher.client import MALFORMED, failure_message
from gateway.dispatcher.dispatcher import recorded_message
from gateway.dispatcher.outbound import OutboundRequest

URL_TEXT = "https://hooks.example:8443/services/T000/B000/URLSECRET_zz?api_key=URLKEY_zz"
REQUEST = OutboundRequest(
    "POST",
    URL_TEXT,
    {"Authorization": "Bearer OUT_AUTH_abc/def+ghi/jkl", "Content-Type": "application/json"},
    b"{}",
)
INFO = aiohttp.RequestInfo(URL(URL_TEXT), "POST", REQUEST.headers)  # type: ignore[arg-type]


def test_a_parse_error_is_a_fixed_description_without_aiohttps_400() -> None:
    error = aiohttp.ClientResponseError(
        INFO, (), status=400, message="Invalid header token: b'X-A\\x01: Bearer OUT_AUTH_abc'"
    )
    error.__cause__ = HttpProcessingError(code=400, message="...")
    assert failure_message(error) == f"ClientResponseError: {MALFORMED}"
    # A ClientResponseError that carries the target's status keeps it.
    answered = aiohttp.ContentTypeError(INFO, (), status=502, message="text/html")
    assert failure_message(answered) == f"ContentTypeError: {MALFORMED}, HTTP 502"


def test_errors_quoting_the_answer_or_the_url_are_fixed_descriptions() -> None:
    partial = SimpleNamespace(code=201, headers={"X-Echo": "Bearer OUT_AUTH_abc"})
    assert failure_message(aiohttp.ServerDisconnectedError(partial)) == (  # type: ignore[arg-type]
        "ServerDisconnectedError: the target closed the connection in the middle of the "
        "response headers (HTTP 201)"
    )
    assert failure_message(aiohttp.ServerDisconnectedError()) == (
        "ServerDisconnectedError: Server disconnected"
    )
    assert failure_message(aiohttp.ClientPayloadError("Invalid chunk size: b'OUT_AUTH'")) == (
        "ClientPayloadError: the response body could not be read"
    )
    assert failure_message(aiohttp.InvalidURL(URL_TEXT)) == (
        "InvalidURL: the target URL is not valid"
    )
    # Only the host and the cause: kept as aiohttp words it.
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
    assert failure_message(refused) == "ConnectionRefusedError: [Errno 111] " + (
        "Connect call failed ('127.0.0.1', 9)"
    )


def test_a_recorded_message_has_the_origin_for_the_url_and_no_secret() -> None:
    message = (
        f"SomeError: url='{URL_TEXT}' sent 'Bearer OUT_AUTH_abc\\/def+ghi\\/jkl' to "
        "/services/T000/B000/URLSECRET_zz (api_key=URLKEY_zz)"
    )
    assert recorded_message(message, REQUEST, ["webhook-signature"]) == (
        "SomeError: url='https://hooks.example:8443' sent '[redacted]' to [redacted] ([redacted])"
    )
    assert recorded_message("HTTP 500; retry in 1s", REQUEST, []) == "HTTP 500; retry in 1s"
    assert len(recorded_message("x" * 5000, REQUEST, [])) == 1000
