"""The run state machine, output bounds and prune ages (pure)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.exceptions import Conflict
from gateway.executor.commands import parse_age
from gateway.run_states import STATUSES, bound_message, bound_output, check_transition

LEGAL = {
    ("queued", "cancelled"),
    ("in-progress", "completed"),
    ("in-progress", "failed"),
    ("in-progress", "cancelled"),
    ("in-progress", "queued"),
}


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
def test_only_the_allowed_transitions_pass(current: str, new: str) -> None:
    if (current, new) in LEGAL:
        check_transition(current, new)
        return
    with pytest.raises(Conflict) as raised:
        check_transition(current, new)
    assert f"from {current} to {new}" in str(raised.value)


def test_claiming_is_the_only_way_to_start() -> None:
    with pytest.raises(Conflict, match="only by being claimed"):
        check_transition("queued", "in-progress")


def test_short_output_is_kept_whole_without_nuls() -> None:
    assert bound_output("ok\n") == "ok\n"
    assert bound_output("a\x00b") == "ab"


def test_long_output_keeps_its_tail() -> None:
    text = "x" * 100 + "é" * 10 + "the end"
    bounded = bound_output(text, limit=20)
    assert bounded.endswith("é" * 6 + "the end")
    assert bounded.startswith("[output truncated: first 108 bytes dropped]\n")


def test_long_messages_are_cut() -> None:
    assert bound_message("m" * 5000, limit=10) == "m" * 9 + "…"


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(seconds=3600)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_prune_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "30 days", "1w"])
def test_bad_prune_ages_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="30d, 12h, 90m or 3600s"):
        parse_age(text)
