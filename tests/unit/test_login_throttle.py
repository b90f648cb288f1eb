"""Failed-login throttling (gateway.security.login_throttle) with a hand-driven clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.config import AuthConfig
from gateway.security import login_throttle
from gateway.security.login_throttle import LoginThrottle
from tests.manual_clock import ManualClock

AUTH = replace(
    AuthConfig(),
    login_failure_window=60,
    login_failures_per_address=3,
    login_failures_per_account=5,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_an_address_is_held_back_after_its_limit_until_the_oldest_failure_leaves_the_window(
    clock: ManualClock,
) -> None:
    throttle = LoginThrottle(clock)
    for second in (0, 10, 20):
        clock.now = 1000.0 + second
        assert throttle.begin("192.0.2.1", f"user{second}@example.com", AUTH) == 0
    clock.now = 1030.0
    # The first failure (t=1000) leaves the 60 s window at t=1060: 30 s from now.
    assert throttle.begin("192.0.2.1", "other@example.com", AUTH) == 30
    assert throttle.begin("192.0.2.2", "other@example.com", AUTH) == 0  # another address
    clock.now = 1060.5
    assert throttle.begin("192.0.2.1", "other@example.com", AUTH) == 0


def test_a_refused_attempt_does_not_extend_the_wait(clock: ManualClock) -> None:
    throttle = LoginThrottle(clock)
    for _ in range(3):
        assert throttle.begin("192.0.2.1", "a@example.com", AUTH) == 0
    for _ in range(10):
        clock.now += 1
        assert throttle.begin("192.0.2.1", "a@example.com", AUTH) > 0
    assert throttle.begin("192.0.2.1", "a@example.com", AUTH) == 60 - 10
    clock.now = 1060.0
    assert throttle.begin("192.0.2.1", "a@example.com", AUTH) == 0


def test_an_account_is_held_back_whatever_the_address_and_a_success_clears_it(
    clock: ManualClock,
) -> None:
    throttle = LoginThrottle(clock)
    for i in range(5):
        assert throttle.begin(f"192.0.2.{i}", "Admin@Example.com", AUTH) == 0
    assert throttle.begin("198.51.100.9", " admin@example.com", AUTH) == 60
    assert throttle.begin("198.51.100.9", "someone@example.com", AUTH) == 0

    fresh = LoginThrottle(clock)
    for i in range(4):
        assert fresh.begin(f"192.0.2.{i}", "admin@example.com", AUTH) == 0
    fresh.succeeded("192.0.2.3", "admin@example.com")
    for i in range(5):
        assert fresh.begin(f"203.0.113.{i}", "admin@example.com", AUTH) == 0


def test_a_success_does_not_reset_the_address_count(clock: ManualClock) -> None:
    throttle = LoginThrottle(clock)
    assert throttle.begin("192.0.2.1", "victim@example.com", AUTH) == 0
    assert throttle.begin("192.0.2.1", "victim@example.com", AUTH) == 0
    assert throttle.begin("192.0.2.1", "mine@example.com", AUTH) == 0
    throttle.succeeded("192.0.2.1", "mine@example.com")  # the attacker's own account
    assert throttle.begin("192.0.2.1", "victim@example.com", AUTH) == 0
    assert throttle.begin("192.0.2.1", "victim@example.com", AUTH) > 0


def test_a_cancelled_attempt_is_not_a_failure(clock: ManualClock) -> None:
    throttle = LoginThrottle(clock)
    for _ in range(10):
        assert throttle.begin("192.0.2.1", "a@example.com", AUTH) == 0
        throttle.cancelled("192.0.2.1", "a@example.com")


def test_a_limit_of_zero_is_off(clock: ManualClock) -> None:
    throttle = LoginThrottle(clock)
    off = replace(AUTH, login_failures_per_address=0, login_failures_per_account=0)
    for _ in range(100):
        assert throttle.begin("192.0.2.1", "a@example.com", off) == 0


def test_the_number_of_remembered_keys_is_bounded(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(login_throttle, "MAX_TRACKED", 10)
    throttle = LoginThrottle(clock)
    one = replace(AUTH, login_failures_per_address=1, login_failures_per_account=0)
    assert throttle.begin("192.0.2.0", "a@example.com", one) == 0
    assert throttle.begin("192.0.2.0", "a@example.com", one) > 0
    for i in range(1, 11):
        assert throttle.begin(f"192.0.2.{i}", "a@example.com", one) == 0
    # The oldest address was forgotten to make room.
    assert throttle.begin("192.0.2.0", "a@example.com", one) == 0
