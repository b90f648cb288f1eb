"""The seed's "Required Permissions": a non-admin with Application View + Hook Add in the
environment can follow the guide (login, create the hook with the seed body, list the hooks).

The seed's table names ``Application: View`` and ``Hook: Add``; in hookgate those are
``application:read`` and ``hook:create``, and a role must also hold what they imply
(``environment:read``, ``hook:read``) — the role API says so when they are left out.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.storage.database import Database
from tests.integration.access_helpers import call, create_environment, ok
from tests.integration.management_helpers import JSON_HEADERS, SEED_CREATE_BODY

SEED_PERMISSIONS = ["application:read", "hook:create"]
IMPLIED = ["environment:read", "hook:read"]
PASSWORD = "member password 123"


async def _setup(
    client: Any, admin: dict[str, str], permissions: list[str]
) -> tuple[int, int, dict[str, str]]:
    """(environment id, pipeline id, headers of a logged-in member holding ``permissions``)."""
    env_id = await create_environment(client, admin)
    pipeline = await ok(
        client,
        "POST",
        f"/environments/{env_id}/pipelines",
        admin,
        {
            "name": "Deploy",
            "resource_type": "application",
            "resource_id": 7,
            "action_type": "deploy",
        },
    )
    user = await ok(
        client, "POST", "/users", admin, {"email": "dev@example.com", "password": PASSWORD}
    )
    role = await ok(client, "POST", "/roles", admin, {"name": "r", "permissions": permissions})
    team = await ok(client, "POST", "/teams", admin, {"name": "devs"})
    await ok(client, "POST", f"/teams/{team['id']}/members", admin, {"user_id": user["id"]})
    await ok(
        client,
        "POST",
        f"/environments/{env_id}/teams/{team['id']}/link",
        admin,
        {"role_id": role["id"]},
    )
    # Step 1 of the seed: POST /users/login, keep access_token.
    login = await ok(
        client,
        "POST",
        "/users/login",
        JSON_HEADERS,
        {"email": "dev@example.com", "password": PASSWORD},
        status=200,
    )
    return env_id, pipeline["id"], {"Authorization": f"Bearer {login['access_token']}"}


async def _create_hook(client: Any, pipeline_id: int, member: dict[str, str]) -> Any:
    # Step 2 of the seed, with its body byte for byte.
    return await client.post(
        f"/pipelines/{pipeline_id}/hooks/incoming",
        data=SEED_CREATE_BODY,
        headers={**JSON_HEADERS, **member},
    )


async def test_the_seed_pair_alone_is_rejected_naming_the_implied_permissions(
    client: Any, admin_headers: dict[str, str]
) -> None:
    status, body = await call(
        client, "POST", "/roles", admin_headers, {"name": "seed", "permissions": SEED_PERMISSIONS}
    )
    assert status == 422
    assert body["errors"]["permissions"] == [
        "'application:read' requires 'environment:read'; add the implied permission(s) to the role",
        "'hook:create' requires 'environment:read', 'hook:read'; "
        "add the implied permission(s) to the role",
    ]


async def test_seed_flow_as_a_member_with_application_view_and_hook_add(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    env_id, pipeline_id, member = await _setup(client, admin_headers, SEED_PERMISSIONS + IMPLIED)
    response = await _create_hook(client, pipeline_id, member)
    assert response.status == 201, await response.text()
    hook = await response.json()
    assert hook["url"].endswith(f"/hooks/incoming/{hook['id']}")
    assert hook["secret"] and hook["secret"] != "********"
    assert hook["name"] == "Deploy `main` branch"

    # Step 3: list the pipeline's hooks; the new one is there, its secret masked.
    status, listed = await call(client, "GET", f"/pipelines/{pipeline_id}/hooks", member)
    assert status == 200
    assert [h["id"] for h in listed] == [hook["id"]]
    assert listed[0]["secret"] != hook["secret"]

    # Exactly what the guide needs: nothing more (e.g. no pipeline changes).
    status, body = await call(client, "DELETE", f"/pipelines/{pipeline_id}", member)
    assert (status, body["message"]) == (
        403,
        f"missing permission 'pipeline:delete' in environment {env_id}",
    )


@pytest.mark.parametrize(
    ("permissions", "missing"),
    [
        (["environment:read", "application:read", "hook:read"], "'hook:create'"),
        (
            ["environment:read", "hook:read", "hook:update", "hook:delete"],
            "'application:read', 'hook:create'",
        ),
        (["environment:read", "hook:create", "hook:read"], "'application:read'"),
    ],
)
async def test_seed_flow_without_a_required_permission_is_403_naming_it(
    client: Any, admin_headers: dict[str, str], permissions: list[str], missing: str
) -> None:
    env_id, pipeline_id, member = await _setup(client, admin_headers, permissions)
    response = await _create_hook(client, pipeline_id, member)
    assert response.status == 403
    body = await response.json()
    assert body["message"] == f"missing permission {missing} in environment {env_id}"
    assert body["errors"] is None
    # Listing needs only hook:read, which every one of these roles holds.
    status, listed = await call(client, "GET", f"/pipelines/{pipeline_id}/hooks", member)
    assert (status, listed) == (200, [])


async def test_listing_hooks_needs_hook_read(client: Any, admin_headers: dict[str, str]) -> None:
    env_id, pipeline_id, member = await _setup(
        client, admin_headers, ["environment:read", "application:read"]
    )
    status, body = await call(client, "GET", f"/pipelines/{pipeline_id}/hooks", member)
    assert (status, body["message"]) == (
        403,
        f"missing permission 'hook:read' in environment {env_id}",
    )
    response = await _create_hook(client, pipeline_id, member)
    assert response.status == 403
    assert "'hook:create'" in (await response.json())["message"]


async def test_seed_flow_in_another_environment_is_404(
    client: Any, admin_headers: dict[str, str]
) -> None:
    _, _, member = await _setup(client, admin_headers, SEED_PERMISSIONS + IMPLIED)
    other_env = await create_environment(client, admin_headers)
    other = await ok(
        client,
        "POST",
        f"/environments/{other_env}/pipelines",
        admin_headers,
        {
            "name": "Other",
            "resource_type": "application",
            "resource_id": 8,
            "action_type": "deploy",
        },
    )
    response = await _create_hook(client, other["id"], member)
    assert response.status == 404
    assert (await response.json())["message"] == "pipeline not found"
