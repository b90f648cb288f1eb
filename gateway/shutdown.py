"""One deadline for stopping a process: draining the listeners and stopping the services share
``[server] shutdown_timeout``, instead of each taking a full one (a worker would otherwise be
killed by its supervisor while its dispatcher still waits for deliveries in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.logs import get_logger

log = get_logger(__name__)

SHUTDOWN = "shutdown"  # key in app[appkeys.SERVICES]


class Shutdown:
    """Set once the process starts stopping: its deadline, and what to tell services then (a
    dispatcher stops claiming new deliveries while requests in flight are still draining)."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._on_begin: list[Callable[[], None]] = []

    @property
    def begun(self) -> bool:
        return self._deadline is not None

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when stopping begins (at once if it has)."""
        if self.begun:
            callback()
        else:
            self._on_begin.append(callback)

    def begin(self, seconds: float) -> None:
        """Start stopping: everything still to do must be done within ``seconds``."""
        if self.begun:
            return
        self._deadline = asyncio.get_running_loop().time() + seconds
        callbacks, self._on_begin = self._on_begin, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one service's failure must not keep the others running
                log.exception("shutdown_callback_failed", callback=repr(callback))

    def remaining(self, default: float) -> float:
        """Seconds left before the deadline (never negative); ``default`` before stopping
        has begun (a service stopped on its own, as in tests)."""
        if self._deadline is None:
            return default
        return max(0.0, self._deadline - asyncio.get_running_loop().time())
