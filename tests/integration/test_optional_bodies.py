"""Endpoints whose JSON body is optional (secret rotations, logout, claim) take "no body" in
every form a client sends it: no body at all, a chunked body of no bytes (what Node's http
module sends for a POST without one) or a body of white space only. A body with something in
it is still read, and refused when it is not a JSON object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.integration.access_world import OUTGOING_HOOK_BODY
from tests.integration.management_helpers import make_environment, make_pipeline, make_seed_hook


async def _no_bytes() -> AsyncIterator[bytes]:
    """A request body sent chunked, ending before any chunk."""
    return
    yield b""  # pragma: no cover - makes this an async generator


NO_BODIES = {
    "chunked-empty": lambda: _no_bytes(),
    "white-space": lambda: b" \r\n\t",
}


@pytest.fixture
async def paths(client: Any, admin_headers: dict[str, str]) -> dict[str, tuple[str, int]]:
    """(path, success status) of each endpoint with an optional body."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    incoming = await make_seed_hook(client, admin_headers, pipeline["id"])
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/outgoing",
        json={**OUTGOING_HOOK_BODY, "requires_secret": True},
        headers=admin_headers,
    )
    assert response.status == 201, await response.text()
    outgoing = await response.json()
    return {
        "rotate-incoming": (f"/hooks/incoming/{incoming['id']}/secret/rotate", 200),
        "rotate-outgoing": (f"/hooks/outgoing/{outgoing['id']}/secret/rotate", 200),
        "claim": ("/runs/claim", 200),
        "logout": ("/users/logout", 204),
    }


async def _headers(client: Any, endpoint: str, admin_headers: dict[str, str]) -> dict[str, str]:
    if endpoint != "logout":
        return admin_headers
    # Logging out ends the access token used: a session of its own for each call.
    response = await client.post(
        "/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status == 200, await response.text()
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


@pytest.mark.parametrize("endpoint", ["rotate-incoming", "rotate-outgoing", "claim", "logout"])
@pytest.mark.parametrize("form", sorted(NO_BODIES))
async def test_an_optional_body_may_be_empty_in_any_form(
    client: Any,
    admin_headers: dict[str, str],
    paths: dict[str, tuple[str, int]],
    endpoint: str,
    form: str,
) -> None:
    path, status = paths[endpoint]
    headers = await _headers(client, endpoint, admin_headers)
    response = await client.post(path, data=NO_BODIES[form](), headers=headers)
    assert response.status == status, await response.text()


@pytest.mark.parametrize("endpoint", ["rotate-incoming", "rotate-outgoing", "claim", "logout"])
async def test_an_optional_body_that_is_not_an_object_is_still_refused(
    client: Any, admin_headers: dict[str, str], paths: dict[str, tuple[str, int]], endpoint: str
) -> None:
    path, _ = paths[endpoint]
    headers = await _headers(client, endpoint, admin_headers)
    response = await client.post(
        path, data=b" [] ", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 400, await response.text()
    assert (await response.json())["message"] == "request body must be a JSON object, got an array"
