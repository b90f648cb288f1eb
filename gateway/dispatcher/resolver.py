"""DNS lookups for outgoing requests, asynchronous (c-ares), each bounded in time.

``getaddrinfo`` holds a thread until the target's name server answers, and a request's timeout
does not end it: a name server that never answers holds it for the system resolver's timeout
(``timeout`` x ``attempts`` x name servers in resolv.conf, 10 s and more). Any fixed number
of threads is taken by as many black-holed hostnames, which anyone allowed to create an
outgoing hook can configure, and then every other target's lookup waits behind them.

:class:`OutgoingResolver` asks the name servers itself through c-ares (aiodns, aiohttp's
AsyncResolver): a lookup is a query in flight on non-blocking sockets, not a thread, so any
number of lookups that never get an answer leave the others alone (c-ares answers on an
event thread of its own, one per channel, not one per lookup). It reads resolv.conf (name
servers, ``search``, ``ndots``, ``timeout``, ``attempts``) and the hosts file like glibc,
but uses no NSS module (mDNS, LDAP, ``myhostname``); nsswitch.conf only orders ``files`` and
``dns``. ``localhost`` resolves to ``::1`` and ``127.0.0.1`` (glibc: the hosts file's).

Each lookup ends after ``[outgoing] dns_timeout`` seconds with :class:`LookupTimedOut`; the
query itself goes on until c-ares gives up, costing a pending query, not a thread. aiohttp runs
one lookup per host and port at a time (a request for a name being looked up waits for it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

from aiohttp import TCPConnector
from aiohttp.abc import ResolveResult
from aiohttp.resolver import AsyncResolver


class LookupTimedOut(OSError):
    """A name's lookup took longer than ``[outgoing] dns_timeout`` (an OSError like every DNS
    failure: aiohttp reports it as ClientConnectorDNSError, the delivery is retried)."""


class OutgoingResolver(AsyncResolver):
    """aiohttp's AsyncResolver on a c-ares channel of its own, each lookup ending after
    ``timeout`` seconds. ``nameservers`` (``"address"`` or ``"address:port"``) replace
    resolv.conf's (tests)."""

    def __init__(self, timeout: float, nameservers: Sequence[str] | None = None) -> None:
        # Keyword arguments give this resolver a channel of its own (not aiohttp's shared one).
        super().__init__(nameservers=list(nameservers) if nameservers else None)
        self.timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``; raises OSError (LookupTimedOut after ``timeout``)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await super().resolve(host, port, family)
        except TimeoutError:
            message = f"DNS lookup of {host} timed out after {self.timeout:g}s"
            # errno None: aiohttp's message quotes strerror.
            raise LookupTimedOut(None, message) from None

    async def close(self) -> None:
        """Cancel the lookups in flight and release the channel (its sockets and thread)."""
        channel = self._resolver
        await super().close()
        if channel is not None:
            await channel.close()


class OutgoingConnector(TCPConnector):
    """A TCPConnector whose lookups run on an :class:`OutgoingResolver` of its own, closed
    with it."""

    def __init__(
        self,
        *,
        dns_timeout: float,
        nameservers: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._lookups = OutgoingResolver(dns_timeout, nameservers)
        super().__init__(resolver=self._lookups, **kwargs)

    @property
    def dns_timeout(self) -> float:
        """Seconds each lookup may take; a change applies to lookups started from then on
        (a reload changes it in place: a connector of its own would cost a c-ares channel,
        with its thread and descriptors, kept until the dispatcher stops)."""
        return self._lookups.timeout

    @dns_timeout.setter
    def dns_timeout(self, seconds: float) -> None:
        self._lookups.timeout = seconds

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._lookups.close()
