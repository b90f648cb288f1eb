"""Reading a JSON number as an integer the way JSON Schema does (pure: no I/O)."""

from __future__ import annotations

from typing import Any

# The largest integer that no other integer written as a number reads as (JavaScript's
# Number.MAX_SAFE_INTEGER): 9007199254740993.0 reads as the float 9007199254740992.0, so from
# 2**53 on a float may stand for another integer than the one written.
MAX_EXACT_FLOAT_INTEGER = 2**53 - 1


def json_integer(value: Any) -> int | None:
    """``value`` as an integer when it is one in JSON Schema's sense: an integer, or a number
    whose fraction is zero (``805.0``: JSON has one number type, and some clients write every
    number with a fraction) of at most MAX_EXACT_FLOAT_INTEGER, where the float read is the
    integer written; None otherwise, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_FLOAT_INTEGER:
        return int(value)
    return None
