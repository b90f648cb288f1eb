"""The dispatcher's counts of requests in flight per target and per environment."""

from __future__ import annotations

import pytest

from gateway.dispatcher.in_flight import InFlight, environment_limit


@pytest.mark.parametrize(
    ("per_environment", "concurrency", "limit"),
    [
        (16, 64, 16),
        (1, 64, 1),
        (0, 64, 64),  # no limit: only the process's own
        (64, 64, 64),
        (100, 8, 8),  # more than the process ever has in flight
    ],
)
def test_environment_limit(per_environment: int, concurrency: int, limit: int) -> None:
    assert environment_limit(per_environment, concurrency) == limit


def test_a_key_is_full_at_the_limit_and_free_again_when_a_request_ends() -> None:
    counts = InFlight[int](2)
    assert (counts.free(7), counts.full(7), counts.room(), counts.busy()) == (2, False, {}, [])
    counts.take(7)
    assert (counts.free(7), counts.full(7), counts.room()) == (1, False, {7: 1})
    counts.take(7)
    counts.take(8)
    assert counts.full(7) and not counts.full(8)
    assert (counts.room(), counts.busy()) == ({7: 0, 8: 1}, [7])
    assert counts.give_back(7) is False  # one still in flight
    assert (counts.free(7), counts.busy()) == (1, [])


def test_a_key_with_nothing_in_flight_is_forgotten() -> None:
    counts = InFlight[str](1)
    counts.take("https://a:443")
    assert counts.give_back("https://a:443") is True
    assert counts.room() == {}
    assert counts.free("https://a:443") == 1
    assert counts.room() == {}  # asking about a key does not keep it


def test_a_key_past_the_limit_has_no_room_not_negative_room() -> None:
    # A limit lowered under the requests already in flight (none is cut off).
    counts = InFlight[int](3)
    for _ in range(3):
        counts.take(1)
    counts.limit = 2
    assert (counts.free(1), counts.room(), counts.busy()) == (0, {1: 0}, [1])
