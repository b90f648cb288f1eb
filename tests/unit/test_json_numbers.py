"""json_integer: a JSON number is an integer when JSON Schema says it is, and a float only while
it holds the integer exactly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.json_numbers import MAX_EXACT_FLOAT_INTEGER, json_integer


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (805, 805),
        (-3, -3),
        (2**70, 2**70),  # an int stays exact at any size; bounds are the caller's
        (805.0, 805),
        (-0.0, 0),
        (float(MAX_EXACT_FLOAT_INTEGER), MAX_EXACT_FLOAT_INTEGER),
        (float(MAX_EXACT_FLOAT_INTEGER + 1), None),
        (805.5, None),
        (float("inf"), None),
        (float("nan"), None),
        (True, None),
        (False, None),
        ("805", None),
        (None, None),
    ],
)
def test_json_integer(value: Any, expected: int | None) -> None:
    assert json_integer(value) == expected
    assert json_integer(value) is None or type(json_integer(value)) is int


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (b"9007199254740991.0", 9007199254740991),  # 2**53 - 1: no other integer reads as it
        # 2**53 + 1 reads as the float 2**53 (the nearest one): taken, it would be another
        # integer than the one written, as would 2**53 itself, which it cannot be told from.
        (b"9007199254740993.0", None),
        (b"9007199254740992.0", None),
        (b"-9007199254740993.0", None),
    ],
)
def test_a_float_is_an_integer_only_below_two_to_the_53(
    written: bytes, expected: int | None
) -> None:
    assert json_integer(orjson.loads(written)) == expected
