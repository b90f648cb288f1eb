"""gateway.loop_lag: the event-loop lag watcher, on a real event loop blocked on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from structlog.testing import capture_logs

from gateway.loop_lag import lag_after, watch_loop_lag


def test_lag_is_the_time_past_the_interval() -> None:
    assert lag_after(10.0, 10.35, 0.1) == pytest.approx(0.25)
    assert lag_after(10.0, 10.1, 0.1) == 0.0
    # asyncio may run a timer up to its clock resolution early: never a negative lag.
    assert lag_after(10.0, 10.099, 0.1) == 0.0


class Samples(list[float]):
    """The watcher's samples; :meth:`next` waits for the one after those seen so far."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def observe(self, lag: float) -> None:
        self.append(lag)
        self.arrived.set()

    async def next(self) -> float:
        self.arrived.clear()
        await self.arrived.wait()
        return self[-1]


async def test_a_blocked_loop_is_measured_and_logged_once_per_interval() -> None:
    samples = Samples()
    after_blocks: list[float] = []
    with capture_logs() as logs:
        watcher = asyncio.create_task(
            watch_loop_lag(interval=0.01, warn_after=0.2, warn_every=3600, observe=samples.observe)
        )
        try:
            for _ in range(3):  # the watcher runs: a few ordinary samples first
                await samples.next()
            for _ in range(2):
                # Holds the loop, as a blocking call in a handler would.
                time.sleep(0.3)  # noqa: ASYNC251
                after_blocks.append(await samples.next())
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    # The sample taken right after each block measured it (asserted on those two only: a
    # stall of the machine elsewhere in the run must not fail the test).
    assert all(lag >= 0.25 for lag in after_blocks), after_blocks
    lines = [entry for entry in logs if entry["event"] == "event_loop_blocked"]
    # One line: the second block falls within warn_every of the first, counted, not logged
    # (the count it then carries is LogThrottle's, tested in test_log_throttle.py).
    assert len(lines) == 1, logs
    assert lines[0]["log_level"] == "warning"
    assert lines[0]["lag_ms"] >= 200  # warn_after
    assert lines[0]["suppressed"] == 0
