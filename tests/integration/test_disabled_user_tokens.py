"""A disabled user gets no token from any release sharing the database (upgrade review 21,
finding 1): releases from before the user lifecycle do not know users.disabled_at, so the
database refuses their token inserts; their tokens from before the disable are revoked, which
they check. The old release's statements below are copied from its queries.sql (498b390,
2a69181)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway import accounts
from gateway.config import Config
from gateway.exceptions import InvalidCredentials, InvalidToken
from gateway.security import tokens
from gateway.storage import users
from gateway.storage.database import Database
from tests.integration.access_helpers import call, make_user, ok

EMAIL, PASSWORD = "carol@example.com", "carol's passphrase"

# What a release from before the user lifecycle runs to log in (no disabled_at anywhere).
OLD_USER_BY_EMAIL = (
    "SELECT id, email, name, password_hash, is_admin, created_at FROM users "
    "WHERE lower(email) = lower($1)"
)
OLD_TOKEN_INSERT = (
    "INSERT INTO auth_tokens (user_id, kind, token_hash, name, expires_at) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id, user_id, kind, name, created_at, expires_at"
)
OLD_TOKEN_AUTHENTICATE = """
UPDATE auth_tokens t SET last_used_at = now()
FROM users u
WHERE t.token_hash = $1 AND t.kind = ANY($2::text[]) AND t.user_id = u.id
  AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
RETURNING t.id AS token_id, t.kind, u.id, u.email, u.name, u.is_admin, u.created_at"""
OLD_TOKEN_REVOKE_BY_HASH = """
UPDATE auth_tokens SET revoked_at = now()
WHERE token_hash = $1 AND kind = $2 AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())
RETURNING user_id"""


async def _old_login(conn: asyncpg.Connection, email: str) -> None:
    """An older release's login once the password checked out: a new access token."""
    row = await conn.fetchrow(OLD_USER_BY_EMAIL, email)
    assert row is not None  # found, disabled or not
    digest = tokens.token_hash(tokens.new_token("access"))
    await conn.fetchrow(OLD_TOKEN_INSERT, row["id"], "access", digest, "", None)


async def test_an_older_release_cannot_log_in_or_use_the_tokens_of_a_disabled_user(
    client: Any, db: Database, database_dsn: str
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    created = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    status, pair = await call(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 200, pair
    conn = await asyncpg.connect(database_dsn)
    try:
        await _old_login(conn, EMAIL)  # an active user: the older release logs them in
        await ok(client, "PUT", f"/users/{created['id']}", admin, {"is_active": False}, 200)

        with pytest.raises(asyncpg.PostgresError) as refused:
            await _old_login(conn, EMAIL)
        assert refused.value.sqlstate == "HGU01"
        assert "is disabled" in str(refused.value)
        # Its tokens from before the disable: revoked, which the older release checks too.
        access = tokens.token_hash(pair["access_token"])
        assert await conn.fetch(OLD_TOKEN_AUTHENTICATE, access, ["access", "personal"]) == []
        refresh = tokens.token_hash(pair["refresh_token"])
        assert await conn.fetchval(OLD_TOKEN_REVOKE_BY_HASH, refresh, "refresh") is None
        live = "SELECT count(*) FROM auth_tokens WHERE user_id = $1 AND revoked_at IS NULL"
        assert await conn.fetchval(live, created["id"]) == 0
    finally:
        await conn.close()
    # This release refuses them as before, before the database has to.
    status, body = await call(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD}
    )
    assert (status, body["message"]) == (401, "Invalid email or password.")


async def test_a_token_written_while_the_user_is_being_disabled_is_refused(
    db: Database, database_dsn: str
) -> None:
    """The older release's login reads the user before the disable commits and inserts its
    token meanwhile: the insert waits for the disable, then is refused; it never slips in
    after the disable revoked the user's tokens."""
    user_id, _ = await make_user(db, "carol@example.com")
    disabling = await asyncpg.connect(database_dsn)
    old = await asyncpg.connect(database_dsn)
    try:
        async with disabling.transaction():
            await disabling.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user_id)
            login = asyncio.create_task(_old_login(old, EMAIL))
            waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
            while not await disabling.fetchval(waiting, old.get_server_pid()):
                assert not login.done(), login  # it must wait for the disable
                await asyncio.sleep(0.01)
            await disabling.execute(
                "UPDATE auth_tokens SET revoked_at = now() "
                "WHERE user_id = $1 AND revoked_at IS NULL",
                user_id,
            )
        with pytest.raises(asyncpg.PostgresError) as refused:
            await login
        assert refused.value.sqlstate == "HGU01"
        live = "SELECT count(*) FROM auth_tokens WHERE user_id = $1 AND revoked_at IS NULL"
        assert await old.fetchval(live, user_id) == 0
    finally:
        await disabling.close()
        await old.close()


