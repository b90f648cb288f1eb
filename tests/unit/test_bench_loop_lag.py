"""bench/loop_lag.py: the lag histogram's difference over a run, read from real exposition text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.loop_lag import describe, parse
from gateway.metrics import LOOP_LAG_BUCKETS


def exposition(*lags: float) -> str:
    """What a gateway's /metrics says after observing ``lags`` (its own metric's buckets)."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "hookgate_event_loop_lag_seconds", "lag", buckets=LOOP_LAG_BUCKETS, registry=registry
    )
    for lag in lags:
        histogram.observe(lag)
    return generate_latest(registry).decode()


def test_the_run_is_the_difference_of_two_scrapes() -> None:
    before = parse(exposition(0.002, 0.3))
    after = parse(exposition(0.002, 0.3, 0.004, 0.004, 0.03, 0.07, 0.12))
    summary = after.minus(before).summary()
    assert summary == {
        "samples": 5,
        "over_10ms": 3,
        "over_50ms": 2,
        "over_100ms": 1,
        "worst_le_ms": 250.0,
    }
    assert describe(summary) == (
        "5 samples, 3 over 10 ms, 2 over 50 ms, 1 over 100 ms; the longest at most 250 ms"
    )


def test_a_lag_past_the_last_bucket_and_no_samples_are_said_plainly() -> None:
    assert describe(parse(exposition(7.0)).summary()).endswith("the longest above 5 s")
    assert describe(parse(exposition()).summary()) == "no samples"
    assert parse("# a gateway without the metric\n").summary()["samples"] == 0
