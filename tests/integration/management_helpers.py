"""Helpers for management API tests: environments, pipelines and non-admin members.

Roles, teams and links are written with plain SQL so these tests depend only on the permission
*resolution* (gateway.management.permissions), not on the roles/teams API.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from yarl import URL

from gateway import accounts
from gateway.config import Config
from gateway.storage.database import Database
from tests.seed import SEED_CREATE_BODY

__all__ = ["SEED_CREATE_BODY"]  # the seed hook's body, for the tests that import it from here

MEMBER_PASSWORD = "member password 123"

JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


async def make_environment(client: Any, headers: dict[str, str], name: str = "") -> dict[str, Any]:
    """Create an environment as ``headers`` (an admin) and return its JSON."""
    response = await client.post(
        "/environments", json={"name": name or f"env-{uuid.uuid4().hex[:8]}"}, headers=headers
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def make_pipeline(
    client: Any, headers: dict[str, str], environment_id: int, **overrides: Any
) -> dict[str, Any]:
    """Create a deploy pipeline in the environment and return its JSON."""
    payload = {
        "name": "Deploy API",
        "resource_type": "application",
        "resource_id": 42,
        "action_type": "deploy",
        **overrides,
    }
    response = await client.post(
        f"/environments/{environment_id}/pipelines", json=payload, headers=headers
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def make_seed_hook(client: Any, headers: dict[str, str], pipeline_id: int) -> dict[str, Any]:
    """Create the seed's hook on a pipeline and return the create response (with the secret)."""
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/incoming",
        data=SEED_CREATE_BODY,
        headers={**JSON_HEADERS, **headers},
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def make_member(
    client: Any,
    db: Database,
    config: Config,
    database_dsn: str,
    environment_id: int | None,
    permissions: list[str],
    email: str = "",
) -> dict[str, str]:
    """A non-admin user whose only team is linked to ``environment_id`` (None: to nothing) with
    a role of exactly ``permissions``; returns their Authorization header."""
    email = email or f"member-{uuid.uuid4().hex[:8]}@example.com"
    user = await accounts.create_user(db, config.auth, email, MEMBER_PASSWORD)
    conn = await asyncpg.connect(database_dsn)
    try:
        role_id = await conn.fetchval(
            "INSERT INTO roles (name, permissions) VALUES ($1, $2) RETURNING id",
            f"role-{uuid.uuid4().hex[:8]}",
            permissions,
        )
        team_id = await conn.fetchval(
            "INSERT INTO teams (name) VALUES ($1) RETURNING id", f"team-{uuid.uuid4().hex[:8]}"
        )
        await conn.execute("INSERT INTO team_members VALUES ($1, $2)", team_id, user.id)
        if environment_id is not None:
            await conn.execute(
                "INSERT INTO environment_teams VALUES ($1, $2, $3)",
                environment_id,
                team_id,
                role_id,
            )
    finally:
        await conn.close()
    response = await client.post("/users/login", json={"email": email, "password": MEMBER_PASSWORD})
    assert response.status == 200, await response.text()
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


def parse_links(header: str) -> dict[str, dict[str, str]]:
    """RFC 8288 Link header -> {rel: query parameters of its URL}."""
    links: dict[str, dict[str, str]] = {}
    for part in header.split(","):
        target, _, params = part.strip().partition(";")
        rel = params.strip().removeprefix('rel="').removesuffix('"')
        links[rel] = dict(URL(target.strip().strip("<>")).query)
    return links


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off the wire: status, headers (lower-case names) and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status_line, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", 0))
    body = await asyncio.wait_for(reader.readexactly(length), timeout=10) if length else b""
    return int(status_line.split()[1]), headers, body


async def expect_continue(
    client: Any, path: str, headers: dict[str, str], body: bytes, expect: str = "100-continue"
) -> tuple[list[int], dict[str, str], bytes]:
    """POST as curl does a large body: ``Expect: 100-continue``, the body sent only once a 100
    came. The statuses received (a 100 first, or none), the final answer's headers and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nExpect: {expect}\r\n{head}\r\n".encode()
        )
        statuses: list[int] = []
        status, answer_headers, answer = await read_answer(reader)
        statuses.append(status)
        if status == 100:
            writer.write(body)
            status, answer_headers, answer = await read_answer(reader)
            statuses.append(status)
        return statuses, answer_headers, answer
    finally:
        writer.close()
