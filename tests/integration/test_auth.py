"""Login, refresh and bearer authentication against a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import accounts
from gateway.exceptions import InvalidToken
from gateway.security import tokens
from gateway.storage import users
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD


async def test_login_returns_a_working_bearer_token(client: Any, admin_token: str) -> None:
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status == 200
    body = await response.json()
    assert body["email"] == ADMIN_EMAIL
    assert body["is_admin"] is True


async def test_login_response_shape(client: Any, admin_token: str) -> None:
    response = await client.post(
        "/users/login", json={"email": ADMIN_EMAIL.upper(), "password": ADMIN_PASSWORD}
    )
    assert response.status == 200
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"].startswith("hga_") and body["refresh_token"].startswith("hgr_")
    assert body["access_token"] != admin_token


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"email": ADMIN_EMAIL, "password": "wrong password"}, 401, "Invalid email or password."),
        (
            {"email": "nobody@example.com", "password": ADMIN_PASSWORD},
            401,
            "Invalid email or password.",
        ),
        ({"email": ADMIN_EMAIL}, 422, "The given data was invalid: password"),
        ({}, 422, "The given data was invalid: email, password"),
        ({"email": 5, "password": ADMIN_PASSWORD}, 422, "The given data was invalid: email"),
        (
            {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "x": 1},
            422,
            "The given data was invalid: x",
        ),
    ],
)
async def test_login_rejections(
    client: Any, admin_token: str, payload: dict[str, Any], status: int, message: str
) -> None:
    response = await client.post("/users/login", json=payload)
    assert response.status == status
    body = await response.json()
    assert body["message"] == message
    assert "access_token" not in body


async def test_login_field_errors_are_named(client: Any) -> None:
    response = await client.post("/users/login", json={"email": 5})
    body = await response.json()
    assert body["errors"] == {
        "email": ["must be a string, got an integer"],
        "password": ["is required"],
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"", "request body is empty: expected a JSON object"),
        (b"[1, 2]", "request body must be a JSON object, got an array"),
    ],
)
async def test_login_malformed_body(client: Any, raw: bytes, message: str) -> None:
    response = await client.post(
        "/users/login", data=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith(message)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("Basic abc", "malformed Authorization header"),
        ("Bearer short", "the bearer token is malformed"),
        ("Bearer hga_" + "x" * 43, "the bearer token is invalid, expired or revoked"),
    ],
)
async def test_bad_bearer_tokens_get_401(client: Any, header: str | None, message: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = await client.get("/users/me", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["message"].startswith(message)


async def test_refresh_rotates_the_refresh_token(client: Any, admin_token: str) -> None:
    login = await (
        await client.post("/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    ).json()
    first = await client.post(
        "/users/refresh-token", json={"refresh_token": login["refresh_token"]}
    )
    assert first.status == 200
    pair = await first.json()
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status == 200
    again = await client.post(
        "/users/refresh-token", json={"refresh_token": login["refresh_token"]}
    )
    assert again.status == 401
    assert "already used" in (await again.json())["message"]


async def _admin_login(client: Any) -> dict[str, str]:
    answer = await client.post(
        "/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert answer.status == 200
    return dict(await answer.json())


async def _refresh(client: Any, refresh_token: str) -> Any:
    return await client.post("/users/refresh-token", json={"refresh_token": refresh_token})


async def test_a_reused_refresh_token_ends_every_session_of_its_user(
    client: Any, admin_token: str
) -> None:
    """A refresh token presented after it was used was copied: the pair issued from it may be
    the thief's, so every session of the user ends (personal tokens stay)."""

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    stolen, other_device = await _admin_login(client), await _admin_login(client)
    personal = await client.post(
        "/users/me/tokens", json={"name": "ci"}, headers=bearer(admin_token)
    )
    assert personal.status == 201
    personal_token = (await personal.json())["token"]
    thief = await _refresh(client, stolen["refresh_token"])
    assert thief.status == 200
    thief_pair = await thief.json()

    with capture_logs() as logs:
        victim = await _refresh(client, stolen["refresh_token"])
    assert victim.status == 401
    assert "already used" in (await victim.json())["message"]
    for token in (thief_pair["access_token"], other_device["access_token"], admin_token):
        assert (await client.get("/users/me", headers=bearer(token))).status == 401
    for refresh in (thief_pair["refresh_token"], other_device["refresh_token"]):
        assert (await _refresh(client, refresh)).status == 401
    assert (await client.get("/users/me", headers=bearer(personal_token))).status == 200
    [reused] = [e for e in logs if e["event"] == "refresh_token_reused"]
    assert reused["log_level"] == "warning" and reused["sessions_ended"] >= 5
    assert stolen["refresh_token"] not in repr(logs)

    # The alarm went off once: the copy cannot end the sessions opened since, again and again.
    fresh = await _admin_login(client)
    with capture_logs() as again:
        assert (await _refresh(client, stolen["refresh_token"])).status == 401
    assert not [e for e in again if e["event"] == "refresh_token_reused"]
    assert (await client.get("/users/me", headers=bearer(fresh["access_token"]))).status == 200


