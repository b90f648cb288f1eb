"""User lifecycle: an administrator disables, re-enables, promotes and re-passwords users
(PUT /users/{id}); users change their own password (PUT /users/me/password). Every change is
checked through the tokens it must end or keep."""

from __future__ import annotations

from typing import Any

from gateway.app import create_app
from gateway.config import Config
from gateway.storage.database import Database
from tests.conftest import client_for
from tests.integration.access_helpers import Headers, call, make_user, ok
from tests.integration.ops_helpers import with_section

EMAIL, PASSWORD = "dev@example.com", "the first passphrase"
NEW_PASSWORD = "the second passphrase"


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


async def _login(client: Any, email: str = EMAIL, password: str = PASSWORD) -> tuple[int, Any]:
    return await call(client, "POST", "/users/login", {}, {"email": email, "password": password})


async def _user_with_tokens(client: Any, admin: Headers) -> tuple[int, dict[str, Headers | str]]:
    """A user created through the API, logged in, with a personal token: (id, credentials)."""
    created = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    status, pair = await _login(client)
    assert status == 200, pair
    access = bearer(pair["access_token"])
    personal = await ok(client, "POST", "/users/me/tokens", access, {"name": "ci"})
    return created["id"], {
        "access": access,
        "personal": bearer(personal["token"]),
        "refresh": pair["refresh_token"],
    }


async def _works(client: Any, headers: Any) -> bool:
    status, _ = await call(client, "GET", "/users/me", headers)
    assert status in (200, 401)
    return status == 200


async def _refreshes(client: Any, refresh_token: Any) -> bool:
    status, _ = await call(
        client, "POST", "/users/refresh-token", {}, {"refresh_token": refresh_token}
    )
    assert status in (200, 401)
    return status == 200


