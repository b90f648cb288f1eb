"""LogThrottle: the first occurrence is logged, then one per interval with the count skipped."""

from __future__ import annotations

from structlog.testing import capture_logs

from gateway.log_throttle import MAX_KEYS, LogThrottle, OutageLog
from gateway.logs import get_logger
from tests.manual_clock import ManualClock


def test_one_line_per_interval_per_key_with_the_count_suppressed() -> None:
    clock = ManualClock()
    throttle = LogThrottle(10.0, clock)
    assert throttle.take("down") == 0
    assert [throttle.take("down") for _ in range(5)] == [None] * 5
    assert throttle.take("full") == 0  # another reason has its own first line
    clock.now += 10.0
    assert throttle.take("down") == 5
    assert throttle.take("down") is None
    clock.now += 60.0
    assert throttle.take("down") == 1
    assert throttle.take("full") == 0


def test_keys_are_bounded() -> None:
    throttle = LogThrottle(10.0, ManualClock())
    for i in range(MAX_KEYS * 3):
        assert throttle.take(f"reason {i}") == 0
    assert len(throttle._last) <= MAX_KEYS


def test_a_forgotten_key_is_logged_at_once_again() -> None:
    # One run's heartbeats failing in two outages a few seconds apart: each outage's first.
    throttle = LogThrottle(60.0, ManualClock())
    assert throttle.take("run-1") == 0
    assert throttle.take("run-1") is None
    throttle.forget("run-1")
    assert throttle.take("run-1") == 0
    throttle.forget("never seen")  # nothing to forget: no error


def test_an_outage_warns_at_its_start_and_counts_every_failed_try(debug_logs: None) -> None:
    outage = OutageLog(get_logger("test"), 60.0, "polls")
    with capture_logs() as logs:
        for _ in range(3):
            outage.failed("poll_failed", error="away")
        assert outage.recovered() == 3
        assert outage.recovered() == 0  # nothing failed since
        outage.failed("poll_failed", error="away again")  # a new outage: a warning again
    assert [(e["log_level"], e["polls"], e["error"]) for e in logs] == [
        ("warning", 1, "away"),
        ("debug", 2, "away"),
        ("debug", 3, "away"),
        ("warning", 1, "away again"),
    ]
