"""Per-hook limits: token bucket (429 + Retry-After), IP allowlist (403), settings validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig
from gateway.ingest.limits import (
    SWEEP_INTERVAL,
    IpAllowlist,
    LimitsSettings,
    RateLimiter,
    effective_burst,
    parse_limits_settings,
    retry_after_header,
)
from tests.manual_clock import ManualClock


def test_unlimited_keeps_no_bucket() -> None:
    limiter = RateLimiter()
    assert all(limiter.check("h", 0) == (True, 0.0) for _ in range(100))
    assert len(limiter) == 0


def test_burst_then_refusal_with_retry_after() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    assert [limiter.check("h", 2, 3)[0] for _ in range(3)] == [True, True, True]
    allowed, retry = limiter.check("h", 2, 3)
    assert not allowed and retry == pytest.approx(0.5)
    clock.now += 0.25
    allowed, retry = limiter.check("h", 2, 3)
    assert not allowed and retry == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.check("h", 2, 3) == (True, 0.0)


def test_refill_is_capped_at_burst() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    limiter.check("h", 10, 5)
    clock.now += 3600
    assert sum(limiter.check("h", 10, 5)[0] for _ in range(20)) == 5


def test_keys_are_independent() -> None:
    limiter = RateLimiter(clock=ManualClock())
    assert limiter.check("a", 1, 1)[0] and not limiter.check("a", 1, 1)[0]
    assert limiter.check("b", 1, 1)[0]


@pytest.mark.parametrize(("rate", "burst", "size"), [(0.5, 0, 1), (2.5, 0, 3), (10, 0, 10)])
def test_default_burst_follows_the_rate(rate: float, burst: int, size: int) -> None:
    assert effective_burst(rate, burst) == size
    limiter = RateLimiter(clock=ManualClock())
    assert sum(limiter.check("h", rate, burst)[0] for _ in range(50)) == size


def test_changed_limit_applies_to_the_existing_bucket() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    assert sum(limiter.check("h", 1, 2)[0] for _ in range(5)) == 2
    clock.now += 1  # one token refilled at the old rate...
    assert sum(limiter.check("h", 100, 200)[0] for _ in range(500)) == 1
    clock.now += 1  # ...then the new rate, up to the new burst
    assert sum(limiter.check("h", 100, 200)[0] for _ in range(500)) == 100
    assert sum(limiter.check("h", 1, 1)[0] for _ in range(5)) == 0  # lowered: clamped, empty
    # One of the two changed, the other not: each applies on its own.
    clock.now += 1
    assert sum(limiter.check("h", 1, 3)[0] for _ in range(5)) == 1  # only the burst raised...
    clock.now += 10
    assert sum(limiter.check("h", 1, 3)[0] for _ in range(5)) == 3  # ...refills up to it
    clock.now += 1
    assert sum(limiter.check("h", 2, 3)[0] for _ in range(5)) == 1  # only the rate: old until now
    clock.now += 1
    assert sum(limiter.check("h", 2, 3)[0] for _ in range(5)) == 2  # then the new one


def test_lru_bound() -> None:
    limiter = RateLimiter(max_buckets=3, clock=ManualClock())
    for key in "abcd":
        limiter.check(key, 1, 1)
    assert len(limiter) == 3
    # "a" was least recently used and is gone: it starts with a full bucket again.
    assert limiter.check("a", 1, 1)[0]
    assert not limiter.check("d", 1, 1)[0]


def test_sweep_drops_only_refilled_buckets() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    limiter.check("slow", 0.001, 1)  # empty, refills in 1000 s
    limiter.check("fast", 100, 1)
    clock.now += 1
    assert limiter.sweep() == 1 and len(limiter) == 1
    assert not limiter.check("slow", 0.001, 1)[0]  # kept: still empty


def test_periodic_sweep_runs_inside_check() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    for i in range(100):
        limiter.check(i, 1000, 1)
    clock.now += SWEEP_INTERVAL + 1
    limiter.check("new", 1, 1)
    assert len(limiter) == 1


def test_forget() -> None:
    limiter = RateLimiter(clock=ManualClock())
    limiter.check("h", 1, 1)
    limiter.forget("h")
    limiter.forget("absent")
    assert limiter.check("h", 1, 1)[0]


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(0, 50),
    steps=st.lists(st.floats(0, 5), max_size=40),
)
def test_never_more_than_burst_plus_refill(rate: float, burst: int, steps: list[float]) -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    allowed = 0
    for step in steps:
        clock.now += step
        ok, retry = limiter.check("h", rate, burst)
        allowed += ok
        assert retry >= 0 and (ok or retry > 0)
    assert allowed <= effective_burst(rate, burst) + rate * sum(steps) + 1e-6


# --- allowlist ---------------------------------------------------------------------------


def test_allowlist() -> None:
    allow = IpAllowlist(["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"])
    assert allow.allows("192.0.2.55") and allow.allows("198.51.100.7")
    assert allow.allows("2001:db8:1::5") and allow.allows("::ffff:192.0.2.1")
    assert not allow.allows("198.51.100.8") and not allow.allows("2001:db9::1")
    assert not allow.allows(None) and not allow.allows("") and not allow.allows("junk")


def test_allowlist_invalid_entry() -> None:
    with pytest.raises(ValueError):
        IpAllowlist(["nope"])


# --- settings validation -----------------------------------------------------------------

DEFAULTS = LimitsConfig(default_rate_per_second=5, default_burst=10)


def test_absent_settings_use_defaults() -> None:
    parsed, errors = parse_limits_settings({"variables": []})
    assert errors == {} and parsed == LimitsSettings()
    assert parsed.rate_and_burst(DEFAULTS) == (5, 10) and parsed.allowlist() is None
    assert parse_limits_settings(None) == (LimitsSettings(), {})
    assert parsed.to_json() == {"rate_limit": None, "allowed_ips": None}


def test_valid_settings_are_normalized() -> None:
    parsed, errors = parse_limits_settings(
        {
            "rate_limit": {"per_second": 2, "burst": 4},
            "allowed_ips": [
                " 192.0.2.0/24",
                "2001:DB8::/32",
                "198.51.100.7",
                "::ffff:10.0.0.0/104",
            ],
        }
    )
    assert errors == {}
    assert parsed.rate_and_burst(DEFAULTS) == (2.0, 4)
    assert parsed.allowed_ips == ("192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32", "10.0.0.0/8")
    allow = parsed.allowlist()
    assert allow is not None and allow.allows("10.1.1.1")
    assert parsed.to_json() == {
        "rate_limit": {"per_second": 2.0, "burst": 4},
        "allowed_ips": ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32", "10.0.0.0/8"],
    }


def test_zero_rate_exempts_a_hook_from_the_default() -> None:
    parsed, errors = parse_limits_settings({"rate_limit": {"per_second": 0}})
    assert errors == {} and parsed.rate_and_burst(DEFAULTS) == (0.0, 0)


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        ([], {"settings": ["must be an object"]}),
        (
            {"rate_limit": 5},
            {
                "settings.rate_limit": [
                    'must be an object like {"per_second": 10, "burst": 20} or null'
                ]
            },
        ),
        (
            {"rate_limit": {}},
            {"settings.rate_limit.per_second": ["is required (0 means unlimited)"]},
        ),
        (
            {"rate_limit": {"per_second": -1, "burst": 1.5, "x": 1}},
            {
                "settings.rate_limit.x": ["unknown field; allowed: per_second, burst"],
                "settings.rate_limit.per_second": ["must be a number between 0 and 1e+06"],
                "settings.rate_limit.burst": ["must be an integer between 0 and 1000000"],
            },
        ),
        (
            {"rate_limit": {"per_second": True, "burst": True}},
            {
                "settings.rate_limit.per_second": ["must be a number between 0 and 1e+06"],
                "settings.rate_limit.burst": ["must be an integer between 0 and 1000000"],
            },
        ),
        (
            {"rate_limit": {"per_second": float("nan")}},
            {"settings.rate_limit.per_second": ["must be a number between 0 and 1e+06"]},
        ),
        (
            {"allowed_ips": "10.0.0.0/8"},
            {"settings.allowed_ips": ["must be a list of IP addresses or CIDR networks, or null"]},
        ),
        (
            {"allowed_ips": []},
            {"settings.allowed_ips": ["must not be empty (null allows every address)"]},
        ),
        (
            {"allowed_ips": ["10.0.0.0/8", 7, "nope", "10.0.0.1/8"]},
            {
                "settings.allowed_ips.1": ["must be a string"],
                "settings.allowed_ips.2": ["must be an IP address or a CIDR network"],
                "settings.allowed_ips.3": ["has host bits set; did you mean 10.0.0.0/8?"],
            },
        ),
        (
            {"allowed_ips": ["10.0.0.1"] * 101},
            {"settings.allowed_ips": ["must not have more than 100 items"]},
        ),
    ],
)
def test_validation_errors(raw: Any, errors: dict[str, list[str]]) -> None:
    assert parse_limits_settings(raw)[1] == errors


def test_custom_field_prefix() -> None:
    assert parse_limits_settings({"allowed_ips": []}, field="s")[1] == {
        "s.allowed_ips": ["must not be empty (null allows every address)"]
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)


# Addresses, networks (host bits set or not) and address-like text: without an allowlist of
# them alone, an accepted allowlist was never drawn and the compile check below never ran.
ALLOWLIST_ENTRIES = st.lists(
    st.ip_addresses().map(str)
    | st.builds("{}/{}".format, st.ip_addresses(), st.integers(0, 129))
    | st.text("0123456789abcdef.:/ ", max_size=20),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.dictionaries(st.sampled_from(["rate_limit", "allowed_ips", "other"]), JSON)
    | st.fixed_dictionaries(
        {
            "rate_limit": st.dictionaries(st.sampled_from(["per_second", "burst", "x"]), JSON),
            "allowed_ips": st.lists(st.ip_addresses().map(str) | st.text(max_size=20), max_size=4),
        }
    )
    | st.fixed_dictionaries({"allowed_ips": ALLOWLIST_ENTRIES})
    | JSON
)
def test_validation_never_raises_and_valid_output_compiles(raw: Any) -> None:
    parsed, errors = parse_limits_settings(raw)
    assert all(k == "settings" or k.startswith("settings.") for k in errors)
    if not errors:
        parsed.allowlist()  # every accepted entry compiles
        again, errors_again = parse_limits_settings(parsed.to_json())
        assert errors_again == {} and again == parsed
