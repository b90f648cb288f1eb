"""A TCP proxy between one test process's Database and PostgreSQL that can be cut, like a
network partition of one host (open connections dropped, new ones refused), and healed.

It can also lose the server's replies on the connections open now (``hold_replies``), at once
or from the moment the client sends a given statement (``COMMIT``), and then drop those
connections on the client's side only (``sever_held``): the client sees its connection lost
while the server, which has not noticed, carries on with (or has finished) what it was sent.

Adapted from the proxy the concurrency review (stop 17) used to reproduce executors running a
run twice; the system PostgreSQL keeps serving everyone else throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from yarl import URL

from gateway.config import Config
from gateway.storage.database import Database


@dataclass(frozen=True)
class Upstream:
    """Where a proxy in front of the server of ``dsn`` connects, and its own DSN."""

    unix: str | None  # the socket's path, for a server on a Unix socket (the embedded one)
    tcp: tuple[str, int]
    url: URL  # ``dsn`` without host and port in its query

    @classmethod
    def of(cls, dsn: str) -> Upstream:
        url = URL(dsn)
        # The embedded server listens on a Unix socket (?host=/socket/dir), the system one on TCP.
        socket_dir = url.query.get("host", "")
        port = int(url.query.get("port") or url.port or 5432)
        unix = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir.startswith("/") else None
        rest = {k: v for k, v in url.query.items() if k not in ("host", "port")}
        return cls(unix, (url.host or "127.0.0.1", port), url.with_query(rest))

    def proxy_dsn(self, port: int) -> str:
        """The DSN of a proxy listening on 127.0.0.1:``port``."""
        return str(self.url.with_host("127.0.0.1").with_port(port))


class CuttableProxy:
    def __init__(self, dsn: str) -> None:
        upstream = Upstream.of(dsn)
        self._unix, self._target, self._upstream = upstream.unix, upstream.tcp, upstream
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()  # client sides of open connections
        self._held: set[asyncio.StreamWriter] = set()  # clients whose replies are dropped
        self._active: set[asyncio.StreamWriter] = set()  # ... that sent something since
        self._triggers: dict[asyncio.StreamWriter, bytes] = {}
        self._new_trigger: bytes | None = None  # hold_replies(..., new_connections=True)
        self._rewrites: list[tuple[bytes, bytes]] = []  # rewrite_replies
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Start listening; return the DSN that goes through the proxy."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return self._upstream.proxy_dsn(port)

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self._cut = False

    @property
    def open_connections(self) -> int:
        """How many client connections the proxy is relaying now."""
        return len(self._clients)

    @property
    def held_connections(self) -> int:
        """How many of them have their replies dropped now."""
        return len(self._held)

    def hold_replies(self, after: bytes | None = None, *, new_connections: bool = False) -> None:
        """Drop the server's replies on the connections open now: at once, or from the moment
        the client sends a message containing ``after``. New connections are not affected,
        unless ``new_connections`` (with ``after``): only they are, from then on."""
        if new_connections:
            assert after is not None, "a new connection's replies are held after a trigger"
            self._new_trigger = after
            return
        for client in self._clients:
            if after is None:
                self._held.add(client)
            else:
                self._triggers[client] = after

    def rewrite_replies(self, old: bytes, new: bytes) -> None:
        """Replace ``old`` with ``new`` (as long: message lengths stay right) in what the server
        sends from now on, e.g. the version it announces at the start of a connection."""
        assert len(old) == len(new), "a rewrite must keep the protocol's message lengths"
        self._rewrites.append((old, new))

    def sever_held(self) -> int:
        """Close the held connections on the client's side; the server's side stays open.
        Returns how many of them sent something since they were held (the tests' proof that
        the connection under test was the one cut, not an idle one)."""
        dropped = len(self._held & self._active)
        for client in list(self._held):
            with contextlib.suppress(Exception):
                client.transport.abort()
        return dropped

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            if self._unix is not None:
                server_reader, server_writer = await asyncio.open_unix_connection(self._unix)
            else:
                server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, server_writer}
        self._clients.add(writer)
        if self._new_trigger is not None:
            self._triggers[writer] = self._new_trigger
        try:
            await asyncio.gather(
                self._pipe(reader, server_writer, sent_by=writer),
                self._pipe(server_reader, writer, replies_to=writer),
            )
        finally:
            self._writers -= {writer, server_writer}
            self._clients.discard(writer)
            self._held.discard(writer)
            self._active.discard(writer)
            self._triggers.pop(writer, None)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        sent_by: asyncio.StreamWriter | None = None,
        replies_to: asyncio.StreamWriter | None = None,
    ) -> None:
        with contextlib.suppress(Exception):
            while not self._cut:
                data = await reader.read(65536)
                if not data:
                    break
                if replies_to is not None and replies_to in self._held:
                    continue  # lost on the way back
                if replies_to is not None:
                    for before, after in self._rewrites:
                        data = data.replace(before, after)
                trigger = self._triggers.get(sent_by) if sent_by is not None else None
                if trigger is not None and trigger in data:
                    self._held.add(sent_by)  # type: ignore[arg-type]  # before it is answered
                if sent_by is not None and sent_by in self._held:
                    self._active.add(sent_by)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.transport.abort()


@contextlib.asynccontextmanager
async def database_through_proxy(
    config: Config, db: Database, dsn: str
) -> AsyncIterator[tuple[CuttableProxy, Database]]:
    """A Database (pool of one at first, 3 s to connect) whose connections, pool and
    dedicated ones alike, go through a CuttableProxy to ``dsn``; ``db``'s secret box."""
    proxy = CuttableProxy(dsn)
    database = await Database.connect(
        await proxy.start(), replace(config.database, pool_min_size=1, connect_timeout=3.0)
    )
    database.secret_box = db.secret_box
    try:
        yield proxy, database
    finally:
        await database.close()
        await proxy.close()
