"""The real client address and scheme behind trusted proxies (``[server] trusted_proxies``).

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only when the TCP peer is inside a
trusted network; from anyone else they are ignored, so a sender cannot forge its address.
Each proxy appends the address it received the request from, so the list is read right to
left: trusted proxies are skipped and the first address that is not trusted is the client.
When every address is trusted, the leftmost one is the client. An entry that is not an address
(``unknown``, garbage, an overlong list) ends the walk: the client is then the nearest address
established so far, i.e. the last trusted hop (the peer itself when there is none).

Addresses come back normalized for PostgreSQL ``inet``: no IPv6 zone, IPv4-mapped IPv6
(``::ffff:192.0.2.1``) as plain IPv4, ports and brackets removed. With no trusted proxies,
:meth:`ClientAddressResolver.resolve` is one cached normalization of the peer.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_HOPS = 32  # entries of X-Forwarded-For examined, from the right
_SCHEMES = frozenset({"http", "https"})
_TRUST_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=8192)
def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer or header value: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:443``,
    ``"[::1]"``, ``fe80::1%eth0``; IPv4-mapped IPv6 becomes IPv4; None when not an address."""
    value = text.strip().strip('"').strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (end + 1 < len(value) and not _is_port(value[end + 1 :])):
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port (IPv6 has at least two colons)
        value, _, port = value.partition(":")
        if not port.isdigit():
            return None
    value = value.partition("%")[0]  # zone ids cannot be stored (inet) and never matter here
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


@functools.lru_cache(maxsize=8192)
def normalize_ip(text: str | None) -> str | None:
    """The address as stored in ``hook_requests.client_ip``, or None when it is not one."""
    if not text:
        return None
    address = parse_ip(text)
    return None if address is None else str(address)


class ClientAddressResolver:
    """Resolves ``(client_ip, scheme)`` for one ``trusted_proxies`` setting; build it once."""

    __slots__ = ("_trust_cache", "_v4", "_v6", "enabled")

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        """Compile the networks; ValueError for an entry that is not an IP or CIDR."""
        networks = [ipaddress.ip_network(c.strip(), strict=False) for c in trusted_proxies]
        self._v4 = tuple(n for n in networks if n.version == 4)
        self._v6 = tuple(n for n in networks if n.version == 6)
        self.enabled = bool(networks)
        self._trust_cache: dict[str, bool] = {}

    def is_trusted(self, address: IPAddress) -> bool:
        """True when ``address`` is inside a trusted network."""
        networks = self._v4 if address.version == 4 else self._v6
        return any(address in n for n in networks)

    def _peer_trusted(self, peer: str) -> bool:
        # Peers are few (the load balancers): remember the answer per peer string.
        trusted = self._trust_cache.get(peer)
        if trusted is None:
            address = parse_ip(peer)
            trusted = address is not None and self.is_trusted(address)
            if len(self._trust_cache) >= _TRUST_CACHE_SIZE:
                self._trust_cache.clear()
            self._trust_cache[peer] = trusted
        return trusted

    def resolve(
        self,
        peer_ip: str | None,
        x_forwarded_for: str | None,
        x_forwarded_proto: str | None,
        peer_scheme: str = "http",
    ) -> tuple[str | None, str]:
        """``(client_ip, scheme)``: the peer and its connection scheme unless the peer is a
        trusted proxy, in which case the forwarded headers decide (see module docstring)."""
        if not self.enabled or not peer_ip or not self._peer_trusted(peer_ip):
            return normalize_ip(peer_ip), peer_scheme
        client, hop, hops = normalize_ip(peer_ip), -1, 0
        if x_forwarded_for:
            entries = x_forwarded_for.split(",")
            hops = len(entries)
            for index in range(hops - 1, max(hops - 1 - MAX_HOPS, -1), -1):
                entry = entries[index]
                if not entry.strip():
                    continue
                address = parse_ip(entry)
                if address is None:
                    break  # garbage: the last trusted hop is the nearest known address
                client, hop = str(address), index
                if not self.is_trusted(address):
                    break
        return client, _forwarded_scheme(x_forwarded_proto, hop, hops, peer_scheme)

    def resolve_headers(
        self, peer_ip: str | None, headers: Mapping[str, str], peer_scheme: str = "http"
    ) -> tuple[str | None, str]:
        """:meth:`resolve` reading the headers; repeated ``X-Forwarded-For`` headers are
        joined in order (as HTTP defines), and nothing is read unless the peer is trusted."""
        if not self.enabled or not peer_ip or not self._peer_trusted(peer_ip):
            return normalize_ip(peer_ip), peer_scheme
        forwarded_for = _joined(headers, "X-Forwarded-For")
        return self.resolve(
            peer_ip, forwarded_for, _joined(headers, "X-Forwarded-Proto"), peer_scheme
        )


def _joined(headers: Mapping[str, str], name: str) -> str | None:
    getall: Any = getattr(headers, "getall", None)
    if getall is not None:
        values = getall(name, ())
        return ",".join(values) if values else None
    return headers.get(name) or headers.get(name.lower())


def _forwarded_scheme(value: str | None, hop: int, hops: int, default: str) -> str:
    """The scheme the client used: X-Forwarded-Proto's single value, or (one value per hop,
    as appending proxies write it) the client hop's value, else the value the nearest proxy
    wrote (the rightmost). Anything but http/https is ignored."""
    if not value:
        return default
    parts = [p.strip().lower() for p in value.split(",")]
    if len(parts) == 1:
        chosen = parts[0]
    elif len(parts) == hops and hop >= 0:
        chosen = parts[hop]
    else:
        chosen = parts[-1]
    return chosen if chosen in _SCHEMES else default
