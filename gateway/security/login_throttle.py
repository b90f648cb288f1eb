"""Failed-login throttling per client address and per account, in one process.

Argon2 makes each guess cost a tenth of a second of CPU; this bounds how many guesses a client
gets. An attempt counts as a failure from the moment it starts (so a burst of concurrent
guesses is bounded too) until it succeeds. Once an address has
``auth.login_failures_per_address`` failures, or an account (email, case-insensitive)
``auth.login_failures_per_account``, within the last ``auth.login_failure_window`` seconds,
further attempts are refused without checking the password until the oldest of them leaves
the window. A success clears the account's failures (not the address's: a client cannot reset
its own count by logging in to an account of its own). The state lives in one worker process
and is forgotten on restart; with N workers a client can reach up to N times the limits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from gateway.config import AuthConfig

LOGIN_THROTTLE = "login_throttle"  # key in app[appkeys.SERVICES]: one LoginThrottle per process
MAX_TRACKED = 100_000  # keys (addresses + accounts) remembered; the oldest are dropped first


class LoginThrottle:
    """Recent failed logins by key (``address:<ip>``, ``account:<email>``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._clock = clock

    def begin(self, address: str | None, email: str, auth: AuthConfig) -> int:
        """Seconds the client must wait (0: go ahead, and the attempt is counted as a failure
        until :meth:`succeeded`)."""
        now = self._clock()
        limits = _limits(address, email, auth)
        wait = 0.0
        for key, limit in limits:
            times = self._recent(key, auth.login_failure_window, now)
            if times is not None and len(times) >= limit:
                wait = max(wait, times[-limit] + auth.login_failure_window - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        for key, limit in limits:
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque()
                self._forget_oldest_beyond(MAX_TRACKED)
            times.append(now)
            while len(times) > limit:
                times.popleft()
        return 0

    def succeeded(self, address: str | None, email: str) -> None:
        """The attempt begun for ``address`` and ``email`` was right."""
        self._failures.pop(_account_key(email), None)
        self._uncount(_address_key(address))

    def cancelled(self, address: str | None, email: str) -> None:
        """The attempt begun for ``address`` and ``email`` ended before the password was
        checked (the database was unavailable, the gateway overloaded): not a failure."""
        self._uncount(_address_key(address))
        self._uncount(_account_key(email))

    def _uncount(self, key: str) -> None:
        times = self._failures.get(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def _recent(self, key: str, window: float, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _forget_oldest_beyond(self, size: int) -> None:
        while len(self._failures) > size:
            del self._failures[next(iter(self._failures))]


def _limits(address: str | None, email: str, auth: AuthConfig) -> list[tuple[str, int]]:
    limits = [
        (_address_key(address), auth.login_failures_per_address),
        (_account_key(email), auth.login_failures_per_account),
    ]
    return [(key, limit) for key, limit in limits if limit > 0]


def _address_key(address: str | None) -> str:
    return f"address:{address or 'unknown'}"


def _account_key(email: str) -> str:
    return f"account:{email.strip().lower()}"
