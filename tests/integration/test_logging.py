"""Logging: the real rendered output (JSON and console), request ids, and no secrets, ever."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway import cli
from gateway.logs import REDACTED, configure_logging, get_logger
from gateway.server import run_listeners
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.ports import free_port

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> Lines:
    """Configure JSON logging; the returned function parses what was written to stderr since."""
    configure_logging("info", "json")
    capsys.readouterr()

    def read() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.strip()]

    return read


def test_json_line_starts_with_the_event_name(json_lines: Lines) -> None:
    get_logger("tests.logging").info("thing_happened", answer=42)
    (line,) = json_lines()
    assert next(iter(line)) == "event"
    assert line["event"] == "thing_happened"
    assert line["answer"] == 42
    assert line["level"] == "info"
    assert line["logger"] == "tests.logging"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", line["timestamp"])


def test_module_loggers_made_before_configuration_follow_it(json_lines: Lines) -> None:
    # gateway.cli creates its logger at import time, long before main() configures logging.
    cli.log.info("probe_from_cli")
    (line,) = json_lines()
    assert line["event"] == "probe_from_cli" and line["logger"] == "gateway.cli"


def test_level_filters_debug(json_lines: Lines) -> None:
    log = get_logger("tests.logging.level")
    log.debug("too_detailed")
    log.warning("worth_knowing")
    assert [line["event"] for line in json_lines()] == ["worth_knowing"]


def test_a_reconfiguration_reaches_loggers_already_used(capsys: pytest.CaptureFixture[str]) -> None:
    # SIGHUP reloads call configure_logging again; module loggers are cached on first use.
    log = get_logger("tests.logging.reload")
    configure_logging("warning", "json")
    log.info("hidden_at_warning")
    configure_logging("debug", "console")
    log.debug("shown_at_debug", answer=42)
    configure_logging("info", "json")
    log.debug("hidden_again")
    log.info("json_again")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert "shown_at_debug" in lines[0] and "answer=42" in lines[0]
    assert json.loads(lines[1])["event"] == "json_again"


def test_library_records_are_json_too(json_lines: Lines) -> None:
    logging.getLogger("aiohttp.server").error("Error handling request %s", "GET /x")
    logging.getLogger("asyncpg").info("chatty library detail")
    (line,) = json_lines()
    assert next(iter(line)) == "event"
    assert line["event"] == "Error handling request GET /x"
    assert line["logger"] == "aiohttp.server" and line["level"] == "error"


def test_exceptions_stay_on_one_json_line(json_lines: Lines) -> None:
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        get_logger("tests.logging").exception("it_failed")
    (line,) = json_lines()
    assert line["event"] == "it_failed"
    assert "RuntimeError: kaboom" in line["exception"]


def test_secret_fields_are_redacted_whoever_passes_them(json_lines: Lines) -> None:
    get_logger("tests.logging").info(
        "careless_call",
        password="hunter2",
        refresh_token="hgr_abc",
        api_secret="s3",
        Authorization="Bearer hga_x",
        user_id=7,
    )
    (line,) = json_lines()
    for key in ("password", "refresh_token", "api_secret", "Authorization"):
        assert line[key] == REDACTED
    assert line["user_id"] == 7
    assert "hunter2" not in json.dumps(line)


def test_console_format_is_human_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    capsys.readouterr()
    log = get_logger("tests.logging.console")
    log.info("console_event", answer=42, password="hunter2")
    try:
        raise ValueError("shown with its traceback")
    except ValueError:
        log.exception("console_failure")
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert "console_event" in first and "answer=42" in first and "[tests.logging.console]" in first
    assert "hunter2" not in err
    assert "ValueError: shown with its traceback" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    configure_logging("info", "json")


class _Writes:
    """A stream recording every write call, as a pipe shared by worker processes sees them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_each_line_is_one_write_so_workers_never_interleave_lines(fmt: str) -> None:
    stream = _Writes()
    configure_logging("info", fmt, stream=stream)
    try:
        get_logger("tests.logging.writes").info("first_line", n=1)
        logging.getLogger("tests.stdlib").warning("from the standard library")
    finally:
        configure_logging("info", "json")
    assert len(stream.writes) == 2, stream.writes
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes), stream.writes
    assert "first_line" in stream.writes[0] and "standard library" in stream.writes[1]


def test_configure_rejects_unknown_levels_and_formats() -> None:
    with pytest.raises(ValueError, match="format"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="level"):
        configure_logging("loud", "json")


# --- per-request context ----------------------------------------------------------------------


async def _login(client: Any, password: str, request_id: str | None = None) -> Any:
    headers = {"X-Request-Id": request_id} if request_id else {}
    return await client.post(
        "/users/login", json={"email": ADMIN_EMAIL, "password": password}, headers=headers
    )


