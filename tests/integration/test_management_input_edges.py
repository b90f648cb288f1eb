"""Management inputs that once answered 500 (found by schemathesis against gateway/openapi): each
must now be a clear 4xx with the JSON error body."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from typing import Any

import orjson
import pytest

from gateway.app import create_apps
from gateway.config import Config
from gateway.storage.database import Database
from tests.conftest import client_for
from tests.integration.management_helpers import JSON_HEADERS, make_environment, make_pipeline


async def _json(response: Any) -> dict[str, Any]:
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == {"message", "errors"}
    return body


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/roles", {"name": "a\u0000b", "permissions": ["environment:read"]}, "name"),
        ("/environments", {"name": "env", "description": "x\u0000"}, "description"),
        ("/teams", {"name": "t", "extra\u0000": 1}, "extra\u0000"),
    ],
)
async def test_a_nul_character_is_a_422_naming_the_field(
    client: Any, admin_headers: dict[str, str], path: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post(path, json=body, headers={**JSON_HEADERS, **admin_headers})
    assert response.status == 422
    errors = (await _json(response))["errors"]
    assert errors == {field: ["must not contain the NUL character (\\u0000)"]}


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_a_compressed_body_is_a_415_naming_the_encoding(
    client: Any, admin_headers: dict[str, str], encoding: str
) -> None:
    # The listeners read bodies as sent (app.HANDLER_OPTIONS): a clear 415, not "not JSON" and
    # not aiohttp's bare 400 for an encoding it has no decoder for.
    headers = {**JSON_HEADERS, **admin_headers, "Content-Encoding": encoding}
    response = await client.post("/environments", data=b"\x1f\x8b...", headers=headers)
    assert response.status == 415
    assert (await _json(response))["message"] == (
        f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
    )


async def test_a_body_past_the_limit_is_a_413_naming_it(
    client: Any, admin_headers: dict[str, str]
) -> None:
    body = orjson.dumps({"name": "env", "description": "x" * (1024 * 1024)})
    headers = {**JSON_HEADERS, **admin_headers}
    response = await client.post("/environments", data=io.BytesIO(body), headers=headers)
    assert response.status == 413
    assert (await _json(response))["message"] == (
        "request body is larger than 1048576 bytes, the most taken here"
    )


async def test_a_nul_inside_a_nested_hook_setting_is_a_422(
    client: Any, admin_headers: dict[str, str]
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    body = {
        "name": "h",
        "action_type": "deploy",
        "trigger_when": {"conditions": [{"path": "ref", "accepted_values": ["main\u0000"]}]},
    }
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        json=body,
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert response.status == 422
    errors = (await _json(response))["errors"]
    assert list(errors) == ["trigger_when.conditions.0.accepted_values.0"]


async def test_nul_in_an_executor_report_is_still_stripped_not_refused(
    client: Any, admin_headers: dict[str, str]
) -> None:
    # message and output of POST /runs/{id}/status keep their documented NUL stripping: the
    # request reaches the view (404 for an unknown run), not a 422 about the NUL.
    response = await client.post(
        "/runs/00000000-0000-0000-0000-000000000000/status",
        json={"status": "completed", "lease_token": "x", "output": "a\u0000b", "message": "\u0000"},
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert response.status == 404, await response.text()


# Python's int() refuses decimal texts over 4,300 digits with a ValueError: these were 500s.
HUGE = "9" * 4301


@pytest.mark.parametrize(
    "value", ["²", "\u0661", "0", "-1", "1.0", "abc", "1000001", HUGE, "0" * 30 + "1"]
)
async def test_a_page_that_is_not_an_ascii_number_is_a_422(
    client: Any, admin_headers: dict[str, str], value: str
) -> None:
    response = await client.get("/environments", params={"page": value}, headers=admin_headers)
    assert response.status == 422
    assert (await _json(response))["errors"] == {
        "page": ["must be an integer between 1 and 1000000"]
    }


@pytest.mark.parametrize(
    "path",
    [
        "/roles/²",
        "/teams/\u0663",
        "/users/me/tokens/²",
        f"/users/{HUGE}",  # path_id
        f"/environments/{HUGE}",
        f"/pipelines/{HUGE}/runs",  # path_int
        f"/users/me/tokens/{HUGE}",
    ],
)
async def test_an_id_that_is_not_an_ascii_number_is_a_404(
    client: Any, admin_headers: dict[str, str], path: str
) -> None:
    response = await client.request(
        "DELETE" if "tokens" in path else "GET", path, headers=admin_headers
    )
    assert response.status == 404
    assert "not found" in (await _json(response))["message"]


@pytest.mark.parametrize(
    ("type_", "status", "expected"),
    [
        # Integer variables are signed 64-bit values (gateway.ingest.variables): a clear 422.
        ("integer", 422, "expected an integer that fits in 64 bits, got '999999999"),
        # A number that large is a float, as a JSON number that large is parsed.
        ("number", 201, 1e30),
    ],
)
async def test_an_integer_default_beyond_64_bits(
    client: Any, admin_headers: dict[str, str], type_: str, status: int, expected: Any
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    variable = {"name": "n", "type": type_, "default_value": "9" * 30}
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        json={"name": "h", "action_type": "deploy", "settings": {"variables": [variable]}},
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert response.status == status, await response.text()
    if status == 422:
        (message,) = (await _json(response))["errors"]["settings.variables.0.default_value"]
        assert expected in message
    else:
        hook = await response.json()
        assert hook["settings"]["variables"][0]["default_value"] == expected


@pytest.fixture
async def management_client(config: Config, db: Database, aiohttp_client: Any) -> Any:
    """The management app alone, as `gateway serve` runs it on its own port."""
    # A management port makes create_apps build the two apps apart (it binds nothing itself).
    split = replace(config, server=replace(config.server, management_port=9))
    _ingest, management = create_apps(split, db)
    assert management is not None
    return await client_for(management, aiohttp_client)


UNSUPPORTED_METHODS = [
    ("DELETE", "/users/me", "GET,HEAD"),
    ("PATCH", "/environments", "GET,HEAD,POST"),
    ("PUT", "/users/login", "POST"),
]


@pytest.mark.parametrize(("method", "path", "allow"), UNSUPPORTED_METHODS)
@pytest.mark.parametrize("app", ["shared listener", "management listener"])
async def test_an_unsupported_method_on_a_route_is_a_json_405_with_allow(
    client: Any,
    management_client: Any,
    admin_headers: dict[str, str],
    app: str,
    method: str,
    path: str,
    allow: str,
) -> None:
    http = client if app == "shared listener" else management_client
    response = await http.request(method, path, headers=admin_headers)
    assert response.status == 405
    assert response.headers["Allow"] == allow
    assert len(response.headers["X-Request-Id"]) == 32  # a fresh id, like every answer
    assert await _json(response) == {
        "message": f"method {method} is not allowed on {path}",
        "errors": None,
    }


@pytest.mark.parametrize("app", ["shared listener", "management listener"])
async def test_an_unknown_management_route_is_a_json_404(
    client: Any, management_client: Any, admin_headers: dict[str, str], app: str
) -> None:
    http = client if app == "shared listener" else management_client
    for method, path in [("GET", "/no-such-thing"), ("POST", "/environments/1/nothing")]:
        traced = {**admin_headers, "X-Request-Id": "trace-404"}
        response = await http.request(method, path, headers=traced)
        assert response.status == 404
        assert "Allow" not in response.headers
        assert response.headers["X-Request-Id"] == "trace-404"  # the caller's, echoed
        assert await _json(response) == {
            "message": f"no route for {method} {path}",
            "errors": None,
        }


async def test_management_answers_are_not_cached_and_name_no_versions(
    client: Any, admin_headers: dict[str, str]
) -> None:
    """Token and secret responses carried no Cache-Control (RFC 6749 §5.1 asks no-store), and
    every answer named the exact Python and aiohttp versions in Server."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    created = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        json={"name": "h", "action_type": "deploy"},
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert created.status == 201 and (await created.json())["secret"]
    refused = await client.get("/users/me")  # an error answer too
    for response in (created, refused, await client.get("/users/me", headers=admin_headers)):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Server"] == "hookgate"
    probe = await client.get("/healthz")
    assert probe.headers["Server"] == "hookgate"
    assert "Cache-Control" not in probe.headers  # ingest answers hold nothing to protect
    # aiohttp's own answer to a request it cannot parse, before any gateway code runs.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")  # no colon
        head = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")[0]
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"\r\nServer: hookgate" in head, head


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "application/xml"]
)
async def test_a_declared_body_type_other_than_json_is_a_415_naming_it(
    client: Any, content_type: str
) -> None:
    # Before, any declared type was parsed as JSON: a wrong client went unnoticed.
    response = await client.post(
        "/users/login",
        data=b'{"email": "a@example.com", "password": "x"}',
        headers={"Content-Type": content_type},
    )
    assert response.status == 415
    assert (await _json(response))["message"] == (
        f"unsupported content type {content_type!r}: send application/json"
    )


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "x/y+json",
        "application/octet-stream",  # HTTP libraries' default for raw bytes
        "text/plain;charset=UTF-8",  # fetch() and aiohttp's default for a string body
    ],
)
async def test_json_types_and_none_are_read_as_json(client: Any, content_type: str | None) -> None:
    response = await client.post(
        "/users/login",
        data=b'{"email": "nobody@example.com", "password": "wrong password"}',
        headers={} if content_type is None else {"Content-Type": content_type},
        skip_auto_headers=["Content-Type"],
    )
    assert response.status == 401  # read and checked: the credentials are wrong


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/environments", {"name": "prod\u200buction"}, "name"),
        ("/teams", {"name": "ops\t"}, None),  # trailing whitespace is stripped: fine
        ("/teams", {"name": "o\u200bps"}, "name"),
        ("/users/me/tokens", {"name": "ci\u2066token"}, "name"),
        ("/roles", {"name": "de\u202ev", "permissions": ["environment:read"]}, "name"),
        ("/users", {"email": "a b@example.com", "password": "long enough pw"}, "email"),
        ("/users", {"email": "a@b@c", "password": "long enough pw"}, "email"),
    ],
)
async def test_names_and_emails_with_hidden_or_stray_characters_are_refused(
    client: Any, admin_headers: dict[str, str], path: str, body: dict[str, Any], field: str | None
) -> None:
    response = await client.post(path, json=body, headers={**JSON_HEADERS, **admin_headers})
    if field is None:
        assert response.status == 201, await response.text()
        return
    assert response.status == 422, await response.text()
    assert list((await _json(response))["errors"]) == [field]


async def test_an_empty_body_is_not_refused_for_its_declared_type(
    client: Any, admin_headers: dict[str, str]
) -> None:
    # curl -d '' and Java's HttpURLConnection declare a form for an empty POST: nothing to
    # misread, and POST /runs/claim takes no body.
    response = await client.post(
        "/runs/claim",
        data=b"",
        headers={**admin_headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200, await response.text()


async def test_pipeline_and_hook_names_refuse_hidden_characters(
    client: Any, admin_headers: dict[str, str]
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    headers = {**JSON_HEADERS, **admin_headers}
    for path, body in (
        (
            f"/environments/{environment['id']}/pipelines",
            {"name": "De\ufeffploy", "resource_type": "app", "resource_id": 1, "action_type": "d"},
        ),
        (f"/pipelines/{pipeline['id']}/hooks/incoming", {"name": "h\u2060", "action_type": "d"}),
        (
            f"/pipelines/{pipeline['id']}/hooks/outgoing",
            {
                "name": "n\u200e",
                "target_url": "https://x.example/",
                "trigger_when": {"events": ["run.completed"]},
            },
        ),
    ):
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 422, (path, await response.text())
        assert list((await _json(response))["errors"]) == ["name"]
