"""Per-hook request limits: a token-bucket rate limit (429) and an IP allowlist (403).

Both are per worker process and cost a few dict and float operations per request. A hook's
``settings`` may carry ``rate_limit: {per_second, burst}`` (``per_second: 0`` exempts the hook
from the default) and ``allowed_ips: [IP or CIDR, ...]``; ``[limits]`` gives the default rate.
:func:`parse_limits_settings` validates both for the management API (422 field keys such as
``settings.rate_limit.per_second`` and ``settings.allowed_ips.2``).

Token bucket: a bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a
request takes one token or is refused with the time until the next token (``Retry-After``).
Memory stays bounded: buckets live in an LRU of at most ``max_buckets`` entries, and a
periodic sweep drops buckets that have refilled completely, which is lossless (a new bucket
starts full, exactly like a refilled one).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import LimitsConfig
from gateway.ingest.client_ip import parse_ip
from gateway.json_numbers import json_integer
from gateway.unknown_fields import add_unknown_keys

MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000
MAX_ALLOWED_IPS = 100
SWEEP_INTERVAL = 60.0  # seconds between sweeps of refilled buckets
_RATE_LIMIT_KEYS = frozenset({"per_second", "burst"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def effective_burst(rate: float, burst: int) -> int:
    """The bucket size: ``burst``, or for 0 the rate rounded up (at least 1)."""
    return burst if burst > 0 else max(1, math.ceil(rate))


class _Bucket:
    __slots__ = ("burst", "rate", "requested_burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.requested_burst = burst  # as given (0: derived), to notice a changed setting
        self.burst = effective_burst(rate, burst)
        self.tokens = float(self.burst)
        self.updated = now


class RateLimiter:
    """Token buckets by key (the hook id) for one process; see the module docstring."""

    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._max_buckets = max_buckets
        self._clock = clock
        self._next_sweep = clock() + SWEEP_INTERVAL

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: Hashable, rate: float, burst: int = 0) -> tuple[bool, float]:
        """Take one token for ``key``: ``(True, 0.0)``, or ``(False, seconds until a token)``.

        ``rate <= 0`` means unlimited (no bucket is kept). ``burst`` 0: see
        :func:`effective_burst`. A changed rate or burst applies to the existing bucket.
        """
        if rate <= 0:
            return True, 0.0
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(rate, burst, now)
            if len(buckets) > self._max_buckets:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket.updated
            if elapsed > 0:  # refill at the rate in force until now, then apply changes
                bucket.tokens = min(float(bucket.burst), bucket.tokens + elapsed * bucket.rate)
            bucket.updated = now
            if bucket.rate != rate or bucket.requested_burst != burst:
                bucket.rate, bucket.requested_burst = rate, burst
                bucket.burst = effective_burst(rate, burst)
                bucket.tokens = min(bucket.tokens, float(bucket.burst))
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, 0.0
        return False, (1.0 - bucket.tokens) / rate

    def sweep(self, now: float | None = None) -> int:
        """Drop every bucket that has refilled completely; return how many were dropped."""
        now = self._clock() if now is None else now
        self._next_sweep = now + SWEEP_INTERVAL
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * b.rate >= b.burst
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def forget(self, key: Hashable) -> None:
        """Drop one bucket (the hook was deleted or its limit changed)."""
        self._buckets.pop(key, None)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class IpAllowlist:
    """Allowed client networks; :meth:`allows` takes a client IP string (or None)."""

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, cidrs: Iterable[str]) -> None:
        """Compile the networks once; ValueError for an entry that is not an IP or CIDR."""
        networks = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)
        self.networks: tuple[Network, ...] = networks
        self._v4 = tuple(n for n in networks if n.version == 4)
        self._v6 = tuple(n for n in networks if n.version == 6)

    def allows(self, ip: str | None) -> bool:
        """True when ``ip`` is inside one of the networks (IPv4-mapped IPv6 counts as IPv4)."""
        address = parse_ip(ip) if ip else None
        if address is None:
            return False
        if address.version == 4:
            return any(address in n for n in self._v4)
        return any(address in n for n in self._v6)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """A hook's own limits; None fields mean "use the default" / "no allowlist"."""

    rate_per_second: float | None = None
    burst: int | None = None
    allowed_ips: tuple[str, ...] | None = None

    def rate_and_burst(self, defaults: LimitsConfig) -> tuple[float, int]:
        """The (rate, burst) in force for this hook: its own, else the ``[limits]`` default."""
        if self.rate_per_second is None:
            return defaults.default_rate_per_second, defaults.default_burst
        return self.rate_per_second, self.burst or 0

    def allowlist(self) -> IpAllowlist | None:
        """The compiled allowlist, or None when every address is allowed."""
        return None if self.allowed_ips is None else IpAllowlist(self.allowed_ips)

    def to_json(self) -> dict[str, Any]:
        """The normalized ``rate_limit`` / ``allowed_ips`` members to store in ``settings``."""
        rate_limit = None
        if self.rate_per_second is not None:
            rate_limit = {"per_second": self.rate_per_second, "burst": self.burst or 0}
        allowed = None if self.allowed_ips is None else list(self.allowed_ips)
        return {"rate_limit": rate_limit, "allowed_ips": allowed}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_limits_settings(
    raw: Any, field: str = "settings"
) -> tuple[LimitsSettings, dict[str, list[str]]]:
    """Validate ``rate_limit`` and ``allowed_ips`` of a hook's settings object.

    Other members of ``raw`` are the caller's business. Returns ``(settings, errors)``;
    ``settings`` is meaningful only when ``errors`` is empty. ``null`` (or absent) means the
    default rate / no allowlist; an empty ``allowed_ips`` list is refused (it would lock out
    every sender; deactivate the hook for that).
    """
    errors: dict[str, list[str]] = {}
    if raw is None:
        return LimitsSettings(), errors
    if not isinstance(raw, Mapping):
        return LimitsSettings(), {field: ["must be an object"]}
    rate, burst = _parse_rate_limit(raw.get("rate_limit"), f"{field}.rate_limit", errors)
    allowed = _parse_allowed_ips(raw.get("allowed_ips"), f"{field}.allowed_ips", errors)
    return LimitsSettings(rate, burst, allowed), errors


