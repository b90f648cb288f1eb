"""Two administrators demoting (or disabling) each other at once.

Each request is authorised by its caller's row as read when it started, and refuses only a
change of the caller themselves; without more, both changes commit and the installation is left
without an administrator, a state neither order of the two requests allows. Another connection
makes one change and holds it uncommitted while the other request runs, then commits once that
request waits: the request must decide on its caller as they are then.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.storage.database import Database
from tests.integration.access_helpers import call, make_user, ok
from tests.integration.race_helpers import behind_a_concurrent_change


async def _active_admins(database_dsn: str) -> list[int]:
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT id FROM users WHERE is_admin AND disabled_at IS NULL ORDER BY id"
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows]


@pytest.mark.parametrize(
    ("change", "body", "refused"),
    [
        # The second demotes the first, who demotes the second.
        ("UPDATE users SET is_admin = false WHERE id = $1", {"is_admin": False}, 403),
        # The second disables the first, who disables the second.
        ("UPDATE users SET disabled_at = now() WHERE id = $1", {"is_active": False}, 401),
    ],
    ids=["demote", "disable"],
)
async def test_an_admin_changed_meanwhile_cannot_change_the_one_who_changed_them(
    client: Any,
    db: Database,
    database_dsn: str,
    change: str,
    body: dict[str, bool],
    refused: int,
) -> None:
    first, first_headers = await make_user(db, "first@example.com", is_admin=True)
    second, _ = await make_user(db, "second@example.com", is_admin=True)
    status, answer = await behind_a_concurrent_change(
        database_dsn, change, (first,), call(client, "PUT", f"/users/{second}", first_headers, body)
    )
    assert status == refused, answer
    assert await _active_admins(database_dsn) == [second]


async def test_the_lower_id_demoting_waits_for_the_higher_one_as_well(
    client: Any, db: Database, database_dsn: str
) -> None:
    """The other way round (the caller's id is the higher one): the rows are locked in id
    order, so the request waits on the changed user's row first, then finds itself demoted."""
    first, _ = await make_user(db, "first@example.com", is_admin=True)
    second, second_headers = await make_user(db, "second@example.com", is_admin=True)
    status, answer = await behind_a_concurrent_change(
        database_dsn,
        "UPDATE users SET is_admin = false WHERE id = $1",
        (second,),
        call(client, "PUT", f"/users/{first}", second_headers, {"is_admin": False}),
    )
    assert status == 403, answer
    assert answer["message"] == "this action requires an administrator"
    assert await _active_admins(database_dsn) == [first]


async def test_an_admin_demoted_meanwhile_cannot_promote_themselves_back(
    client: Any, db: Database, database_dsn: str
) -> None:
    """Their request waits for the demotion (it writes the same row) and then finds them no
    longer an administrator, instead of undoing it."""
    first, _ = await make_user(db, "first@example.com", is_admin=True)
    second, second_headers = await make_user(db, "second@example.com", is_admin=True)
    status, answer = await behind_a_concurrent_change(
        database_dsn,
        "UPDATE users SET is_admin = false WHERE id = $1",  # the first demotes the second
        (second,),
        call(client, "PUT", f"/users/{second}", second_headers, {"is_admin": True}),
    )
    assert status == 403, answer
    assert answer["message"] == "this action requires an administrator"
    assert await _active_admins(database_dsn) == [first]


async def test_an_admin_demoted_meanwhile_creates_no_user(
    client: Any, db: Database, database_dsn: str
) -> None:
    """Their request (hashing the new user's password takes a good part of a second) waits
    for the demotion, and then creates no account, an administrator's least of all."""
    first, first_headers = await make_user(db, "first@example.com", is_admin=True)
    second, _ = await make_user(db, "second@example.com", is_admin=True)
    body = {"email": "spare@example.com", "password": "a long enough password", "is_admin": True}
    status, answer = await behind_a_concurrent_change(
        database_dsn,
        "UPDATE users SET is_admin = false WHERE id = $1",  # the second demotes the first
        (first,),
        call(client, "POST", "/users", first_headers, body),
    )
    assert status == 403, answer
    assert await _active_admins(database_dsn) == [second]


READ = ["environment:read"]


async def _grants(database_dsn: str) -> tuple[int, int, list[str]]:
    """(team members, environment links, the role's permissions) as committed."""
    conn = await asyncpg.connect(database_dsn)
    try:
        members = await conn.fetchval("SELECT count(*) FROM team_members")
        links = await conn.fetchval("SELECT count(*) FROM environment_teams")
        permissions = await conn.fetchval("SELECT permissions FROM roles")
    finally:
        await conn.close()
    return members, links, sorted(permissions)


@pytest.mark.parametrize("grant", ["member", "link", "role"])
async def test_an_admin_demoted_meanwhile_grants_nothing(
    client: Any, db: Database, database_dsn: str, grant: str
) -> None:
    """Adding a member to a team, linking a team to an environment or widening a role, by an
    administrator demoted while the request ran (so that they would keep, through a team, the
    rights being taken away): refused, nothing granted."""
    first, first_headers = await make_user(db, "first@example.com", is_admin=True)
    member, _ = await make_user(db, "member@example.com")
    role = await ok(client, "POST", "/roles", first_headers, {"name": "r", "permissions": READ})
    team = await ok(client, "POST", "/teams", first_headers, {"name": "t"})
    environment = await ok(client, "POST", "/environments", first_headers, {"name": "e"})
    method, path, body = {
        "member": ("POST", f"/teams/{team['id']}/members", {"user_id": member}),
        "link": (
            "POST",
            f"/environments/{environment['id']}/teams/{team['id']}/link",
            {"role_id": role["id"]},
        ),
        "role": (
            "PUT",
            f"/roles/{role['id']}",
            {"name": "r", "permissions": [*READ, "pipeline:read"]},
        ),
    }[grant]
    status, answer = await behind_a_concurrent_change(
        database_dsn,
        "UPDATE users SET is_admin = false WHERE id = $1",
        (first,),
        call(client, method, path, first_headers, body),
    )
    assert status == 403, answer
    assert await _grants(database_dsn) == (0, 0, READ)
