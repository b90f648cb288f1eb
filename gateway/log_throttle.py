"""At most one log line per interval for an event that a flood of requests can repeat.

A database outage or a full batch queue answers every request 503: one warning per request
would write thousands of lines a second (costing CPU when the gateway is already struggling)
and bury the one line an operator needs. The metrics count every request; the log says that
it is happening, then how many more there were. :class:`OutageLog` does the same for one
try repeated while something is away (a poll, a reconnection): one warning at the start of the
outage, then one per interval, with how many tries failed so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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


class OutageLog:
    """The failures in a row of one repeated try (a poll, a claim, a reconnection) while what
    it needs is away: the first of an outage is logged as a warning, then one per ``interval``
    seconds, the others as debug lines, each with the count so far under ``count_field``."""

    def __init__(self, logger: Any, interval: float, count_field: str) -> None:
        self._logger = logger  # the caller's: its lines keep their logger name
        self._interval = interval
        self._count_field = count_field
        self._throttle = LogThrottle(interval)
        self.failures = 0

    def failed(self, event: str, **fields: Any) -> None:
        """Count one more failed try and log it (a warning, or a debug line)."""
        self.failures += 1
        if self.failures == 1:  # a new outage: its first failure is a warning
            self._throttle = LogThrottle(self._interval)
        logged = self._throttle.take(event) is not None
        (self._logger.warning if logged else self._logger.debug)(
            event, **fields, **{self._count_field: self.failures}
        )

    def recovered(self) -> int:
        """A try worked: the failures of the outage just over (0: there was none); the count
        starts again."""
        failures, self.failures = self.failures, 0
        return failures
