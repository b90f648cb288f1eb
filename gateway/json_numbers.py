"""Reading a JSON number as an integer the way JSON Schema does (pure: no I/O)."""

from __future__ import annotations

from typing import Any

# The largest integer every float below it holds exactly: past it, 9007199254740993.0 reads as
# 9007199254740992.0, another integer than the one written.
MAX_EXACT_FLOAT_INTEGER = 2**53


def json_integer(value: Any) -> int | None:
    """``value`` as an integer when it is one in JSON Schema's sense: an integer, or a number
    whose fraction is zero (``805.0``: JSON has one number type, and some clients write every
    number with a fraction) that a float holds exactly; None otherwise, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_FLOAT_INTEGER:
        return int(value)
    return None
