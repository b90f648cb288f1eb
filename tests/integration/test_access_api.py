"""Roles, teams, members and environment links through the HTTP API, and their effect."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.permissions_catalog import PERMISSIONS
from gateway.storage.database import Database
from tests.integration.access_helpers import call, create_environment, grant, make_user, ok

SEED_ROLE = ["environment:read", "application:read", "hook:create", "hook:read"]


@pytest.fixture
async def admin(db: Database) -> dict[str, str]:
    _, headers = await make_user(db, "root@example.com", is_admin=True)
    return headers


async def test_role_lifecycle(client: Any, admin: dict[str, str]) -> None:
    created = await ok(
        client, "POST", "/roles", admin, {"name": "deployer", "permissions": SEED_ROLE[::-1]}
    )
    assert created["name"] == "deployer"
    assert created["permissions"] == SEED_ROLE  # catalogue order
    role_id = created["id"]
    assert await ok(client, "GET", f"/roles/{role_id}", admin, status=200) == created
    listed = await ok(client, "GET", "/roles", admin, status=200)
    assert [r["id"] for r in listed] == [role_id]
    updated = await ok(
        client,
        "PUT",
        f"/roles/{role_id}",
        admin,
        {"name": "viewer", "permissions": ["environment:read"]},
        status=200,
    )
    assert updated["name"] == "viewer" and updated["permissions"] == ["environment:read"]
    assert await call(client, "DELETE", f"/roles/{role_id}", admin) == (204, None)
    status, body = await call(client, "GET", f"/roles/{role_id}", admin)
    assert (status, body["message"]) == (404, f"role {role_id} not found")


async def test_role_with_unknown_permission_is_422_listing_allowed(
    client: Any, admin: dict[str, str]
) -> None:
    status, body = await call(
        client, "POST", "/roles", admin, {"name": "r", "permissions": ["hook:add"]}
    )
    assert status == 422
    assert body["message"] == "The given data was invalid: permissions"
    [message] = body["errors"]["permissions"]
    assert message == f"unknown permission 'hook:add'; allowed: {', '.join(PERMISSIONS)}"


async def test_role_missing_an_implied_permission_is_422_naming_it(
    client: Any, admin: dict[str, str]
) -> None:
    status, body = await call(
        client,
        "POST",
        "/roles",
        admin,
        {"name": "r", "permissions": ["environment:read", "application:read", "hook:create"]},
    )
    assert status == 422
    assert body["errors"] == {
        "permissions": [
            "'hook:create' requires 'hook:read'; add the implied permission(s) to the role"
        ]
    }
    # The same rule applies when a role is replaced.
    role = await ok(client, "POST", "/roles", admin, {"name": "r", "permissions": SEED_ROLE})
    status, body = await call(
        client,
        "PUT",
        f"/roles/{role['id']}",
        admin,
        {"name": "r", "permissions": ["environment:read", "hook:delete", "hook:read"]},
    )
    assert status == 422
    assert "'hook:delete' requires 'hook:update'" in body["errors"]["permissions"][0]


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"name": ["is required"], "permissions": ["is required"]}),
        (
            {"name": "r", "permissions": []},
            {"permissions": ["must name at least one permission (e.g. 'environment:read')"]},
        ),
        (
            {"name": "r", "permissions": "hook:read"},
            {"permissions": ["must be an array of permission strings"]},
        ),
        (
            {"name": "r", "permissions": ["environment:read"], "x": 1},
            {"x": ["unknown field; allowed: name, permissions"]},
        ),
    ],
)
async def test_role_body_validation(
    client: Any, admin: dict[str, str], payload: dict[str, Any], errors: dict[str, Any]
) -> None:
    status, body = await call(client, "POST", "/roles", admin, payload)
    assert status == 422
    assert body["errors"] == errors


async def test_duplicate_role_and_team_names_are_409(client: Any, admin: dict[str, str]) -> None:
    await ok(client, "POST", "/roles", admin, {"name": "r", "permissions": ["environment:read"]})
    status, body = await call(
        client, "POST", "/roles", admin, {"name": "r", "permissions": ["environment:read"]}
    )
    assert (status, body["message"]) == (409, "a role named 'r' already exists")
    await ok(client, "POST", "/teams", admin, {"name": "t"})
    status, body = await call(client, "POST", "/teams", admin, {"name": "t"})
    assert (status, body["message"]) == (409, "a team named 't' already exists")


async def test_deleting_a_role_in_use_is_409(client: Any, admin: dict[str, str], db: Any) -> None:
    env_id = await create_environment(client, admin)
    user_id, _ = await make_user(db, "dev@example.com")
    ids = await grant(client, admin, env_id, user_id, ["environment:read"])
    status, body = await call(client, "DELETE", f"/roles/{ids['role_id']}", admin)
    assert status == 409
    assert body["message"].startswith(
        f"role {ids['role_id']} is in use by team links in environment(s) {env_id}"
    )
    path = f"/environments/{env_id}/teams/{ids['team_id']}/link"
    assert await call(client, "DELETE", path, admin) == (204, None)
    assert await call(client, "DELETE", f"/roles/{ids['role_id']}", admin) == (204, None)


async def test_team_members(client: Any, admin: dict[str, str], db: Any) -> None:
    team = await ok(client, "POST", "/teams", admin, {"name": "ops"})
    assert team["member_count"] == 0
    user_id, _ = await make_user(db, "dev@example.com")
    added = await ok(client, "POST", f"/teams/{team['id']}/members", admin, {"user_id": user_id})
    assert added["id"] == user_id and added["email"] == "dev@example.com"
    status, body = await call(
        client, "POST", f"/teams/{team['id']}/members", admin, {"user_id": user_id}
    )
    assert status == 409
    assert body["message"] == f"user {user_id} already is a member of team {team['id']}"
    status, body = await call(
        client, "POST", f"/teams/{team['id']}/members", admin, {"user_id": 999999}
    )
    assert (status, body["errors"]) == (422, {"user_id": ["no user with id 999999"]})
    members = await ok(client, "GET", f"/teams/{team['id']}/members", admin, status=200)
    assert [m["id"] for m in members] == [user_id]
    assert (await ok(client, "GET", f"/teams/{team['id']}", admin, status=200))["member_count"] == 1
    path = f"/teams/{team['id']}/members/{user_id}"
    assert await call(client, "DELETE", path, admin) == (204, None)
    status, _ = await call(client, "DELETE", path, admin)
    assert status == 404
    assert await ok(client, "GET", f"/teams/{team['id']}/members", admin, status=200) == []
    assert await call(client, "DELETE", f"/teams/{team['id']}", admin) == (204, None)
    status, body = await call(client, "GET", f"/teams/{team['id']}", admin)
    assert (status, body["message"]) == (404, f"team {team['id']} not found")


@pytest.mark.parametrize("path", ["/teams/abc", "/teams/0", "/roles/99999999999999999999"])
async def test_malformed_ids_are_404(client: Any, admin: dict[str, str], path: str) -> None:
    status, _ = await call(client, "GET", path, admin)
    assert status == 404


async def test_link_relink_and_unlink_take_effect_immediately(
    client: Any, admin: dict[str, str], db: Any
) -> None:
    env_id = await create_environment(client, admin)
    user_id, member = await make_user(db, "dev@example.com")
    pipeline = {"name": "p", "resource_type": "application", "resource_id": 1, "action_type": "x"}
    pipelines_path = f"/environments/{env_id}/pipelines"

    # Not linked: the environment does not exist for the member.
    status, _ = await call(client, "POST", pipelines_path, member, pipeline)
    assert status == 404

    ids = await grant(client, admin, env_id, user_id, ["environment:read"])
    status, body = await call(client, "POST", pipelines_path, member, pipeline)
    assert status == 403
    assert body["message"] == f"missing permission 'pipeline:create' in environment {env_id}"

    writer = await ok(
        client,
        "POST",
        "/roles",
        admin,
        {"name": "writer", "permissions": ["environment:read", "pipeline:create", "pipeline:read"]},
    )
    link_path = f"/environments/{env_id}/teams/{ids['team_id']}/link"
    relinked = await ok(client, "POST", link_path, admin, {"role_id": writer["id"]}, status=200)
    assert relinked == {
        "environment_id": env_id,
        "team": {"id": ids["team_id"], "name": relinked["team"]["name"]},
        "role": {
            "id": writer["id"],
            "name": "writer",
            "permissions": ["environment:read", "pipeline:create", "pipeline:read"],
        },
    }
    status, _ = await call(client, "POST", pipelines_path, member, pipeline)
    assert status == 201

    listed = await ok(client, "GET", f"/environments/{env_id}/teams", admin, status=200)
    assert [link["role"]["id"] for link in listed] == [writer["id"]]

    assert await call(client, "DELETE", link_path, admin) == (204, None)
    status, _ = await call(client, "GET", pipelines_path, member)
    assert status == 404
    assert await ok(client, "GET", f"/environments/{env_id}/teams", admin, status=200) == []
    status, body = await call(client, "DELETE", link_path, admin)
    assert (status, body["message"]) == (
        404,
        f"team {ids['team_id']} is not linked to environment {env_id}",
    )


async def test_link_validation(client: Any, admin: dict[str, str]) -> None:
    env_id = await create_environment(client, admin)
    team = await ok(client, "POST", "/teams", admin, {"name": "t"})
    path = f"/environments/{env_id}/teams/{team['id']}/link"
    status, body = await call(client, "POST", path, admin, {"role_id": 424242})
    assert (status, body["errors"]) == (422, {"role_id": ["no role with id 424242"]})
    status, body = await call(client, "POST", path, admin, {})
    assert (status, body["errors"]) == (422, {"role_id": ["is required"]})
    status, body = await call(
        client, "POST", f"/environments/999999/teams/{team['id']}/link", admin, {"role_id": 1}
    )
    assert (status, body["message"]) == (404, "environment 999999 not found")
    status, body = await call(
        client, "POST", f"/environments/{env_id}/teams/999999/link", admin, {"role_id": 1}
    )
    assert (status, body["message"]) == (404, "team 999999 not found")


async def test_permissions_are_the_union_over_teams(
    client: Any, admin: dict[str, str], db: Any
) -> None:
    env_id = await create_environment(client, admin)
    other_env = await create_environment(client, admin)
    user_id, member = await make_user(db, "dev@example.com")
    await grant(client, admin, env_id, user_id, ["environment:read", "pipeline:read"])
    await grant(
        client, admin, env_id, user_id, ["environment:read", "pipeline:create", "pipeline:read"]
    )
    # Permissions held in another environment do not leak into this one.
    await grant(client, admin, other_env, user_id, list(PERMISSIONS))
    pipeline = {"name": "p", "resource_type": "application", "resource_id": 1, "action_type": "x"}
    created = await ok(client, "POST", f"/environments/{env_id}/pipelines", member, pipeline)
    status, body = await call(client, "DELETE", f"/pipelines/{created['id']}", member)
    assert status == 403
    assert body["message"] == f"missing permission 'pipeline:delete' in environment {env_id}"


async def test_deleting_a_team_revokes_its_access(
    client: Any, admin: dict[str, str], db: Any
) -> None:
    env_id = await create_environment(client, admin)
    user_id, member = await make_user(db, "dev@example.com")
    ids = await grant(client, admin, env_id, user_id, ["environment:read"])
    assert (await call(client, "GET", f"/environments/{env_id}", member))[0] == 200
    assert await call(client, "DELETE", f"/teams/{ids['team_id']}", admin) == (204, None)
    assert (await call(client, "GET", f"/environments/{env_id}", member))[0] == 404


async def test_permission_catalogue_endpoint(client: Any, db: Any) -> None:
    _, member = await make_user(db, "dev@example.com")
    body = await ok(client, "GET", "/permissions", member, status=200)
    assert [p["name"] for p in body] == list(PERMISSIONS)
    assert {
        "name": "hook:delete",
        "requires": ["environment:read", "hook:read", "hook:update"],
    } in (body)


async def test_lists_check_permissions_once_not_per_item(
    client: Any, admin: dict[str, str], db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.storage import permissions as store

    calls: list[str] = []
    for name in ("permissions_in_environment", "visible_environment_ids"):
        real = getattr(store, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return await _real(*args)

        monkeypatch.setattr(store, name, counted)

    user_id, member = await make_user(db, "dev@example.com")
    env_ids = [await create_environment(client, admin) for _ in range(12)]
    for env_id in env_ids:
        await grant(client, admin, env_id, user_id, ["environment:read", "pipeline:read"])
    pipeline = {"name": "p", "resource_type": "application", "resource_id": 1, "action_type": "x"}
    for _ in range(12):
        await ok(client, "POST", f"/environments/{env_ids[0]}/pipelines", admin, pipeline)
    calls.clear()

    listed = await ok(client, "GET", "/environments?per_page=100", member, status=200)
    assert sorted(e["id"] for e in listed) == sorted(env_ids)
    assert calls == ["visible_environment_ids"]

    calls.clear()
    pipelines = await ok(client, "GET", f"/environments/{env_ids[0]}/pipelines", member, status=200)
    assert len(pipelines) == 12
    assert calls == ["permissions_in_environment"]


async def test_environment_list_shows_only_linked_environments(
    client: Any, admin: dict[str, str], db: Any
) -> None:
    mine, theirs = await create_environment(client, admin), await create_environment(client, admin)
    user_id, member = await make_user(db, "dev@example.com")
    _, stranger = await make_user(db, "stranger@example.com")
    await grant(client, admin, mine, user_id, ["environment:read"])
    assert [e["id"] for e in await ok(client, "GET", "/environments", member, status=200)] == [mine]
    assert await ok(client, "GET", "/environments", stranger, status=200) == []
    everything = await ok(client, "GET", "/environments", admin, status=200)
    assert sorted(e["id"] for e in everything) == sorted([mine, theirs])


async def test_a_page_past_the_end_still_counts_every_item(
    client: Any, admin: dict[str, str], db: Database
) -> None:
    # Users, roles, teams, members and environment links: a page past the end is empty but
    # X-Total-Count and the Link header's last page still count what exists.
    env_id = await create_environment(client, admin)
    user_id, _ = await make_user(db, "member@example.com")
    ids = await grant(client, admin, env_id, user_id, ["environment:read"])
    paths = {
        "/users": 2,  # root and member
        "/roles": 1,
        "/teams": 1,
        f"/teams/{ids['team_id']}/members": 1,
        f"/environments/{env_id}/teams": 1,
    }
    for path, total in paths.items():
        response = await client.get(f"{path}?page=9&per_page=1", headers=admin)
        assert response.status == 200, path
        assert await response.json() == [], path
        assert response.headers["X-Total-Count"] == str(total), path
        assert f'page={total}&per_page=1>; rel="last"' in response.headers["Link"], path
        first = await client.get(f"{path}?page=1&per_page=1", headers=admin)
        assert len(await first.json()) == 1 and first.headers["X-Total-Count"] == str(total)


async def test_removing_a_member_or_a_link_of_a_missing_team_names_the_team(
    client: Any, admin: dict[str, str], db: Any
) -> None:
    """A team that does not exist is ``team N not found``, as on every other team route; it
    was ``user U is not a member of team N`` / ``team N is not linked to environment E``."""
    env_id = await create_environment(client, admin)
    user_id = (await ok(client, "GET", "/users/me", admin, status=200))["id"]
    for path in (f"/teams/987654/members/{user_id}", f"/environments/{env_id}/teams/987654/link"):
        status, body = await call(client, "DELETE", path, admin)
        assert (status, body["message"]) == (404, "team 987654 not found"), path
