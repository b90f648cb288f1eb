"""``Expect`` on management routes: 100-continue works as HTTP says, anything else is a 417 in
the API's JSON error shape (it was aiohttp's plain-text ``Unknown Expect``)."""

from __future__ import annotations

from typing import Any

import orjson

from tests.integration.management_helpers import expect_continue


def _create_environment(admin_headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    body = orjson.dumps({"name": "expecting"})
    headers = {
        **admin_headers,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Request-Id": "expect-test-1",
    }
    return headers, body


async def test_100_continue_is_answered_and_the_request_handled(
    client: Any, admin_headers: dict[str, str]
) -> None:
    headers, body = _create_environment(admin_headers)
    statuses, answer_headers, answer = await expect_continue(client, "/environments", headers, body)
    assert statuses == [100, 201], answer
    assert orjson.loads(answer)["name"] == "expecting"
    assert answer_headers["x-request-id"] == "expect-test-1"


async def test_another_expectation_is_a_json_417_naming_it(
    client: Any, admin_headers: dict[str, str]
) -> None:
    headers, body = _create_environment(admin_headers)
    statuses, answer_headers, answer = await expect_continue(
        client, "/environments", headers, body, expect="something-else"
    )
    assert statuses == [417]
    assert answer_headers["content-type"].startswith("application/json")
    assert orjson.loads(answer) == {
        "message": "Expect 'something-else' is not supported: only 100-continue is",
        "errors": None,
    }
    assert answer_headers["x-request-id"] == "expect-test-1"
    assert answer_headers["cache-control"] == "no-store"
    assert answer_headers["connection"] == "close"  # the body held back will not come
    listed = await client.get("/environments", headers=admin_headers)
    assert await listed.json() == []  # nothing was created
