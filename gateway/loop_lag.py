"""Event-loop lag: how late a process's event loop runs a callback that was due.

Every request a worker serves shares its one event loop. Something that holds the loop (a
burst of large bodies, a slow regular expression in a JSONPath filter, a blocking call made by
mistake) delays every request of that worker at once: it shows in clients' p99 and in
``hookgate_ingest_latency_seconds``, but in no handler's own timings. :func:`watch_loop_lag`
sleeps :data:`SAMPLE_INTERVAL` over and over and measures how late it wakes up; each sample
goes to ``hookgate_event_loop_lag_seconds``, and a lag of :data:`WARN_AFTER` or more logs
``event_loop_blocked`` (at most one line per :data:`WARN_EVERY` seconds; ``suppressed`` says
how many more there were since the previous line).

Cost: ten timer wake-ups a second and one histogram observation each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway import metrics
from gateway.log_throttle import LogThrottle
from gateway.logs import get_logger

log = get_logger(__name__)

SAMPLE_INTERVAL = 0.1  # seconds the watcher sleeps between samples
WARN_AFTER = 0.25  # a lag this long (seconds) is logged as a warning
WARN_EVERY = 60.0  # seconds between two such warnings of one process


def lag_after(slept_from: float, woke_at: float, interval: float) -> float:
    """How much later than ``interval`` after ``slept_from`` the loop woke the sleeper (never
    negative: asyncio may run a timer up to its clock resolution early)."""
    return max(0.0, woke_at - slept_from - interval)


async def watch_loop_lag(
    interval: float = SAMPLE_INTERVAL,
    warn_after: float = WARN_AFTER,
    warn_every: float = WARN_EVERY,
    observe: Callable[[float], None] = metrics.observe_loop_lag,
) -> None:
    """Sample the running loop's lag until cancelled (run it as a task)."""
    loop = asyncio.get_running_loop()
    throttle = LogThrottle(warn_every, clock=loop.time)
    while True:
        slept_from = loop.time()
        await asyncio.sleep(interval)
        lag = lag_after(slept_from, loop.time(), interval)
        observe(lag)
        if lag < warn_after:
            continue
        suppressed = throttle.take("blocked")
        if suppressed is not None:
            log.warning(
                "event_loop_blocked",
                lag_ms=round(lag * 1000),
                suppressed=suppressed,
                interval=warn_every,
            )
