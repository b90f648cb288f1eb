"""At most one log line per interval for an event that a flood of requests can repeat.

A database outage or a full batch queue answers every request 503: one warning per request
would write thousands of lines a second (costing CPU when the gateway is already struggling)
and bury the one line an operator needs. The metrics count every request; the log says that
it is happening, then how many more there were.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Distinct keys remembered (the reasons are a handful of fixed messages; this bounds a mistake).
MAX_KEYS = 64


class LogThrottle:
    """Decides, per key, whether this occurrence gets a log line: the first one does, then one
    per ``interval`` seconds, carrying how many occurrences went unlogged since the last."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def take(self, key: str) -> int | None:
        """None: do not log this one. Otherwise log it, with the returned number of
        occurrences of ``key`` suppressed since the previous line (0 for the first)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= MAX_KEYS:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def forget(self, key: str) -> None:
        """The trouble ``key`` stood for is over: its next occurrence is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)
