"""DNS lookups for outgoing requests, on threads of the dispatcher's own.

``getaddrinfo`` holds a thread until the target's name server answers, and a request's timeout
does not end it: a name server that never answers holds it for the system resolver's timeout
(``timeout`` x ``attempts`` x name servers in resolv.conf, 10 s and more). On the event loop's
default executor — min(32, CPUs + 4) threads, also used elsewhere in the process — a handful
of targets with broken DNS would take every thread, and the lookups of all other targets would
wait behind them until their deliveries timed out.

:class:`PoolResolver` runs them on an executor of its own, with one thread per request the
dispatcher may have in flight (``[outgoing] concurrency``). aiohttp runs one lookup per host
and port at a time (a request for a name being looked up waits for that lookup), so a target
whose DNS hangs holds one thread however many of its deliveries are due.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult

_NUMERIC_HOST = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_NUMERIC_NAME = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def _lookup(host: str, port: int, family: socket.AddressFamily) -> list[tuple[str, int, int, int]]:
    """``(address, port, family, proto)`` of each stream address of ``host`` (blocking), the
    way aiohttp's ThreadedResolver reads them: an IPv6 address with a scope id (link-local)
    in its numeric form with the scope (``fe80::1%eth0``)."""
    found: list[tuple[str, int, int, int]] = []
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG)
    for kind, _type, proto, _name, address in infos:
        if kind == socket.AF_INET6:
            if len(address) < 4:
                continue  # IPv6 is not supported by this Python or host
            if address[3]:
                text, service = socket.getnameinfo(
                    (str(address[0]), int(address[1]), int(address[2]), int(address[3])),
                    _NUMERIC_NAME,
                )
                found.append((text, int(service), kind, proto))
            else:
                found.append((str(address[0]), int(address[1]), kind, proto))
        elif kind == socket.AF_INET:
            found.append((str(address[0]), int(address[1]), kind, proto))
    return found


class PoolResolver(AbstractResolver):
    """aiohttp's ThreadedResolver on ``threads`` threads of its own, shut down by close()."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max(threads, 1), thread_name_prefix="outgoing-dns")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``; raises OSError (socket.gaierror) like getaddrinfo."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._executor, _lookup, host, port, family)
        return [
            ResolveResult(
                hostname=host, host=text, port=number, family=kind, proto=proto, flags=_NUMERIC_HOST
            )
            for text, number, kind, proto in found
        ]

    async def close(self) -> None:
        """Start no more lookups; those still running end on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class OutgoingConnector(TCPConnector):
    """A TCPConnector whose lookups run on a :class:`PoolResolver` of its own, with a thread
    per connection it may open at once (``limit``), closed with it."""

    def __init__(self, *, limit: int = 100, **kwargs: Any) -> None:
        self._lookups = PoolResolver(limit or 100)
        super().__init__(limit=limit, resolver=self._lookups, **kwargs)

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._lookups.close()