async def test_disabling_a_user_ends_every_token_and_login_and_enabling_allows_a_new_login(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id, creds = await _user_with_tokens(client, admin)
    assert await _works(client, creds["access"]) and await _works(client, creds["personal"])

    disabled = await ok(client, "PUT", f"/users/{user_id}", admin, {"is_active": False}, 200)
    assert disabled["is_active"] is False and disabled["email"] == EMAIL
    assert not await _works(client, creds["access"])
    assert not await _works(client, creds["personal"])
    assert not await _refreshes(client, creds["refresh"])
    status, body = await _login(client)
    assert (status, body["message"]) == (401, "Invalid email or password.")
    shown = await ok(client, "GET", f"/users/{user_id}", admin, status=200)
    assert shown["is_active"] is False
    listed = await ok(client, "GET", "/users", admin, status=200)
    assert [u["is_active"] for u in listed if u["id"] == user_id] == [False]

    enabled = await ok(client, "PUT", f"/users/{user_id}", admin, {"is_active": True}, 200)
    assert enabled["is_active"] is True
    # The old tokens stay revoked; the user logs in again.
    assert not await _works(client, creds["personal"])
    status, pair = await _login(client)
    assert status == 200 and await _works(client, bearer(pair["access_token"]))


async def test_an_admin_sets_a_password_ending_sessions_but_not_personal_tokens(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id, creds = await _user_with_tokens(client, admin)
    changed = await ok(
        client, "PUT", f"/users/{user_id}", admin, {"password": NEW_PASSWORD, "name": "Dev"}, 200
    )
    assert changed["name"] == "Dev" and "password" not in changed
    assert not await _works(client, creds["access"])
    assert not await _refreshes(client, creds["refresh"])
    assert await _works(client, creds["personal"])
    assert (await _login(client))[0] == 401
    assert (await _login(client, password=NEW_PASSWORD))[0] == 200


async def test_promoting_a_user_lets_them_administer(client: Any, db: Database) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id, user = await make_user(db, "dev@example.com")
    assert (await call(client, "GET", "/users", user))[0] == 403
    promoted = await ok(client, "PUT", f"/users/{user_id}", admin, {"is_admin": True}, 200)
    assert promoted["is_admin"] is True
    assert (await call(client, "GET", "/users", user))[0] == 200


async def test_administrators_cannot_demote_disable_or_re_password_themselves(
    client: Any, db: Database
) -> None:
    admin_id, admin = await make_user(db, "admin@example.com", is_admin=True)
    for body, message in (
        ({"is_admin": False}, "administrators cannot disable or demote themselves"),
        ({"is_active": False}, "administrators cannot disable or demote themselves"),
        ({"password": NEW_PASSWORD}, "change your own password with PUT /users/me/password"),
    ):
        status, answer = await call(client, "PUT", f"/users/{admin_id}", admin, body)
        assert status == 409 and answer["message"].startswith(message), (body, answer)
    me = await ok(client, "GET", "/users/me", admin, status=200)
    assert me["is_admin"] is True and me["is_active"] is True
    # Renaming oneself is fine.
    assert (await ok(client, "PUT", f"/users/{admin_id}", admin, {"name": "Root"}, 200))[
        "name"
    ] == "Root"


async def test_updating_users_refuses_bad_input_and_unknown_users(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id, user = await make_user(db, "dev@example.com")
    path = f"/users/{user_id}"
    cases = [
        ({"is_active": "no"}, {"is_active": ["must be true or false, got a string"]}),
        ({"password": "short"}, {"password": ["must be at least 8 characters"]}),
        (
            {"email": "new@example.com"},
            {"email": ["unknown field; allowed: is_active, is_admin, name, password"]},
        ),
    ]
    for body, errors in cases:
        status, answer = await call(client, "PUT", path, admin, body)
        assert (status, answer["errors"]) == (422, errors), body
    assert (await call(client, "PUT", "/users/999999", admin, {"name": "x"}))[0] == 404
    assert (await call(client, "GET", "/users/999999", admin))[0] == 404
    assert (await call(client, "GET", "/users/abc", admin))[0] == 404
    assert (await call(client, "PUT", path, user, {"name": "me"}))[0] == 403
    assert (await call(client, "GET", path, user))[0] == 403


async def test_changing_ones_own_password_ends_ones_sessions(client: Any, db: Database) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    _, creds = await _user_with_tokens(client, admin)
    access = creds["access"]
    status, answer = await call(
        client,
        "PUT",
        "/users/me/password",
        access,
        {"current_password": "not it", "new_password": NEW_PASSWORD},
    )
    assert (status, answer["errors"]) == (
        422,
        {"current_password": ["is not the account's password"]},
    )
    status, answer = await call(
        client,
        "PUT",
        "/users/me/password",
        access,
        {"current_password": PASSWORD, "new_password": "x"},
    )
    assert (status, answer["errors"]) == (422, {"new_password": ["must be at least 8 characters"]})
    assert await _works(client, access)  # refusals change nothing

    status, _ = await call(
        client,
        "PUT",
        "/users/me/password",
        access,
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert status == 204
    assert not await _works(client, access)
    assert not await _refreshes(client, creds["refresh"])
    assert await _works(client, creds["personal"])
    assert (await _login(client))[0] == 401
    assert (await _login(client, password=NEW_PASSWORD))[0] == 200


async def test_wrong_current_passwords_are_throttled_like_failed_logins(
    config: Config, db: Database, aiohttp_client: Any
) -> None:
    limited = with_section(config, "auth", login_failures_per_account=2)
    client = await client_for(create_app(limited, db), aiohttp_client)
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    _, creds = await _user_with_tokens(client, admin)
    guess = {"current_password": "guess", "new_password": NEW_PASSWORD}
    for _ in range(2):
        assert (await call(client, "PUT", "/users/me/password", creds["access"], guess))[0] == 422
    response = await client.put("/users/me/password", headers=creds["access"], json=guess)
    assert response.status == 429 and int(response.headers["Retry-After"]) > 0
    assert (await response.json())["message"].startswith("too many failed password checks")
    assert (await _login(client))[0] == 429  # the same account count


async def test_logging_out_ends_the_access_token_and_the_given_refresh_token(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    _, creds = await _user_with_tokens(client, admin)
    status, other_pair = await _login(client)  # a second session of the same user
    assert status == 200

    wrong = {"refresh_token": other_pair["access_token"]}  # not a refresh token
    status, answer = await call(client, "POST", "/users/logout", creds["access"], wrong)
    assert (status, answer["errors"]) == (
        422,
        {"refresh_token": ["is not a live refresh token of yours"]},
    )
    assert await _works(client, creds["access"])  # a refused logout ends nothing

    mine = {"refresh_token": creds["refresh"]}
    assert (await call(client, "POST", "/users/logout", creds["access"], mine))[0] == 204
    assert not await _works(client, creds["access"])
    assert not await _refreshes(client, creds["refresh"])
    # The other session and the personal token are untouched.
    assert await _works(client, bearer(other_pair["access_token"]))
    assert await _works(client, creds["personal"])

    # Without a body only the access token ends.
    assert (await call(client, "POST", "/users/logout", bearer(other_pair["access_token"])))[
        0
    ] == 204
    assert not await _works(client, bearer(other_pair["access_token"]))
    assert await _refreshes(client, other_pair["refresh_token"])

    status, answer = await call(client, "POST", "/users/logout", creds["personal"])
    assert status == 409 and "DELETE /users/me/tokens/{token_id}" in answer["message"]
    assert await _works(client, creds["personal"])


async def test_another_users_refresh_token_cannot_be_ended_by_logging_out(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    _, creds = await _user_with_tokens(client, admin)
    await ok(client, "POST", "/users", admin, {"email": "b@example.com", "password": PASSWORD})
    status, theirs = await _login(client, "b@example.com")
    assert status == 200
    body = {"refresh_token": theirs["refresh_token"]}
    status, answer = await call(client, "POST", "/users/logout", creds["access"], body)
    assert status == 422 and answer["errors"] == {
        "refresh_token": ["is not a live refresh token of yours"]
    }
    assert await _refreshes(client, theirs["refresh_token"])
    assert await _works(client, creds["access"])


async def test_a_disabled_users_token_is_refused_even_if_it_was_not_revoked(
    client: Any, db: Database
) -> None:
    """Disabling revokes the tokens, and authentication checks the user as well: a token whose
    revocation is missing (restored from a backup, written by hand) still does not work."""
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id, creds = await _user_with_tokens(client, admin)
    await ok(client, "PUT", f"/users/{user_id}", admin, {"is_active": False}, 200)
    await db.pool.execute("UPDATE auth_tokens SET revoked_at = NULL WHERE user_id = $1", user_id)
    assert not await _works(client, creds["personal"])
    assert not await _works(client, creds["access"])
