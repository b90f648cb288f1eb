"""A TCP proxy between one test process's Database and PostgreSQL that can be cut, like a
network partition of one host (open connections dropped, new ones refused), and healed.

Adapted from the proxy the concurrency review (stop 17) used to reproduce executors running a
run twice; the system PostgreSQL keeps serving everyone else throughout.
"""

from __future__ import annotations

import asyncio
import contextlib

from yarl import URL


class CuttableProxy:
    def __init__(self, dsn: str) -> None:
        url = URL(dsn)
        # The embedded server listens on a Unix socket (?host=/socket/dir), the system one on TCP.
        socket_dir = url.query.get("host", "")
        port = int(url.query.get("port") or url.port or 5432)
        self._unix = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir.startswith("/") else None
        self._target = (url.host or "127.0.0.1", port)
        self._url = url.with_query(
            {k: v for k, v in url.query.items() if k not in ("host", "port")}
        )
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Start listening; return the DSN that goes through the proxy."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return str(self._url.with_host("127.0.0.1").with_port(port))

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self._cut = False

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
        try:
            await asyncio.gather(
                self._pipe(reader, server_writer), self._pipe(server_reader, writer)
            )
        finally:
            self._writers -= {writer, server_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while not self._cut:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.transport.abort()