async def test_a_sane_request_id_is_echoed_and_bound(
    client: Any, admin_token: str, json_lines: Lines
) -> None:
    response = await _login(client, ADMIN_PASSWORD, "deploy-42.retry:1")
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "deploy-42.retry:1"
    (line,) = [e for e in json_lines() if e["event"] == "login_succeeded"]
    assert line["request_id"] == "deploy-42.retry:1"


@pytest.mark.parametrize("given", [None, "has spaces", "x" * 129, "<script>", ""])
async def test_a_missing_or_insane_request_id_is_replaced(
    client: Any, admin_token: str, json_lines: Lines, given: str | None
) -> None:
    response = await _login(client, "wrong password", given)
    assert response.status == 401
    echoed = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    (line,) = [e for e in json_lines() if e["event"] == "login_failed"]
    assert line["request_id"] == echoed


async def test_each_request_gets_its_own_id(
    client: Any, admin_headers: dict[str, str], json_lines: Lines
) -> None:
    ids = {(await client.get("/users/me", headers=admin_headers)).headers["X-Request-Id"]}
    ids.add((await client.get("/users/me", headers=admin_headers)).headers["X-Request-Id"])
    assert len(ids) == 2


async def test_errors_carry_the_request_id_too(client: Any, json_lines: Lines) -> None:
    response = await client.get("/users/me", headers={"X-Request-Id": "trace-me"})
    assert response.status == 401
    assert response.headers["X-Request-Id"] == "trace-me"


