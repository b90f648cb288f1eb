"""Helpers for permission tests: users with bearer tokens, and granting roles through the API."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from gateway.security import tokens
from gateway.storage import users
from gateway.storage.database import Database

_counter = itertools.count(1)

Headers = dict[str, str]


async def make_user(db: Database, email: str, *, is_admin: bool = False) -> tuple[int, Headers]:
    """A user (without a usable password: no KDF cost) and headers carrying a personal token."""
    user = await users.insert_user(db, email, email.split("@")[0], "!unusable", is_admin)
    token = tokens.new_token("personal")
    await users.insert_token(db, user.id, "personal", tokens.token_hash(token), "test", None)
    return user.id, {"Authorization": f"Bearer {token}"}


async def call(
    client: Any, method: str, path: str, headers: Headers | None = None, json: Any = None
) -> tuple[int, Any]:
    """(status, decoded JSON body or None) for one request."""
    response = await client.request(method, path, headers=headers or {}, json=json)
    text = await response.text()
    return response.status, (orjson.loads(text) if text else None)


async def ok(
    client: Any, method: str, path: str, headers: Headers, json: Any = None, status: int = 201
) -> Any:
    """The JSON body of a request that must answer ``status`` (setup steps)."""
    got, body = await call(client, method, path, headers, json)
    assert got == status, f"setup {method} {path} -> {got}: {body}"
    return body


async def create_environment(client: Any, admin: Headers, name: str | None = None) -> int:
    """A new environment's id."""
    name = name or f"env-{next(_counter)}"
    body = await ok(client, "POST", "/environments", admin, {"name": name})
    env_id: int = body["id"]
    return env_id


async def grant(
    client: Any,
    admin: Headers,
    environment_id: int,
    user_id: int,
    permissions: list[str],
) -> dict[str, int]:
    """Make ``user_id`` a member of a new team linked to the environment with a new role."""
    n = next(_counter)
    role = await ok(
        client, "POST", "/roles", admin, {"name": f"role-{n}", "permissions": permissions}
    )
    team = await ok(client, "POST", "/teams", admin, {"name": f"team-{n}"})
    await ok(client, "POST", f"/teams/{team['id']}/members", admin, {"user_id": user_id})
    await ok(
        client,
        "POST",
        f"/environments/{environment_id}/teams/{team['id']}/link",
        admin,
        {"role_id": role["id"]},
    )
    return {"role_id": role["id"], "team_id": team["id"]}