async def test_an_unknown_expired_or_logged_out_refresh_token_ends_nothing(
    client: Any, admin_token: str, db: Any
) -> None:
    login = await _admin_login(client)
    assert (await _refresh(client, login["refresh_token"])).status == 200
    # Spent, but also past its expiry: no longer evidence of a copy (nor an unknown token).
    await db.pool.execute(
        "UPDATE auth_tokens SET expires_at = now() - interval '1 second'"
        " WHERE kind = 'refresh' AND revoked_at IS NOT NULL"
    )
    # And one ended by a logout (or a password change) is not one a refresh spent.
    other = await _admin_login(client)
    logout = await client.post(
        "/users/logout",
        json={"refresh_token": other["refresh_token"]},
        headers={"Authorization": f"Bearer {other['access_token']}"},
    )
    assert logout.status == 204
    for token in (login["refresh_token"], "hgr_" + "A" * 43, other["refresh_token"]):
        assert (await _refresh(client, token)).status == 401
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {admin_token}"})
    assert me.status == 200


async def test_expired_access_token_is_rejected(client: Any, admin_token: str, db: Any) -> None:
    await db.pool.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 second'")
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status == 401


async def test_an_expired_refresh_token_gets_no_new_pair(
    client: Any, admin_token: str, db: Any
) -> None:
    login = await (
        await client.post("/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    ).json()
    await db.pool.execute(
        "UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'refresh'"
    )
    tokens_before = await db.pool.fetchval("SELECT count(*) FROM auth_tokens")
    response = await client.post(
        "/users/refresh-token", json={"refresh_token": login["refresh_token"]}
    )
    assert response.status == 401
    assert (await response.json())["message"] == (
        "the refresh token is invalid, expired or already used"
    )
    assert await db.pool.fetchval("SELECT count(*) FROM auth_tokens") == tokens_before


async def test_refresh_token_is_not_a_bearer_token(client: Any, admin_token: str) -> None:
    login = await (
        await client.post("/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    ).json()
    response = await client.get(
        "/users/me", headers={"Authorization": f"Bearer {login['refresh_token']}"}
    )
    assert response.status == 401


async def test_tokens_are_stored_only_as_hashes(client: Any, admin_token: str, db: Any) -> None:
    rows = await db.pool.fetch("SELECT token_hash FROM auth_tokens")
    assert rows and all(admin_token.encode() not in bytes(r["token_hash"]) for r in rows)
    stored = await db.pool.fetchval("SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$") and ADMIN_PASSWORD not in stored


async def test_admin_creates_users_and_members_cannot(
    client: Any, admin_headers: dict[str, str]
) -> None:
    created = await client.post(
        "/users", json={"email": "dev@example.com", "password": "longenough"}, headers=admin_headers
    )
    assert created.status == 201
    assert (await created.json())["is_admin"] is False
    duplicate = await client.post(
        "/users", json={"email": "DEV@example.com", "password": "longenough"}, headers=admin_headers
    )
    assert duplicate.status == 409
    short = await client.post(
        "/users", json={"email": "x@example.com", "password": "short"}, headers=admin_headers
    )
    assert short.status == 422
    assert "password" in (await short.json())["errors"]
    login = await (
        await client.post(
            "/users/login", json={"email": "dev@example.com", "password": "longenough"}
        )
    ).json()
    forbidden = await client.post(
        "/users",
        json={"email": "y@example.com", "password": "longenough"},
        headers={"Authorization": f"Bearer {login['access_token']}"},
    )
    assert forbidden.status == 403


async def test_passwords_are_taken_exactly_as_given(
    client: Any, db: Any, config: Any, admin_headers: dict[str, str]
) -> None:
    # The CLI (`gateway create-user`) and GATEWAY_ADMIN_PASSWORD store the password as typed;
    # login must not trim it, or such an account could never sign in.
    await accounts.create_user(db, config.auth, "cli@example.com", "  padded secret\t")
    created = await client.post(
        "/users",
        json={"email": "api@example.com", "password": " api padded secret "},
        headers=admin_headers,
    )
    assert created.status == 201
    for email, exact in (
        ("cli@example.com", "  padded secret\t"),
        ("api@example.com", " api padded secret "),
    ):
        good = await client.post("/users/login", json={"email": email, "password": exact})
        assert good.status == 200, await good.text()
        trimmed = await client.post(
            "/users/login", json={"email": email, "password": exact.strip()}
        )
        assert trimmed.status == 401


async def _lock_waits(db: Any) -> int:
    return int(
        await db.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def test_a_refresh_in_flight_when_a_reuse_is_detected_keeps_no_session(
    db: Any, config: Any
) -> None:
    """The thief refreshes its copy over and over: one of those refreshes in flight (its old
    token revoked, its new pair not yet committed) when the victim presents the spent token
    must not come out with a live pair."""
    auth = config.auth
    await accounts.create_user(db, auth, "reuse@example.com", "a long enough password")
    stolen = await accounts.login(db, auth, "reuse@example.com", "a long enough password")
    thief = await accounts.refresh(db, auth, stolen.refresh_token)
    revoked, proceed = asyncio.Event(), asyncio.Event()

    async def thief_refreshes_again() -> Any:
        digest = tokens.token_hash(thief.refresh_token)
        async with db.transaction() as session:  # accounts.refresh, paused before the insert
            await users.lock_token_owner(session, digest, "refresh")
            user_id = await users.revoke_token(session, digest, "refresh")
            revoked.set()
            await proceed.wait()
            return await accounts._issue_pair(session, auth, user_id)

    in_flight = asyncio.create_task(thief_refreshes_again())
    await revoked.wait()
    victim = asyncio.create_task(accounts.refresh(db, auth, stolen.refresh_token))
    for _ in range(100):  # the victim's revocation waits for the thief's transaction
        if await _lock_waits(db) or victim.done():
            break
        await asyncio.sleep(0.05)
    proceed.set()
    newest = await in_flight
    with pytest.raises(InvalidToken):
        await victim
    with pytest.raises(InvalidToken):
        await accounts.authenticate_bearer(db, newest.access_token)
    with pytest.raises(InvalidToken):
        await accounts.refresh(db, auth, newest.refresh_token)


async def test_a_logout_waits_for_a_password_change_in_flight_and_takes_locks_in_its_order(
    db: Any, config: Any
) -> None:
    """A password change (or a disable) locks the user row, then every token of the user; a
    logout locks its access token, then its refresh token. Taken in those orders the two
    deadlock when the change reaches the refresh token first. The logout now takes the user
    row first too: it waits for a change in flight, and then its session is already over."""
    auth = config.auth
    await accounts.create_user(db, auth, "order@example.com", "a long enough password")
    pair = await accounts.login(db, auth, "order@example.com", "a long enough password")
    user = await accounts.authenticate_bearer(db, pair.access_token)
    locked, proceed = asyncio.Event(), asyncio.Event()

    async def password_change() -> int:  # accounts._replace_password, paused after its first lock
        async with db.transaction() as session:
            await users.update_user(session, user.id, password_hash="$argon2id$changed")
            locked.set()
            await proceed.wait()
            return await users.revoke_user_tokens(session, user.id, accounts.SESSION_KINDS)

    change = asyncio.create_task(password_change())
    await locked.wait()
    logout = asyncio.create_task(accounts.logout(db, user, pair.access_token, pair.refresh_token))
    for _ in range(100):  # the logout's first lock waits for the change's transaction
        if await _lock_waits(db) or logout.done():
            break
        await asyncio.sleep(0.05)
    assert not logout.done(), "the logout took its tokens while the user row was locked"
    proceed.set()
    assert await change == 2  # the change ended both tokens: the logout had locked neither
    with pytest.raises(InvalidToken, match="invalid, expired or revoked"):
        await logout
