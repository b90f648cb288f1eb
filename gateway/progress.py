"""Progress lines for long batch commands (``gateway prune``, ``gateway keys rotate``).

Such a command works through a table in batches and used to say nothing until the end: on a
large table, minutes of silence that look like a hang. A :class:`ProgressLog` is handed to the
storage loops as their ``progress`` callback and logs the running count at most once per
``interval`` seconds, so a short run still logs only its summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.logs import get_logger

log = get_logger(__name__)

PROGRESS_INTERVAL = 10.0  # seconds between progress lines of one command

# What storage loops call after each batch: (table, rows done so far in that table).
Progress = Callable[[str, int], None]


class ProgressLog:
    """Logs ``event`` with ``table``, ``rows`` and ``elapsed`` (seconds since it was made),
    at most once per ``interval`` seconds."""

    def __init__(
        self,
        event: str,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self._clock = clock
        self._started = self._last = clock()

    def __call__(self, table: str, rows: int) -> None:
        now = self._clock()
        if now - self._last < self.interval:
            return
        self._last = now
        log.info(self.event, table=table, rows=rows, elapsed=round(now - self._started, 1))
