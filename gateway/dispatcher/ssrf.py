"""SSRF guard for outgoing requests, enforced when a connection is opened.

:class:`GuardedConnector` resolves the target host once, drops every address that is not
publicly routable, and hands only the vetted addresses to aiohttp, which connects to exactly
those — there is no second lookup, so a DNS answer that changes between check and connect
(DNS rebinding) cannot reach a refused address. IP-literal hosts are vetted the same way.
When no address survives, the request fails with :class:`TargetRefused` (an ``OSError`` that
aiohttp wraps in ``ClientConnectorDNSError``), whose message names the address and why.

Refused: unspecified (0.0.0.0, ::), loopback, private (RFC 1918, IPv6 ULA fc00::/7), link-local
(169.254/16, fe80::/10, including the cloud metadata addresses 169.254.169.254 and
fd00:ec2::254), shared address space (CGNAT 100.64/10), multicast, IPv6 site-local (fec0::/10),
reserved and every other range Python's ``ipaddress`` does not consider global. IPv4 addresses
embedded in IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by
the IPv4 address.

``[outgoing] allow_private_targets = true`` turns the guard off (plain ``OutgoingConnector``).

The hook point is ``TCPConnector._resolve_host`` (aiohttp is pinned; the integration tests
refuse a loopback literal and ``localhost`` through a real session, so a change in aiohttp that
bypassed the override would fail them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from aiohttp.abc import ResolveResult

from gateway.dispatcher.resolver import OutgoingConnector

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
ALLOW_HINT = "set outgoing.allow_private_targets to allow"


class TargetRefused(OSError):
    """The target resolves only to addresses the SSRF guard refuses."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be a target (e.g. ``"loopback"``), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return refusal_reason(embedded)
    checks = (
        (address in METADATA_ADDRESSES, "cloud metadata"),
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "site-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "shared/CGNAT"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def refusal_message(address: str, reason: str) -> str:
    """The message recorded for a refused target."""
    return f"target resolves to {address} ({reason}), refused: {ALLOW_HINT}"


def vet_addresses(results: Sequence[ResolveResult]) -> list[ResolveResult]:
    """The results whose address is public; raise TargetRefused when none is."""
    allowed: list[ResolveResult] = []
    first_refusal: str | None = None
    for result in results:
        text = result["host"]
        try:
            reason = refusal_reason(ipaddress.ip_address(text))
        except ValueError:
            reason = "not an IP address"
        if reason is None:
            allowed.append(result)
        elif first_refusal is None:
            first_refusal = refusal_message(text, reason)
    if not allowed:
        raise TargetRefused(first_refusal or "target host did not resolve to any address")
    return allowed


class GuardedConnector(OutgoingConnector):
    """An OutgoingConnector that connects only to publicly routable addresses."""

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        return vet_addresses(await super()._resolve_host(host, port, traces=traces))


def make_connector(
    *,
    allow_private_targets: bool,
    limit: int,
    dns_timeout: float,
    nameservers: Sequence[str] | None = None,
) -> OutgoingConnector:
    """The connector for the dispatcher's shared ClientSession (its DNS lookups asynchronous
    and bounded by ``dns_timeout``, gateway.dispatcher.resolver)."""
    cls = OutgoingConnector if allow_private_targets else GuardedConnector
    return cls(
        dns_timeout=dns_timeout,
        nameservers=nameservers,
        limit=limit,
        # 0: the dispatcher applies its own per-target limit before connecting.
        limit_per_host=0,
        ttl_dns_cache=10,
        enable_cleanup_closed=False,
    )


def is_refusal(exc: BaseException) -> str | None:
    """The refusal message when ``exc`` (or what it wraps) is a TargetRefused, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TargetRefused):
            return str(current)
        seen.add(id(current))
        nested = getattr(current, "os_error", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return None
