"""Debian's libfaketime, to run a gateway process with its clock off by a fixed offset
(``LD_PRELOAD`` and ``FAKETIME``: time, datetime and the monotonic clocks alike)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Debian's path, per architecture (x86_64-linux-gnu, aarch64-linux-gnu, ...).
FAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)


def skewed_clock(offset: str) -> dict[str, str]:
    """The environment of a process whose clock is ``offset`` (``"+120"``: 120 s ahead) off;
    a clear failure (never a skip) when libfaketime is missing."""
    if not FAKETIME.exists():
        pytest.fail(
            f"{FAKETIME} is missing, so the clock-skew tests cannot run: install it with "
            "`apt-get update && apt-get install -y libfaketime` (.ci/run does this)"
        )
    return {"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset}
