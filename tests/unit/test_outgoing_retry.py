"""Retry policy: schedule with jitter, Retry-After, 410, give-up, auto-disable."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.dispatcher.retry import FAILED, RETRY, SUCCEEDED, RetryPolicy, parse_retry_after

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
EXACT = RetryPolicy.create([10, 30, 120], jitter=0)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_succeeds(status: int) -> None:
    assert EXACT.decide(1, status).action == SUCCEEDED


@pytest.mark.parametrize("status", [None, 301, 400, 404, 429, 500, 503])
def test_other_outcomes_are_retried_on_the_schedule(status: int | None) -> None:
    assert [EXACT.decide(n, status, now=NOW).delay for n in (1, 2, 3)] == [10, 30, 120]
    assert EXACT.decide(1, status).action == RETRY


def test_gives_up_after_the_schedule() -> None:
    decision = EXACT.decide(4, 500)
    assert decision.action == FAILED and not decision.disable_hook
    assert decision.reason == "gave up after 4 attempts"
    assert EXACT.max_attempts == 4


def test_410_disables_the_hook_at_once() -> None:
    decision = EXACT.decide(1, 410)
    assert decision.action == FAILED and decision.disable_hook


def test_refusal_is_not_retried() -> None:
    decision = EXACT.decide(1, None, refused=True)
    assert decision.action == FAILED and not decision.disable_hook


def test_full_jitter_stays_within_zero_and_the_scheduled_delay() -> None:
    policy = RetryPolicy.create([100], jitter=1.0)
    rng = random.Random(7)
    delays = [policy.decide(1, 500, rng=rng).delay for _ in range(500)]
    assert all(0 <= d <= 100 for d in delays)
    assert min(delays) < 10 and max(delays) > 90  # spread over the whole range


def test_partial_jitter_keeps_a_floor() -> None:
    policy = RetryPolicy.create([100], jitter=0.2)
    rng = random.Random(3)
    assert all(80 <= policy.decide(1, 500, rng=rng).delay <= 100 for _ in range(200))


def test_retry_after_seconds_lengthens_the_delay_up_to_the_cap() -> None:
    policy = RetryPolicy.create([10, 10], jitter=0, retry_after_max=600)
    assert policy.decide(1, 503, retry_after="120", now=NOW).delay == 120
    assert policy.decide(1, 429, retry_after="5", now=NOW).delay == 10  # never shorter
    assert policy.decide(1, 503, retry_after="86400", now=NOW).delay == 600


def test_retry_after_http_date() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(when, NOW) == 90
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0
    assert EXACT.decide(1, 503, retry_after=when, now=NOW).delay == 90


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "-5",
        "1.5",
        "Mon, 99 Foo 2026",
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663\u0660",  # Arabic-Indic digits: not the ASCII delta-seconds HTTP allows
        "Fri, 01 Jan 99999999999999999999 00:00:00 GMT",  # a year past any datetime
        "Fri, 01 Jan 10000 00:00:00 GMT",
    ],
)
def test_unparseable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None
    # A hostile header never stops the decision: the schedule applies.
    assert EXACT.decide(1, 503, retry_after=value, now=NOW) == EXACT.decide(1, 503, now=NOW)


def test_retry_after_never_adds_attempts() -> None:
    assert EXACT.decide(4, 503, retry_after="5").action == FAILED


def test_auto_disable_threshold() -> None:
    policy = RetryPolicy.create([1], disable_after_failures=3)
    assert [policy.should_disable(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not RetryPolicy.create([1], disable_after_failures=0).should_disable(1000)


@pytest.mark.parametrize(("schedule", "jitter"), [([-1], 0.5), ([1], 1.5), ([1], -0.1)])
def test_invalid_policies_are_rejected(schedule: list[float], jitter: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy.create(schedule, jitter=jitter)


def test_empty_schedule_means_a_single_attempt() -> None:
    policy = RetryPolicy.create([])
    assert policy.max_attempts == 1
    assert policy.decide(1, 500).action == FAILED
