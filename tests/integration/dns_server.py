"""A tiny DNS server on loopback UDP for tests: answers A queries for the names it knows
(AAAA with no record), NXDOMAIN for the names it is told do not exist (with any suffix: a
resolver tries a name that does not exist again with each search domain of resolv.conf), and
silently drops every other query, like a name server that never answers (a black hole)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from typing import Any

_QR_AA_RD_RA = 0x8580  # a response, authoritative, recursion desired and available
_NXDOMAIN = 3
_TYPE_A = 1
_CLASS_IN = 1


def _question(packet: bytes) -> tuple[str, int, bytes]:
    """The first question's name (lower case), type, and its bytes as asked."""
    labels: list[str] = []
    pos = 12
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii").lower())
        pos += 1 + length
    qtype = struct.unpack("!H", packet[pos + 1 : pos + 3])[0]
    return ".".join(labels), qtype, packet[12 : pos + 5]


def _a_record(address: str) -> bytes:
    # The name is a pointer to the question's (offset 12).
    header = struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 60, 4)
    return header + bytes(int(part) for part in address.split("."))


class DNSServer(asyncio.DatagramProtocol):
    """Start with :meth:`start`; ``address`` is ``"127.0.0.1:port"`` for a resolver."""

    def __init__(self, answers: dict[str, list[str]], nxdomain: Iterable[str] = ()) -> None:
        self.answers = {name.lower(): addresses for name, addresses in answers.items()}
        self.nxdomain = {name.lower() for name in nxdomain}
        self.dropped: set[str] = set()  # names asked for and never answered
        self._transport: asyncio.DatagramTransport | None = None
        self.address = ""

    async def start(self) -> DNSServer:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        assert self._transport is not None
        self.address = f"127.0.0.1:{self._transport.get_extra_info('sockname')[1]}"
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        name, qtype, question = _question(data)
        if any(name == gone or name.startswith(f"{gone}.") for gone in self.nxdomain):
            rcode, records = _NXDOMAIN, []
        elif name in self.answers:
            rcode = 0
            records = [_a_record(a) for a in self.answers[name]] if qtype == _TYPE_A else []
        else:
            self.dropped.add(name)
            return
        header = data[:2] + struct.pack("!HHHHH", _QR_AA_RD_RA | rcode, 1, len(records), 0, 0)
        assert self._transport is not None
        self._transport.sendto(header + question + b"".join(records), addr)