async def test_no_password_or_token_in_any_log_line(
    client: Any, admin_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug", "json")
    capsys.readouterr()
    new_password = "another secret passphrase"
    good = await (await _login(client, ADMIN_PASSWORD)).json()
    bad = await _login(client, "definitely-not-it")
    assert bad.status == 401
    created = await client.post(
        "/users",
        json={"email": "dev@example.com", "password": new_password},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert created.status == 201
    refreshed = await client.post(
        "/users/refresh-token", json={"refresh_token": good["refresh_token"]}
    )
    assert refreshed.status == 200
    pair = await refreshed.json()
    output = capsys.readouterr().err
    configure_logging("info", "json")

    events = [json.loads(line)["event"] for line in output.splitlines() if line.strip()]
    # The lines under test exist: this test cannot pass by logging nothing.
    assert {"login_succeeded", "login_failed", "user_created"} <= set(events)
    secrets = [
        ADMIN_PASSWORD,
        "definitely-not-it",
        new_password,
        admin_token,
        good["access_token"],
        good["refresh_token"],
        pair["access_token"],
        pair["refresh_token"],
    ]
    for secret in secrets:
        assert secret not in output
    # Not even a recognisable token prefix followed by its random part.
    assert not re.search(r"hg[arp]_[A-Za-z0-9_-]{20,}", output)


async def test_access_log_lines_are_structured(config: Any, db: Any, json_lines: Lines) -> None:
    port = free_port()
    config = replace(config, server=replace(config.server, port=port, access_log=True))
    stop = asyncio.Event()
    serving = asyncio.create_task(run_listeners(config, db, stop))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
    finally:
        stop.set()
        await serving
    (line,) = [e for e in json_lines() if e["event"] == "http_request"]
    assert line["method"] == "GET" and line["path"] == "/healthz" and line["status"] == 200
    assert line["logger"] == "gateway.server" and line["duration_ms"] >= 0


def test_header_style_plural_and_nested_secret_names_are_redacted(json_lines: Lines) -> None:
    get_logger("tests.logging").info(
        "careless_headers",
        **{
            "x-hub-signature-256": "sha256=abc",
            "webhook-signature": "v1,abc",
            "x-gitlab-token": "glt",
            "X-Api-Key": "k1",
            "api_key": "k2",
            "secret_keys": ["k:AAAA"],
            "passwords": ["p"],
            "dsn": "postgresql://app:pw@db/app",
        },
        headers={"Authorization": "Bearer hga_x", "Accept": "*/*", "inner": {"Cookie": "c"}},
        signature_header="x-hub-signature-256",
        key_id="primary",
        previous_secret_expires_in=30,
    )
    (line,) = json_lines()
    for key in ("x-hub-signature-256", "webhook-signature", "x-gitlab-token", "X-Api-Key",
                "api_key", "secret_keys", "passwords", "dsn"):  # fmt: skip
        assert line[key] == REDACTED, key
    assert line["headers"] == {
        "Authorization": REDACTED,
        "Accept": "*/*",
        "inner": {"Cookie": REDACTED},
    }
    # Names about a secret, not the secret: kept.
    assert line["signature_header"] == "x-hub-signature-256"
    assert line["key_id"] == "primary" and line["previous_secret_expires_in"] == 30
    for leaked in ("abc", "glt", "k1", "k2", "AAAA", "pw@", "hga_x"):
        assert leaked not in json.dumps(line)


def test_a_logged_headers_mapping_is_redacted_by_the_header_rule(json_lines: Lines) -> None:
    """The names the request history and outgoing hooks redact are redacted in a logged
    headers mapping too; ordinary log keys about keys and tokens stay."""
    headers = {
        "X-Functions-Key": "FK1",
        "Ocp-Apim-Subscription-Key": "AK1",
        "X-Gitea-Signature": "GS1",
        "X-Shopify-Hmac-Sha256": "HM1",
        "X-Session-Id": "SI1",
        "Key": "KY1",
        "Content-Type": "application/json",
        "Idempotency-Key": "delivery-1",
        "X-Event-Key": "repo:push",
    }
    get_logger("tests.logging").info(
        "headers_logged",
        headers=headers,
        request_headers={"outer": headers},
        **{"x-functions-key": "FK2"},
        key_id="primary",
        token_count=3,
        cache_key="ck",
        key_file="var/secret-keys",
        session_timeout=30,
    )
    (line,) = json_lines()
    secret = ("X-Functions-Key", "Ocp-Apim-Subscription-Key", "X-Gitea-Signature",
              "X-Shopify-Hmac-Sha256", "X-Session-Id", "Key")  # fmt: skip
    shown = {k: v for k, v in headers.items() if k not in secret}
    for logged in (line["headers"], line["request_headers"]["outer"]):
        assert logged == {**dict.fromkeys(secret, REDACTED), **shown}
    assert line["x-functions-key"] == REDACTED
    assert (line["key_id"], line["token_count"], line["cache_key"]) == ("primary", 3, "ck")
    assert (line["key_file"], line["session_timeout"]) == ("var/secret-keys", 30)
    for leaked in ("FK1", "FK2", "AK1", "GS1", "HM1", "SI1", "KY1"):
        assert leaked not in json.dumps(line)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_aiohttp_parser_errors_are_logged_without_the_bytes_they_quote(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """aiohttp logs a request it cannot parse with its parser's error, which quotes the bad
    header line (a bearer token or a signature with a stray control character in it)."""
    from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

    configure_logging("info", fmt)
    capsys.readouterr()
    try:
        for exc in (
            BadHttpMessage("Invalid header value char:\n\n  b'Authorization: Bearer hga_Q1\\x01'"),
            LineTooLong(b"Bearer hga_Q2AAAA...", 8190),
        ):
            logging.getLogger("aiohttp.server").error(
                "Error handling request from %s", "192.0.2.7", exc_info=exc
            )
        err = capsys.readouterr().err
    finally:
        configure_logging("info", "json")
    assert "hga_Q1" not in err and "hga_Q2" not in err
    assert err.count("http_request_unparseable") == 2, err
    assert "Invalid header value char" in err and "192.0.2.7" in err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines()]
        assert [line["error_type"] for line in lines] == ["BadHttpMessage", "LineTooLong"]
        assert [line["level"] for line in lines] == ["warning", "warning"]  # the client's fault
        assert "exception" not in lines[0]


def test_aiohttp_parser_errors_that_quote_the_request_line_as_text_are_cut_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS, PyPy) quotes a bad request line as
    text, and an InvalidURLError's message is the request target itself: a token in a query
    string would be logged whole."""
    from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, InvalidURLError

    configure_logging("info", "json")
    capsys.readouterr()
    for exc in (
        BadStatusLine("GET /hooks/1?token=hga_Q3 HTTP/9"),
        BadHttpMethod("GET\x01 /hooks/1?token=hga_Q4 HTTP/1.1"),
        InvalidURLError("/hooks/1?token=hga_Q5\x01"),
    ):
        logging.getLogger("aiohttp.server").error(
            "Error handling request from %s", "192.0.2.7", exc_info=exc
        )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["http_request_unparseable"] * 3
    assert [line["reason"] for line in lines] == [
        "Bad status line",
        "Bad HTTP method in status line",
        None,
    ]
    assert not [line for line in lines if "hga_Q" in json.dumps(line)]


def test_aiohttp_parser_errors_follow_the_configured_level_as_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiohttp logs a request it cannot parse at ERROR; the gateway writes it as the warning it
    is (the client's fault). At ``[log] level = "error"`` it is then left out like any other
    warning, not written as a warning line that the level was meant to hold back."""
    from aiohttp.http_exceptions import BadHttpMessage

    def logged_at(level: str) -> list[dict[str, Any]]:
        configure_logging(level, "json")
        capsys.readouterr()
        aiohttp_log = logging.getLogger("aiohttp.server")
        aiohttp_log.error(
            "Error handling request from %s", "192.0.2.7", exc_info=BadHttpMessage("x")
        )
        aiohttp_log.error("Error handling request", exc_info=RuntimeError("a gateway bug"))
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.strip()]

    try:
        at_error, at_warning = logged_at("error"), logged_at("warning")
    finally:
        configure_logging("info", "json")
    assert [(line["event"], line["level"]) for line in at_error] == [
        ("Error handling request", "error")
    ]
    assert [(line["event"], line["level"]) for line in at_warning] == [
        ("http_request_unparseable", "warning"),
        ("Error handling request", "error"),
    ]
