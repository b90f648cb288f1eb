"""Personal access tokens: shown once, usable as bearer tokens, listed without secrets, revocable,
expiring, and at most ``[auth] max_personal_tokens`` live ones per user."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway import accounts
from gateway.config import Config
from gateway.storage.database import Database
from tests.integration.access_helpers import call, make_user, ok
from tests.integration.ingest_helpers import wait_for, wait_until_blocked
from tests.integration.ops_helpers import reload_to, with_section

EMAIL, PASSWORD = "bot-owner@example.com", "a long enough password"


@pytest.fixture
async def owner(client: Any, db: Database, config: Config) -> dict[str, str]:
    """Headers with a login access token of an ordinary user."""
    await accounts.create_user(db, config.auth, EMAIL, PASSWORD)
    body = await ok(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD}, status=200
    )
    return {"Authorization": f"Bearer {body['access_token']}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_create_use_list_revoke(
    client: Any, db: Database, owner: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "ci deploy"})
    token = created["token"]
    assert token.startswith("hgp_") and len(token) > 40
    assert created["name"] == "ci deploy"
    assert created["expires_at"] is None and created["revoked_at"] is None
    assert created["active"] is True

    me = await ok(client, "GET", "/users/me", bearer(token), status=200)
    assert me["email"] == EMAIL

    listed = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert [t["id"] for t in listed] == [created["id"]]
    [entry] = listed
    assert set(entry) == {
        "id",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "active",
    }
    assert entry["last_used_at"] is not None  # the /users/me call above
    raw = await client.get("/users/me/tokens", headers=owner)
    assert token not in await raw.text() and token[4:] not in await raw.text()

    assert await call(client, "DELETE", f"/users/me/tokens/{created['id']}", owner) == (204, None)
    status, body = await call(client, "GET", "/users/me", bearer(token))
    assert status == 401
    assert body["message"] == "the bearer token is invalid, expired or revoked"
    [entry] = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert entry["revoked_at"] is not None and entry["active"] is False

    out, err = capfd.readouterr()
    assert "personal_token_created" in out + err  # the logs were captured ...
    assert token not in out + err  # ... and the token is not in them


async def test_only_the_hash_is_stored(client: Any, db: Database, owner: dict[str, str]) -> None:
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "x"})
    rows = await db.pool.fetch("SELECT token_hash, name FROM auth_tokens WHERE kind = 'personal'")
    assert len(rows) == 1
    assert created["token"].encode() not in bytes(rows[0]["token_hash"])


async def test_a_token_can_revoke_itself(client: Any, owner: dict[str, str]) -> None:
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "x"})
    headers = bearer(created["token"])
    assert await call(client, "DELETE", f"/users/me/tokens/{created['id']}", headers) == (
        204,
        None,
    )
    assert (await call(client, "GET", "/users/me/tokens", headers))[0] == 401


async def test_expiry(client: Any, db: Database, owner: dict[str, str]) -> None:
    before = datetime.now(UTC)
    created = await ok(
        client, "POST", "/users/me/tokens", owner, {"name": "short", "expires_in_days": 7}
    )
    expires_at = datetime.fromisoformat(created["expires_at"])
    assert before + timedelta(days=7) <= expires_at <= datetime.now(UTC) + timedelta(days=7)
    assert (await call(client, "GET", "/users/me", bearer(created["token"])))[0] == 200

    # Move the expiry into the past, as the clock would.
    await db.pool.execute(
        "UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
        created["id"],
    )
    status, body = await call(client, "GET", "/users/me", bearer(created["token"]))
    assert (status, body["message"]) == (401, "the bearer token is invalid, expired or revoked")
    [entry] = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert entry["active"] is False and entry["revoked_at"] is None


async def test_someone_elses_token_cannot_be_revoked_or_listed(
    client: Any, db: Database, owner: dict[str, str]
) -> None:
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "mine"})
    _, other = await make_user(db, "other@example.com")
    status, body = await call(client, "DELETE", f"/users/me/tokens/{created['id']}", other)
    assert (status, body["message"]) == (404, f"token {created['id']} not found")
    others = await ok(client, "GET", "/users/me/tokens", other, status=200)
    assert created["id"] not in [t["id"] for t in others]
    assert (await call(client, "GET", "/users/me", bearer(created["token"])))[0] == 200


async def test_a_personal_token_carries_only_its_owners_rights(
    client: Any, owner: dict[str, str]
) -> None:
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "x"})
    status, body = await call(client, "GET", "/roles", bearer(created["token"]))
    assert (status, body["message"]) == (403, "this action requires an administrator")


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"name": ["is required"]}),
        ({"name": "x", "expires_in_days": 0}, {"expires_in_days": ["must be >= 1"]}),
        ({"name": "x", "expires_in_days": 3651}, {"expires_in_days": ["must be <= 3650"]}),
        (
            {"name": "x", "expires_in_days": "7"},
            {"expires_in_days": ["must be an integer, got a string"]},
        ),
        (
            {"name": "x", "scopes": []},
            {"scopes": ["unknown field; allowed: expires_in_days, name"]},
        ),
    ],
)
async def test_create_validation(
    client: Any, owner: dict[str, str], payload: dict[str, Any], errors: dict[str, Any]
) -> None:
    status, body = await call(client, "POST", "/users/me/tokens", owner, payload)
    assert (status, body["errors"]) == (422, errors)
    assert await ok(client, "GET", "/users/me/tokens", owner, status=200) == []


async def test_unknown_or_malformed_token_id_is_404(client: Any, owner: dict[str, str]) -> None:
    for token_id in ("12345", "abc"):
        status, _ = await call(client, "DELETE", f"/users/me/tokens/{token_id}", owner)
        assert status == 404


async def test_a_personal_token_cannot_make_one_that_outlives_it(
    client: Any, owner: dict[str, str]
) -> None:
    """A leaked token that expires in a week must not become one that never does."""
    week = await ok(client, "POST", "/users/me/tokens", owner, {"name": "ci", "expires_in_days": 7})
    ci = bearer(week["token"])
    for payload in ({"name": "forever"}, {"name": "a month", "expires_in_days": 30}):
        status, body = await call(client, "POST", "/users/me/tokens", ci, payload)
        assert status == 422, body
        [message] = body["errors"]["expires_in_days"]
        assert message.startswith(f"must end by {week['expires_at']}")
    shorter = await ok(
        client, "POST", "/users/me/tokens", ci, {"name": "shorter", "expires_in_days": 6}
    )
    assert shorter["expires_at"] < week["expires_at"]
    listed = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert [t["name"] for t in listed] == ["ci", "shorter"]
    # A login session, or a personal token without an expiry, makes any token.
    forever = await ok(client, "POST", "/users/me/tokens", owner, {"name": "forever"})
    assert forever["expires_at"] is None
    await ok(client, "POST", "/users/me/tokens", bearer(forever["token"]), {"name": "also"})


def _limit_message(limit: int) -> str:
    return (
        f"personal token limit reached: a user may hold {limit} live (neither revoked nor "
        "expired) personal tokens ([auth] max_personal_tokens); revoke one with "
        "DELETE /users/me/tokens/{token_id} (GET /users/me/tokens lists them)"
    )


async def _create(client: Any, headers: dict[str, str], name: str) -> tuple[int, Any]:
    return await call(client, "POST", "/users/me/tokens", headers, {"name": name})


async def test_a_user_holds_at_most_max_personal_tokens_live_ones(
    client: Any, db: Database, config: Config, owner: dict[str, str]
) -> None:
    assert config.auth.max_personal_tokens == 50  # the default
    # A reload (SIGHUP) applies a new limit at once.
    assert reload_to(client, with_section(config, "auth", max_personal_tokens=2)) == [
        "auth.max_personal_tokens"
    ]
    first = await ok(client, "POST", "/users/me/tokens", owner, {"name": "one"})
    await ok(client, "POST", "/users/me/tokens", owner, {"name": "two"})
    status, body = await _create(client, owner, "three")
    assert (status, body["message"]) == (409, _limit_message(2))
    assert len(await ok(client, "GET", "/users/me/tokens", owner, status=200)) == 2
    # The limit is per user: another one still has room.
    _, other = await make_user(db, "other@example.com")  # holds one personal token
    assert (await _create(client, other, "theirs"))[0] == 201

    # A revoked token frees its place ...
    assert (await call(client, "DELETE", f"/users/me/tokens/{first['id']}", owner))[0] == 204
    expiring = await ok(client, "POST", "/users/me/tokens", owner, {"name": "three"})
    assert (await _create(client, owner, "four"))[0] == 409
    # ... and so does an expired one.
    await db.pool.execute(
        "UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
        expiring["id"],
    )
    await ok(client, "POST", "/users/me/tokens", owner, {"name": "four"})
    assert (await _create(client, owner, "five"))[0] == 409

    # 0: no limit.
    reload_to(client, with_section(config, "auth", max_personal_tokens=0))
    for name in ("five", "six", "seven"):
        await ok(client, "POST", "/users/me/tokens", owner, {"name": name})
    listed = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert sum(t["active"] for t in listed) == 5


async def test_two_creations_at_the_last_place_do_not_both_succeed(
    client: Any, db: Database, config: Config, owner: dict[str, str], database_dsn: str
) -> None:
    """Each creation counts the live tokens, then inserts: two running side by side at
    ``limit - 1`` would both count one place left. Here both are held up by a lock on the user
    row until they are both waiting, then let go together: exactly one may get the place."""
    reload_to(client, with_section(config, "auth", max_personal_tokens=2))
    await ok(client, "POST", "/users/me/tokens", owner, {"name": "existing"})
    me = await ok(client, "GET", "/users/me", owner, status=200)

    holder = await asyncpg.connect(database_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", me["id"])
            creations = [asyncio.create_task(_create(client, owner, n)) for n in ("a", "b")]
            await wait_until_blocked(db, sessions=2)
            assert not any(c.done() for c in creations)
        answers = await asyncio.gather(*creations)
    finally:
        await holder.close()
    assert sorted(status for status, _ in answers) == [201, 409], answers
    listed = await ok(client, "GET", "/users/me/tokens", owner, status=200)
    assert [t["active"] for t in listed] == [True, True]


async def test_a_logout_whose_personal_token_is_revoked_meanwhile_answers_401(
    client: Any, db: Database, owner: dict[str, str]
) -> None:
    """A logout with a personal token is refused with 409 (it is no session); but one whose
    token was revoked after it authenticated is answered as any request with a revoked token,
    401, not with advice to revoke a token that no longer works. The logout is held between its
    authentication and its own work by withholding the end of its body."""
    created = await ok(client, "POST", "/users/me/tokens", owner, {"name": "ci"})
    status, body = await call(client, "POST", "/users/logout", bearer(created["token"]))
    assert (status, body["message"]) == (
        409,
        "log out ends an access token from POST /users/login; revoke a personal token with "
        "DELETE /users/me/tokens/{token_id}",
    )
    await db.pool.execute("UPDATE auth_tokens SET last_used_at = NULL WHERE id = $1", created["id"])
    rest = asyncio.Event()

    async def body_in_two_parts() -> Any:
        yield b"{"
        await rest.wait()
        yield b"}"

    logout = asyncio.create_task(
        client.post(
            "/users/logout",
            headers={**bearer(created["token"]), "Content-Type": "application/json"},
            data=body_in_two_parts(),
        )
    )

    async def authenticated() -> bool:
        assert not logout.done(), logout
        used = "SELECT last_used_at IS NOT NULL FROM auth_tokens WHERE id = $1"
        return bool(await db.pool.fetchval(used, created["id"]))

    await wait_for(authenticated, bool)  # the logout's token check has committed
    assert (await call(client, "DELETE", f"/users/me/tokens/{created['id']}", owner))[0] == 204
    rest.set()
    response = await logout
    assert response.status == 401, await response.text()
    assert (await response.json())["message"] == "the bearer token is invalid, expired or revoked"
