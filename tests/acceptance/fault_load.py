"""Bounded load for the fault tests: signed deliveries with unique delivery ids on a few
concurrent connections, every answer recorded (status, Retry-After, when it was sent), plus the
run rows per delivery id read straight from the database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.acceptance.lb_client import CLIENT_TIMEOUT, payload, signed_headers
from tests.acceptance.lb_load import is_2xx

BACKOFF_AFTER_FAILURE = 0.05  # a sender pauses after a 503 or error, as real senders do


@dataclass(frozen=True)
class Answer:
    """One request: its delivery id, status (or what went wrong), Retry-After, send time."""

    delivery: str
    status: int | str
    retry_after: str | None
    sent_at: float


@dataclass
class Load:
    """Up to ``limit`` deliveries to ``url`` on ``connections`` senders, until ``stop()``."""

    session: aiohttp.ClientSession
    url: str
    secret: str
    connections: int = 8
    limit: int = 20_000
    answers: list[Answer] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _sent: int = 0

    async def send(self, delivery: str, number: int = 1) -> Answer:
        """One signed delivery; never raises (a timeout or connection error is the status)."""
        body = payload(number)
        sent_at = time.monotonic()
        try:
            headers = signed_headers(self.secret, body, delivery)
            async with self.session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                return Answer(
                    delivery, response.status, response.headers.get("Retry-After"), sent_at
                )
        except TimeoutError:
            return Answer(delivery, "timeout", None, sent_at)
        except aiohttp.ClientError as exc:
            return Answer(delivery, f"client error {type(exc).__name__}", None, sent_at)

    async def _sender(self) -> None:
        while not self._stopping.is_set() and self._sent < self.limit:
            self._sent += 1
            answer = await self.send(str(uuid.uuid4()), self._sent)
            self.answers.append(answer)
            self._arrived.set()
            if not is_2xx(answer.status):
                await asyncio.sleep(BACKOFF_AFTER_FAILURE)

    async def run(self) -> None:
        """Send until stopped or ``limit`` is reached."""
        await asyncio.gather(*(self._sender() for _ in range(self.connections)))

    def stop(self) -> None:
        self._stopping.set()

    async def until(
        self, predicate: Callable[[list[Answer]], bool], limit: float, what: str
    ) -> float:
        """Wait until ``predicate(answers)``; the seconds it took. Fails after ``limit``."""
        started = time.monotonic()
        while not predicate(self.answers):
            if time.monotonic() - started > limit:
                raise AssertionError(f"{what}: not within {limit}s; {self.summary()}")
            if self._sent >= self.limit and not self._stopping.is_set():
                raise AssertionError(f"{what}: the load ran out of requests; {self.summary()}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=0.5)
            except TimeoutError:
                pass
        return time.monotonic() - started

    def summary(self) -> dict[str, int]:
        return {str(k): v for k, v in Counter(a.status for a in self.answers).items()}


def client(connections: int, *, force_close: bool = False) -> aiohttp.ClientSession:
    """A session bounded by CLIENT_TIMEOUT (a hang fails the test instead of stalling it);
    ``force_close``: a new connection per request, so the kernel spreads them over workers."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=force_close)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    )


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    """Print a ``[faults]`` figures line past pytest's capture (CI logs show it)."""
    line = f"[faults] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    with capsys.disabled():
        print("\n" + line)
