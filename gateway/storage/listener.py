"""LISTEN connections that stay up: a dropped one is noticed at once and opened again.

A LISTEN connection can die without anyone using it: a database restart or failover, an
administrator's ``pg_terminate_backend``, a partition. Notifications sent meanwhile are lost, so
whoever relies on them (the hook cache, the executor) must learn when it happens and catch up
once it listens again. :class:`KeptListener` does that for them, in one place:

- it notices a lost connection when the driver reports it closed (``on_lost`` at once), or when
  a round trip on a quiet connection fails or hangs (``ping_interval``: a connection silently
  cut by the network);
- it logs ``<name>_listener_lost`` (what happened, and the owner's ``fallback``), then opens a
  new one with backoff (0.1 s doubling up to ``MAX_RECONNECT_DELAY``), logging
  ``<name>_listen_failed`` as a warning for the first failed attempt and then once per
  ``FAILURE_LOG_INTERVAL`` with the count (the other attempts are debug lines: a long outage
  is not a line every 5 s per listener and worker), and ``<name>_listening`` with
  ``failed_attempts`` when it listens again;
- it calls ``on_listening()`` every time it starts listening (the first time too) and
  ``on_lost()`` every time it stops: the owner's cue to catch up, or to distrust its caches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from gateway.exceptions import DatabaseUnavailable
from gateway.log_throttle import OutageLog
from gateway.logs import get_logger
from gateway.storage.database import Database, close_quietly, translated
from gateway.storage.queries import QUERIES

log = get_logger(__name__)

PING_INTERVAL = 10.0  # seconds between health checks of a quiet connection
PING_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
MAX_RECONNECT_DELAY = 5.0
FAILURE_LOG_INTERVAL = 60.0  # seconds between warnings while reconnecting keeps failing


class ChannelListener:
    """A dedicated connection LISTENing on one channel.

    ``on_payload(payload)`` runs for every notification; ``on_lost()`` when the connection
    closes for any reason. Use :meth:`alive` to detect a silently dead connection.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def open(
        cls,
        db: Database,
        channel: str,
        on_payload: Callable[[str], None],
        on_lost: Callable[[], None],
    ) -> ChannelListener:
        """Connect and LISTEN; raise DatabaseUnavailable when the server cannot be reached."""

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_payload(payload)

        conn = await db.listen(channel, notified)
        conn.add_termination_listener(lambda _conn: on_lost())
        return cls(conn)

    @property
    def closed(self) -> bool:
        return bool(self._conn.is_closed())

    async def alive(self) -> bool:
        """True when a round trip on the connection succeeds (bound it with asyncio.timeout)."""
        try:
            async with translated():
                return bool(await self._conn.fetchval(QUERIES["ping"]) == 1)
        except DatabaseUnavailable:
            return False

    async def close(self) -> None:
        """Close the connection (abruptly when a graceful close does not finish quickly)."""
        if not self._conn.is_closed():
            await close_quietly(self._conn)


class KeptListener:
    """Listens on ``channel`` from :meth:`start` to :meth:`close`; see the module docstring."""

    def __init__(
        self,
        db: Database,
        channel: str,
        on_payload: Callable[[str], None],
        *,
        name: str,
        on_listening: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        fallback: str = "",
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._db = db
        self._channel = channel
        self._on_payload = on_payload
        self._name = name
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._fallback = fallback  # logged with a loss: what covers for the listener
        self._ping_interval = ping_interval
        self._listener: ChannelListener | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Failed attempts since it last listened.
        self._outage = OutageLog(log, FAILURE_LOG_INTERVAL, "attempts")
        self.listening = False

    async def start(self) -> None:
        """Connect (first attempt now), then keep the connection up in the background."""
        await self._connect_once()
        self._task = asyncio.create_task(self._keep(), name=f"{self._name}-listen")

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _connect_once(self) -> bool:
        self._lost = asyncio.Event()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self._listener = await ChannelListener.open(
                    self._db, self._channel, self._on_payload, self._lost.set
                )
        except Exception as exc:  # any failure: retry later, never let the task die
            self._outage.failed(f"{self._name}_listen_failed", error=str(exc) or type(exc).__name__)
            return False
        self.listening = True
        self._on_listening()
        return True

    async def _drop(self) -> None:
        was_listening, self.listening = self.listening, False
        if was_listening:
            self._on_lost()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()

    async def _keep(self) -> None:
        delay = 0.1
        while True:
            if self._listener is None or self._listener.closed:
                await self._drop()
                if not await self._connect_once():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RECONNECT_DELAY)
                    continue
                delay = 0.1
                log.info(
                    f"{self._name}_listening",
                    channel=self._channel,
                    failed_attempts=self._outage.recovered(),
                )
            error = "the connection was closed"
            try:
                # Not wait_for: on Python 3.11, woken by a loss in the turn that close() cancels
                # this task, it returns as if not cancelled (the listener then went on, opened
                # a new connection and close() waited for it forever).
                async with asyncio.timeout(self._ping_interval):
                    await self._lost.wait()
            except TimeoutError:
                assert self._listener is not None
                error = f"no answer to a ping within {PING_TIMEOUT:g} s"
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PING_TIMEOUT):
                        if await self._listener.alive():
                            continue
                        error = "a ping failed"
            log.warning(
                f"{self._name}_listener_lost",
                channel=self._channel,
                error=error,
                fallback=self._fallback,
            )
            await self._drop()
