"""What happens after a delivery attempt: done, retry later, give up, or disable the hook.

Pure: the caller passes the attempt number, the HTTP status (None when no response came back),
the ``Retry-After`` header, the current time and a random source.

* 2xx → ``succeeded``. Anything else is a failure: 3xx (redirects are not followed), 4xx, 5xx,
  timeouts and connection errors are retried; a refusal by the SSRF guard is not (the target is
  a configuration problem, not a transient one); 410 Gone gives up at once and disables the hook.
* Attempt ``n`` (1-based) that failed is retried after ``schedule[n-1]`` seconds, with jitter:
  the delay is drawn uniformly from ``[d * (1 - jitter), d]`` — ``jitter = 1`` is full jitter,
  ``0`` the exact schedule. After ``len(schedule) + 1`` attempts the delivery has ``failed``.
* ``Retry-After`` (delta-seconds or an HTTP date) on any failed response lengthens that delay
  (the server asked us not to come back sooner), capped at ``retry_after_max`` seconds; it never
  adds attempts.
* A hook whose deliveries fail ``disable_after_failures`` times in a row (counted per delivery,
  after its retries; 0 = never) is disabled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

SUCCEEDED, RETRY, FAILED = "succeeded", "retry", "failed"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one attempt: ``action`` plus the retry delay or why the hook stops."""

    action: str  # succeeded | retry | failed
    delay: float = 0.0
    disable_hook: bool = False
    reason: str = ""


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # delta-seconds is ASCII DIGITs (RFC 9110 §10.2.3)
        return float(min(int(text[:12]), 10**9))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past any datetime
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry schedule and auto-disable threshold from ``[outgoing]``."""

    schedule: tuple[float, ...] = (10.0, 30.0, 120.0, 600.0, 1800.0)
    jitter: float = 1.0
    retry_after_max: float = 3600.0
    disable_after_failures: int = 10

    @classmethod
    def create(
        cls,
        schedule: Sequence[float],
        jitter: float = 1.0,
        retry_after_max: float = 3600.0,
        disable_after_failures: int = 10,
    ) -> RetryPolicy:
        """Validate and build; raises ValueError on a negative delay or jitter outside 0..1."""
        if any(d < 0 for d in schedule):
            raise ValueError("retry delays must not be negative")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        return cls(
            tuple(float(d) for d in schedule), jitter, retry_after_max, disable_after_failures
        )

    @property
    def max_attempts(self) -> int:
        """Attempts per delivery: the first one plus one per scheduled retry."""
        return len(self.schedule) + 1

    def decide(
        self,
        attempt: int,
        status: int | None,
        *,
        retry_after: str | None = None,
        refused: bool = False,
        now: datetime | None = None,
        rng: random.Random | None = None,
    ) -> Decision:
        """Decide what follows attempt number ``attempt`` (1-based)."""
        if status is not None and 200 <= status < 300:
            return Decision(SUCCEEDED)
        if refused:
            return Decision(FAILED, reason="target refused by the SSRF guard")
        if status == 410:
            return Decision(FAILED, disable_hook=True, reason="target answered 410 Gone")
        if attempt >= self.max_attempts:
            return Decision(FAILED, reason=f"gave up after {attempt} attempts")
        scheduled = self.schedule[max(attempt, 1) - 1]
        draw = (rng or random).random()
        delay = scheduled * (1 - self.jitter * draw)
        asked = parse_retry_after(retry_after, now or datetime.now(UTC))
        if asked is not None:
            delay = max(delay, min(asked, self.retry_after_max))
        return Decision(RETRY, delay=delay)

    def should_disable(self, consecutive_failures: int) -> bool:
        """True when this many failed deliveries in a row disable the hook."""
        return 0 < self.disable_after_failures <= consecutive_failures
