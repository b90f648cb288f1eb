"""A password check (Argon2, on the hashing threads) takes a good part of a second: what it
decided must not outlive a change of the password made meanwhile.

Someone who knows the old password and keeps logging in would otherwise nearly always have one
login in flight when an administrator resets it (or the user changes it), and keep the session
it issues after the reset that was meant to end theirs; a change of one's own password checked
against the old one would overwrite the reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from argon2 import PasswordHasher

from gateway.security import passwords
from gateway.storage import users
from gateway.storage.database import Database
from tests.integration.access_helpers import Headers, call, make_user, ok

EMAIL, PASSWORD = "dev@example.com", "the first passphrase"
NEW_PASSWORD = "the second passphrase"


def _bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class PausedCheck:
    """Once ``armed``, the next password check runs for real, sets ``checked`` and then waits
    for ``resume`` before its result reaches the caller."""

    armed: bool = False
    checked: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def paused_check(monkeypatch: pytest.MonkeyPatch) -> PausedCheck:
    paused = PausedCheck()
    real = passwords.verify_password_in_thread

    async def verify(stored_hash: str | None, password: str) -> bool:
        result = await real(stored_hash, password)
        if paused.armed:
            paused.armed = False
            paused.checked.set()
            await paused.resume.wait()
        return result

    monkeypatch.setattr(passwords, "verify_password_in_thread", verify)
    return paused


async def _login_during(client: Any, paused: PausedCheck, change: Any) -> Any:
    """Log in with the old password while ``change()`` happens during its password check."""
    paused.armed = True
    login = asyncio.create_task(
        call(client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD})
    )
    await asyncio.wait_for(paused.checked.wait(), 10)
    await change()
    paused.resume.set()
    return await login


async def test_a_login_racing_an_admin_password_reset_gets_no_session(
    client: Any, db: Database, paused_check: PausedCheck
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})

    async def reset() -> None:
        await ok(client, "PUT", f"/users/{user['id']}", admin, {"password": NEW_PASSWORD}, 200)

    status, body = await _login_during(client, paused_check, reset)
    if status == 200:  # whatever it answered, the session must not outlive the reset
        status, _ = await call(client, "GET", "/users/me", _bearer(body["access_token"]))
        refreshed, _ = await call(
            client, "POST", "/users/refresh-token", {}, {"refresh_token": body["refresh_token"]}
        )
        assert (status, refreshed) == (401, 401), "a session issued for the old password"
    assert (status, body["message"]) == (401, "Invalid email or password.")
    login, _ = await call(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": NEW_PASSWORD}
    )
    assert login == 200


async def _user_with_old_parameters(client: Any, db: Database, admin: Headers) -> int:
    """A user whose stored hash was made with weaker Argon2 parameters than today's, so that
    their next login re-hashes the password."""
    user = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    await users.update_password_hash(db, user["id"], PasswordHasher(time_cost=1).hash(PASSWORD))
    return int(user["id"])


async def test_a_login_re_hashing_the_old_password_does_not_undo_a_reset(
    client: Any, db: Database, paused_check: PausedCheck
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user_id = await _user_with_old_parameters(client, db, admin)

    async def reset() -> None:
        await ok(client, "PUT", f"/users/{user_id}", admin, {"password": NEW_PASSWORD}, 200)

    status, _ = await _login_during(client, paused_check, reset)
    assert status == 401
    old, _ = await call(client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD})
    new, _ = await call(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": NEW_PASSWORD}
    )
    assert (old, new) == (401, 200)


async def test_a_login_racing_a_change_of_ones_own_password_gets_no_session(
    client: Any, db: Database, paused_check: PausedCheck
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    personal = await ok(
        client, "POST", "/users/me/tokens", await _session(client), {"name": "owner's own"}
    )

    async def change() -> None:
        body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        owner = _bearer(personal["token"])
        assert (await call(client, "PUT", "/users/me/password", owner, body))[0] == 204

    status, _ = await _login_during(client, paused_check, change)
    assert status == 401


async def test_a_concurrent_re_hash_of_the_same_password_does_not_refuse_a_login(
    client: Any, db: Database, paused_check: PausedCheck
) -> None:
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    await _user_with_old_parameters(client, db, admin)

    async def another_login() -> None:
        await _session(client)  # re-hashes the password with today's parameters

    status, body = await _login_during(client, paused_check, another_login)
    assert status == 200
    assert (await call(client, "GET", "/users/me", _bearer(body["access_token"])))[0] == 200


async def _session(client: Any) -> Headers:
    pair = await ok(
        client, "POST", "/users/login", {}, {"email": EMAIL, "password": PASSWORD}, status=200
    )
    return _bearer(pair["access_token"])


async def test_a_change_of_ones_own_password_racing_a_reset_does_not_overwrite_it(
    client: Any, db: Database, paused_check: PausedCheck
) -> None:
    """Who holds a token of the account and its old password must not undo the reset that an
    administrator made to lock them out."""
    _, admin = await make_user(db, "admin@example.com", is_admin=True)
    user = await ok(client, "POST", "/users", admin, {"email": EMAIL, "password": PASSWORD})
    personal = await ok(client, "POST", "/users/me/tokens", await _session(client), {"name": "x"})
    paused_check.armed = True
    body = {"current_password": PASSWORD, "new_password": "the attacker's passphrase"}
    change = asyncio.create_task(
        call(client, "PUT", "/users/me/password", _bearer(personal["token"]), body)
    )
    await asyncio.wait_for(paused_check.checked.wait(), 10)
    await ok(client, "PUT", f"/users/{user['id']}", admin, {"password": NEW_PASSWORD}, 200)
    paused_check.resume.set()
    status, answer = await change
    assert status == 422, answer
    assert list(answer["errors"]) == ["current_password"]
    logins = [
        (await call(client, "POST", "/users/login", {}, {"email": EMAIL, "password": p}))[0]
        for p in (NEW_PASSWORD, "the attacker's passphrase")
    ]
    assert logins == [200, 401]
