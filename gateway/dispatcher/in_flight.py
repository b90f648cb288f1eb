"""Requests in flight per key under a limit: the dispatcher keeps one count per target
(``scheme://host:port``) and one per environment, so neither a slow target nor a tenant with
many of them takes every delivery slot of a process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def environment_limit(per_environment: int, concurrency: int) -> int:
    """Requests in flight one environment may have: ``[outgoing] per_environment_concurrency``,
    where 0 (no limit) and anything above ``concurrency`` come to ``concurrency``, the most a
    process has in flight anyway."""
    return min(per_environment or concurrency, concurrency)


class InFlight(Generic[K]):
    """How many requests are in flight per key, and how many more each may start."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: Counter[K] = Counter()

    def free(self, key: K) -> int:
        """Requests ``key`` may start now."""
        return max(self.limit - self._count[key], 0)

    def full(self, key: K) -> bool:
        """No request of ``key`` may start now."""
        return self.free(key) == 0

    def take(self, key: K) -> None:
        """A request of ``key`` started."""
        self._count[key] += 1

    def give_back(self, key: K) -> bool:
        """A request of ``key`` ended; True when none of it is in flight any more."""
        self._count[key] -= 1
        if self._count[key] > 0:
            return False
        del self._count[key]
        return True

    def room(self) -> dict[K, int]:
        """Free slots of each key with requests in flight (the others have ``limit``)."""
        return {key: self.free(key) for key in self._count}

    def total(self) -> int:
        """Requests in flight over all keys."""
        return self._count.total()

    def busy(self) -> list[K]:
        """Keys with no free slot."""
        return [key for key, free in self.room().items() if free == 0]