def _parse_rate_limit(
    value: Any, field: str, errors: dict[str, list[str]]
) -> tuple[float | None, int | None]:
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        errors[field] = ['must be an object like {"per_second": 10, "burst": 20} or null']
        return None, None
    add_unknown_keys(
        errors, value, _RATE_LIMIT_KEYS, field, "unknown field; allowed: per_second, burst"
    )
    per_second = value.get("per_second")
    rate: float | None = None
    if per_second is None:
        errors[f"{field}.per_second"] = ["is required (0 means unlimited)"]
    elif not _number(per_second) or not 0 <= per_second <= MAX_RATE:
        errors[f"{field}.per_second"] = [f"must be a number between 0 and {MAX_RATE:g}"]
    else:
        rate = float(per_second)
    burst = value.get("burst")
    if burst is None:
        burst = 0
    elif (whole := json_integer(burst)) is None or not 0 <= whole <= MAX_BURST:
        errors[f"{field}.burst"] = [f"must be an integer between 0 and {MAX_BURST}"]
        burst = None
    else:
        burst = whole
    return rate, burst


def _parse_allowed_ips(
    value: Any, field: str, errors: dict[str, list[str]]
) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        errors[field] = ["must be a list of IP addresses or CIDR networks, or null"]
        return None
    if not value:
        errors[field] = ["must not be empty (null allows every address)"]
        return None
    if len(value) > MAX_ALLOWED_IPS:
        errors[field] = [f"must not have more than {MAX_ALLOWED_IPS} items"]
        return None
    normalized: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            errors[f"{field}.{i}"] = ["must be a string"]
            continue
        try:
            network = ipaddress.ip_network(item.strip())
        except ValueError:
            try:
                loose = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                errors[f"{field}.{i}"] = ["must be an IP address or a CIDR network"]
                continue
            errors[f"{field}.{i}"] = [f"has host bits set; did you mean {loose}?"]
            continue
        mapped = getattr(network.network_address, "ipv4_mapped", None)
        if mapped is not None:  # ::ffff:a.b.c.d/n+96 is compared as IPv4 anyway
            network = ipaddress.ip_network(f"{mapped}/{max(0, network.prefixlen - 96)}")
        normalized.append(str(network))
    return tuple(normalized)
