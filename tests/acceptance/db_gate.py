"""TCP proxies in front of PostgreSQL, on threads (for the synchronous acceptance tests).

GatedProxy lets the connections of one process (the supervisor of ``workers``) through and
holds those of any other (its workers) until the test opens the gate. A worker connects before
it binds its port, after the supervisor's checks: a test can act between the two,
deterministically.

GoodbyeGate holds a client's goodbye (the protocol's Terminate message) until the test opens
the gate: closing a pool waits for the server to end each connection after it (asyncpg), so a
process closing its pool waits there, and a test can act meanwhile, deterministically.

The process on the other end of a connection is found the way ``ss -p`` finds it: the client
socket's inode in /proc/net/tcp, then the process holding that inode among its descriptors."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Self

from tests.integration.pg_partition import Upstream


class _Proxy:
    """Accepts on a loopback port, connects each client to the server of ``dsn``; subclasses
    relay."""

    def __init__(self, dsn: str) -> None:
        upstream = Upstream.of(dsn)
        self._unix, self._target = upstream.unix, upstream.tcp
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.dsn = upstream.proxy_dsn(self.port)
        self.gate = threading.Event()  # set: what is held goes through
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                client, peer = self._listener.accept()
                self._sockets.append(client)
                threading.Thread(target=self._serve, args=(client, peer[1]), daemon=True).start()

    def _serve(self, client: socket.socket, peer_port: int) -> None:
        raise NotImplementedError

    def _upstream(self) -> socket.socket:
        if self._unix:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._unix)
        else:
            upstream = socket.create_connection(self._target)
        self._sockets.append(upstream)
        return upstream

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.gate.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()


class GatedProxy(_Proxy):
    def __init__(self, dsn: str) -> None:
        self.held = threading.Event()  # a connection of another process is waiting
        self._passing_pid: int | None = None
        self._pid_known = threading.Event()
        super().__init__(dsn)

    def let_through(self, pid: int) -> None:
        """The process whose connections pass; the others wait for the gate."""
        self._passing_pid = pid
        self._pid_known.set()

    def _serve(self, client: socket.socket, peer_port: int) -> None:
        self._pid_known.wait()
        if _socket_owner(peer_port) != self._passing_pid:
            self.held.set()
            self.gate.wait()
        upstream = self._upstream()
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()


# The protocol's Terminate message: a client's last, alone in its packet.
TERMINATE = b"X\x00\x00\x00\x04"


class GoodbyeGate(_Proxy):
    def __init__(self, dsn: str) -> None:
        self.goodbye = threading.Event()  # a client said goodbye and waits for the gate
        super().__init__(dsn)

    def _serve(self, client: socket.socket, peer_port: int) -> None:
        upstream = self._upstream()
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if data == TERMINATE:
                    self.goodbye.set()
                    self.gate.wait()
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        back.join()


def _socket_owner(local_port: int) -> int | None:
    """The pid of the process holding the loopback TCP socket bound to ``local_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port and fields[9] != "0":
                    inode = fields[9]
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                        return int(pid)
    return None


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing side."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def gated_proxy(dsn: str) -> Iterator[GatedProxy]:
    proxy = GatedProxy(dsn)
    try:
        yield proxy
    finally:
        proxy.close()