async def test_this_release_answers_a_refused_token_as_it_answers_a_disabled_user(
    config: Config, db: Database, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the user is disabled between this release's own check and its token insert, the
    database's refusal becomes the answer a disabled user gets (401), never a 500."""
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    created = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    status, pair = await call(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 200, pair
    row_before = await users.user_for_login(db, EMAIL)
    # Disabled without its tokens revoked yet (as if the disable were still committing).
    await db.pool.execute("UPDATE users SET disabled_at = now() WHERE id = $1", created["id"])

    status, body = await call(
        client, "POST", "/users/refresh-token", {}, {"refresh_token": pair["refresh_token"]}
    )
    assert status == 401, body
    assert body["message"] == "the refresh token is invalid, expired or already used"

    async def read_before_the_disable(_db: Database, _email: str) -> Any:
        return row_before

    monkeypatch.setattr(users, "user_for_login", read_before_the_disable)
    with pytest.raises(InvalidCredentials):
        await accounts.login(db, config.auth, EMAIL, PASSWORD)


async def test_a_refresh_racing_a_disable_of_its_user_does_not_deadlock(
    db: Database, database_dsn: str
) -> None:
    """A disable locks the user row, then revokes the tokens; a refresh used to lock its token
    first and then (issuing the new pair: the insert trigger) the user row, so the two could
    deadlock and PostgreSQL aborted one, the disable as often as not (a 503, the user left
    enabled). The refresh now takes the user row first: it waits for the disable, then finds
    its token revoked."""
    user_id, _ = await make_user(db, "dave@example.com")
    refresh_token = tokens.new_token("refresh")
    await users.insert_token(db, user_id, "refresh", tokens.token_hash(refresh_token), "", 3600)
    disabling = await asyncpg.connect(database_dsn)
    try:
        async with disabling.transaction():
            # As accounts.update_user disables: the user row first ...
            await disabling.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user_id)
            refreshing = asyncio.create_task(accounts.refresh(db, Config().auth, refresh_token))
            # ... while the refresh waits for a lock ...
            for _ in range(200):
                waiting = await disabling.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, (
                "the refresh never waited for the disable",
                refreshing.done() and refreshing.exception(),
            )
            # ... then every token of the user (this waited for the refresh's token lock, and
            # PostgreSQL aborted one of the two after deadlock_timeout).
            await disabling.execute(
                "UPDATE auth_tokens SET revoked_at = now() "
                "WHERE user_id = $1 AND revoked_at IS NULL",
                user_id,
            )
    finally:
        await disabling.close()
    with pytest.raises(InvalidToken):
        await refreshing
    assert await db.pool.fetchval(
        "SELECT disabled_at IS NOT NULL FROM users WHERE id = $1", user_id
    )
    live = "SELECT count(*) FROM auth_tokens WHERE user_id = $1 AND revoked_at IS NULL"
    assert await db.pool.fetchval(live, user_id) == 0
