"""Who holds up a session waiting for a lock: the words for a lock wait that gave up.

A statement that times out waiting for a lock (lock_timeout, 55P03) does not say whose lock it
was, and once it has failed nobody waits any more: the blockers are sampled while it waits, on
a connection of its own, from ``pg_blocking_pids`` and ``pg_stat_activity`` (pid, application
name, state, transaction age and user; never the query text, which may hold data).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.logs import get_logger
from gateway.storage.queries import QUERIES

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Blocker:
    """A session that held a lock another one waited for."""

    pid: int
    application_name: str | None
    state: str | None
    user: str | None
    transaction_seconds: float | None

    def describe(self) -> str:
        """``pid 4242 (application_name 'pg_dump', state 'active', transaction open 300s)``."""
        details = [
            f"{label} {value!r}"
            for label, value in (
                ("application_name", self.application_name),
                ("state", self.state),
                ("user", self.user),
            )
            if value
        ]
        if self.transaction_seconds is not None:
            details.append(f"transaction open {self.transaction_seconds:.0f}s")
        return f"pid {self.pid}" + (f" ({', '.join(details)})" if details else "")


class LockWaitWatch:
    """Samples which sessions block a backend while a block of work runs, logging them as it
    goes (``lock_wait``: at the first sighting, then every ``log_every`` seconds, with the time
    since the watch was made: one watch may follow several attempts of the same work).

    ``connect`` opens the connection it asks on, and only once the work has run for
    ``interval`` seconds: work that does not wait costs nothing. Its own failures (no
    connection to spare ...) only leave the blockers unknown.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        what: str,
        *,
        interval: float = 0.25,
        log_every: float = 5.0,
    ) -> None:
        self._connect = connect
        self._what = what
        self._interval = interval
        self._log_every = log_every
        self._started = time.monotonic()
        self._logged_at: float | None = None
        self.blockers: tuple[Blocker, ...] = ()  # the last seen

    @contextlib.asynccontextmanager
    async def watching(self, pid: int) -> AsyncIterator[None]:
        """Sample the blockers of backend ``pid`` while the block runs."""
        task = asyncio.create_task(self._sample(pid))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample(self, pid: int) -> None:
        await asyncio.sleep(self._interval)
        try:
            conn = await self._connect()
        except Exception as exc:  # the blockers stay unknown; the work goes on
            log.debug("lock_wait_watch_unavailable", what=self._what, error=type(exc).__name__)
            return
        try:
            while True:
                rows = await conn.fetch(QUERIES["lock_blockers"], pid)
                if rows:
                    self.blockers = tuple(Blocker(*row) for row in rows)
                    now = time.monotonic()
                    if self._logged_at is None or now - self._logged_at >= self._log_every:
                        self._logged_at = now
                        log.warning(
                            "lock_wait",
                            what=self._what,
                            waited_s=round(now - self._started, 1),
                            blocked_by=[b.describe() for b in self.blockers],
                        )
                await asyncio.sleep(self._interval)
        except Exception as exc:  # as above: a sampler's failure is never the work's
            log.debug("lock_wait_watch_failed", what=self._what, error=type(exc).__name__)
        finally:
            conn.terminate()
