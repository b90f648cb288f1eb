"""A personal token created by a bearer token that is revoked while the request is on its way.

The request is authenticated first and writes the new token a moment later; a revocation that
commits in between (a password change ending the sessions, or the owner revoking a leaked
personal token) must refuse the creation: the revoked token must not mint a live one once its
revocation was answered. Another connection holds the user's row (as a password change or
another creation does) so that the request waits after it was authenticated; the revocation
commits while it waits.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.config import Config
from gateway.security import tokens
from gateway.storage import users
from gateway.storage.database import Database
from tests.integration.access_helpers import Headers, call, make_user
from tests.integration.ops_helpers import reload_to, with_section
from tests.integration.race_helpers import behind_a_concurrent_change

HOLD_USER = "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE"


async def _personal_tokens(db: Database, user_id: int) -> list[str]:
    return [t["name"] for t in await users.list_personal_tokens(db, user_id)]


async def _owner(db: Database) -> tuple[int, Headers, Headers]:
    """A user with a personal token (named "test") and a login session: (id, the personal
    token's headers, the session's)."""
    user_id, personal = await make_user(db, "owner@example.com")
    access = tokens.new_token("access")
    await users.insert_token(db, user_id, "access", tokens.token_hash(access), "", 3600)
    return user_id, personal, {"Authorization": f"Bearer {access}"}


@pytest.mark.parametrize("limit", [50, 0], ids=["limit", "no-limit"])
async def test_a_session_ended_by_a_password_change_meanwhile_creates_no_personal_token(
    client: Any, db: Database, config: Config, database_dsn: str, limit: int
) -> None:
    """Without a limit too ([auth] max_personal_tokens = 0): the creation then takes the user's
    row all the same, before its bearer token, as the password change does (the other order
    deadlocks with it)."""
    if limit != config.auth.max_personal_tokens:
        reload_to(client, with_section(config, "auth", max_personal_tokens=limit))
    user_id, _, session = await _owner(db)

    async def end_sessions(other: asyncpg.Connection) -> None:  # as the password change does
        await other.execute(
            "UPDATE auth_tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND kind IN ('access', 'refresh') AND revoked_at IS NULL",
            user_id,
        )

    status, answer = await behind_a_concurrent_change(
        database_dsn,
        HOLD_USER,
        (user_id,),
        call(client, "POST", "/users/me/tokens", session, {"name": "kept by a thief"}),
        end_sessions,
    )
    assert status == 401, answer
    assert await _personal_tokens(db, user_id) == ["test"]  # make_user's own


async def test_a_personal_token_revoked_meanwhile_creates_no_other(
    client: Any, db: Database, database_dsn: str
) -> None:
    user_id, leaked, session = await _owner(db)
    [listed] = await users.list_personal_tokens(db, user_id)

    async def owner_revokes(_: asyncpg.Connection) -> None:
        revoked, _body = await call(
            client,
            "DELETE",
            f"/users/me/tokens/{listed['id']}",
            session,
        )
        assert revoked == 204

    status, answer = await behind_a_concurrent_change(
        database_dsn,
        HOLD_USER,
        (user_id,),
        call(client, "POST", "/users/me/tokens", leaked, {"name": "kept by a thief"}),
        owner_revokes,
    )
    assert status == 401, answer
    assert await _personal_tokens(db, user_id) == ["test"]
