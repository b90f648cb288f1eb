"""The run state machine, output bounds and prune ages (pure)."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from gateway.exceptions import Conflict
from gateway.executor.command import OutputTail
from gateway.executor.commands import add_commands, parse_age
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


def test_an_executors_own_truncation_note_is_counted_once() -> None:
    # gateway executor keeps a tail and notes what it dropped; storage trims again to the
    # same limit: one note, both cuts counted (it said "first 47 bytes" for 134,464).
    tail = OutputTail(limit=64)
    tail.add(b"0123456789" * 20 + b"the end")  # 207 bytes: 143 dropped here
    bounded = bound_output(tail.text(), limit=64)
    assert bounded == "[output truncated: first 143 bytes dropped]\n" + tail.text()[-64:]
    assert bounded.count("output truncated") == 1
    cut_again = bound_output(tail.text(), limit=10)
    assert cut_again == "[output truncated: first 197 bytes dropped]\n789the end"
    assert bound_output("[output truncated: first 5 bytes dropped]\nshort") == (
        "[output truncated: first 5 bytes dropped]\nshort"
    )


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


@pytest.mark.parametrize("text", ["36501d", "1000000d", "99999999999999999999s", "900000h"])
def test_prune_ages_past_the_calendar_are_refused(text: str) -> None:
    # They raised OverflowError (exit 1 and a traceback) instead of the documented exit 2.
    with pytest.raises(ValueError, match="is too large; at most 36500d"):
        parse_age(text)
    assert parse_age("36500d") == timedelta(days=36_500)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--lease-seconds", "nan"], "must be a number from 5 to 3600, got nan"),
        (["--lease-seconds", "inf"], "must be a number from 5 to 3600, got inf"),
        (["--lease-seconds", "1e300"], "must be a number from 5 to 3600, got 1e300"),
        # Below POST /runs/claim's minimum: heartbeats every S/3 and runs flapping between
        # executors on any hiccup.
        (["--lease-seconds", "1"], "argument --lease-seconds: must be a number from 5 to 3600"),
        (["--lease-seconds", "4.99"], "must be a number from 5 to 3600, got 4.99"),
        (["--lease-seconds", "0"], "must be a number from 5 to 3600, got 0"),
        (["--poll-interval", "0"], "must be a number greater than 0, got 0"),
        (["--grace-seconds", "nan"], "must be a number at least 0, got nan"),
        (["--grace-seconds", "-1"], "must be a number at least 0, got -1"),
        # Past a bigint the first claim failed with a driver traceback (out of int64 range).
        (
            ["--pipeline", "99999999999999999999"],
            "must be at most 9223372036854775807, got 99999999999999999999",
        ),
    ],
)
def test_executor_options_refuse_what_would_fail_mid_run(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A nan lease passed "<= 0" and killed the executor at its first claim.
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["executor", "--pipeline", "1", *args, "--", "true"])
    assert caught.value.code == 2
    assert problem in capsys.readouterr().err
    parsed = parser.parse_args(["executor", "--pipeline", "1", "--grace-seconds", "0", "--", "x"])
    assert parsed.grace_seconds == 0.0
    for lease in ("5", "3600", "7.5"):  # the range's ends are in it; fractions too
        parsed = parser.parse_args(["executor", "--pipeline", "1", "--lease-seconds", lease, "x"])
        assert parsed.lease_seconds == float(lease)
