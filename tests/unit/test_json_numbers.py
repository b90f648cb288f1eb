"""json_integer: a JSON number is an integer when JSON Schema says it is, and a float only while
it holds the integer exactly."""

from __future__ import annotations

from typing import Any

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
        (float(MAX_EXACT_FLOAT_INTEGER) * 2, None),
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
