"""POST /users/login under attack: password checks off the event loop, failed-login throttling
(per client address and per account, 429 + Retry-After), and a bound on queued checks (503)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from argon2 import PasswordHasher

from gateway import accounts
from gateway.app import create_app
from gateway.config import Config
from gateway.security import passwords
from gateway.storage import users
from gateway.storage.database import Database
from tests.conftest import client_for
from tests.integration.ops_helpers import sample, scrape, with_section

PASSWORD = "correct horse battery staple"


async def _user_with_slow_hash(db: Database, config: Config, email: str) -> float:
    """Create a user whose stored hash takes a long time to check; return that time (s)."""
    user = await accounts.create_user(db, config.auth, email, PASSWORD)
    slow = PasswordHasher(time_cost=12)
    stored = slow.hash(PASSWORD)
    await users.update_password_hash(db, user.id, stored)
    started = time.perf_counter()
    passwords.verify_password(stored, "a wrong password")
    return time.perf_counter() - started


async def _client_with_limits(
    config: Config, db: Database, aiohttp_client: Any, per_address: int, per_account: int
) -> Any:
    limited = with_section(
        config,
        "auth",
        login_failures_per_address=per_address,
        login_failures_per_account=per_account,
    )
    return await client_for(create_app(limited, db), aiohttp_client)


async def _login(client: Any, email: str, password: str, **headers: str) -> Any:
    return await client.post(
        "/users/login", json={"email": email, "password": password}, headers=headers
    )


async def test_a_password_check_does_not_stop_the_event_loop(
    client: Any, db: Database, config: Config
) -> None:
    check_seconds = await _user_with_slow_hash(db, config, "slow@example.com")
    login = asyncio.ensure_future(_login(client, "slow@example.com", "a wrong password"))
    answered, longest_gap, last = 0, 0.0, time.perf_counter()
    while not login.done():
        health = await client.get("/healthz")
        assert health.status == 200
        now = time.perf_counter()
        answered, longest_gap, last = answered + 1, max(longest_gap, now - last), now
    assert (await login).status == 401
    # On the event loop, the check would hold every request for its whole duration.
    assert answered >= 3
    assert longest_gap < check_seconds / 2, (longest_gap, check_seconds)


async def test_failed_logins_from_one_address_are_answered_429_with_retry_after(
    config: Config, db: Database, aiohttp_client: Any
) -> None:
    client = await _client_with_limits(config, db, aiohttp_client, 3, 0)
    await accounts.create_user(db, config.auth, "a@example.com", PASSWORD)
    for email in ("a@example.com", "b@example.com", "a@example.com"):
        assert (await _login(client, email, "wrong password")).status == 401
    for email, password in (("a@example.com", PASSWORD), ("c@example.com", "x")):
        refused = await _login(client, email, password)
        assert refused.status == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 0 < retry_after <= config.auth.login_failure_window
        body = await refused.json()
        assert body["message"] == f"too many failed logins; retry in {retry_after} seconds"
        assert "access_token" not in body


async def test_an_account_is_throttled_across_addresses_behind_a_trusted_proxy(
    config: Config, db: Database, aiohttp_client: Any
) -> None:
    limited = with_section(
        with_section(config, "server", trusted_proxies=("127.0.0.1/32",)),
        "auth",
        login_failures_per_address=3,
        login_failures_per_account=2,
    )
    client = await client_for(create_app(limited, db), aiohttp_client)
    await accounts.create_user(db, config.auth, "admin@example.com", PASSWORD)
    await accounts.create_user(db, config.auth, "other@example.com", PASSWORD)
    for address in ("203.0.113.1", "203.0.113.2"):
        failed = await _login(client, "admin@example.com", "guess", **{"X-Forwarded-For": address})
        assert failed.status == 401
    from_elsewhere = {"X-Forwarded-For": "198.51.100.7"}
    assert (await _login(client, "ADMIN@example.com", PASSWORD, **from_elsewhere)).status == 429
    assert (await _login(client, "other@example.com", PASSWORD, **from_elsewhere)).status == 200
    # Three failures from one forwarded address hold that address back, not its neighbour.
    for email in ("x@example.com", "y@example.com", "z@example.com"):
        failed = await _login(client, email, "guess", **{"X-Forwarded-For": "203.0.113.9"})
        assert failed.status == 401
    held = await _login(client, "other@example.com", PASSWORD, **{"X-Forwarded-For": "203.0.113.9"})
    assert held.status == 429
    ok = await _login(client, "other@example.com", PASSWORD, **{"X-Forwarded-For": "203.0.113.8"})
    assert ok.status == 200


async def test_a_successful_login_clears_the_accounts_failures(
    config: Config, db: Database, aiohttp_client: Any
) -> None:
    client = await _client_with_limits(config, db, aiohttp_client, 0, 2)
    await accounts.create_user(db, config.auth, "a@example.com", PASSWORD)
    assert (await _login(client, "a@example.com", "typo")).status == 401
    assert (await _login(client, "a@example.com", PASSWORD)).status == 200
    assert (await _login(client, "a@example.com", "typo")).status == 401
    assert (await _login(client, "a@example.com", PASSWORD)).status == 200
    assert (await _login(client, "a@example.com", "typo")).status == 401
    assert (await _login(client, "a@example.com", "typo")).status == 401
    assert (await _login(client, "a@example.com", PASSWORD)).status == 429


async def test_password_checks_past_the_queue_bound_get_503(
    client: Any, db: Database, config: Config, monkeypatch: Any
) -> None:
    await _user_with_slow_hash(db, config, "slow@example.com")
    monkeypatch.setattr(passwords, "MAX_WAITING", 1)
    first, second = await asyncio.gather(
        _login(client, "slow@example.com", "wrong one"),
        _login(client, "slow@example.com", "wrong two"),
    )
    answers = sorted([first, second], key=lambda response: response.status)
    assert [response.status for response in answers] == [401, 503]
    busy = answers[1]
    assert busy.headers["Retry-After"] == "1"
    assert (await busy.json())["message"] == (
        "too many password checks are in progress; retry shortly"
    )
    # The refused attempt was not counted as a failed guess: the account can still log in.
    assert (await _login(client, "slow@example.com", PASSWORD)).status == 200


async def test_login_outcomes_are_counted_in_metrics(
    config: Config, db: Database, aiohttp_client: Any
) -> None:
    client = await _client_with_limits(config, db, aiohttp_client, 1, 0)
    await accounts.create_user(db, config.auth, "a@example.com", PASSWORD)
    before = await scrape(client)
    assert (await _login(client, "a@example.com", PASSWORD)).status == 200
    assert (await _login(client, "a@example.com", "wrong password")).status == 401
    assert (await _login(client, "a@example.com", PASSWORD)).status == 429
    after = await scrape(client)
    for outcome in ("succeeded", "failed", "throttled"):
        counted = sample(after, "hookgate_logins_total", outcome=outcome)
        assert counted - sample(before, "hookgate_logins_total", outcome=outcome) == 1, outcome
