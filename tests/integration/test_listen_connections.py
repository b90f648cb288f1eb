"""A dedicated LISTEN connection is never left open by a listen that did not finish."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import Config
from gateway.storage.database import Database
from gateway.storage.listener import KeptListener
from tests.integration.ingest_helpers import wait_for
from tests.integration.pg_partition import database_through_proxy


async def _count(value: int) -> int:
    return value


async def test_a_listen_cancelled_before_the_server_answered_ends_its_connection(
    config: Config, db: Database, database_dsn: str
) -> None:
    """Database.listen connects, then sends LISTEN. Cancelled in between (a KeptListener
    closed at shutdown, or its connect timeout), the new connection was dropped still open:
    a server process held until the garbage collector found it, and a ResourceWarning then
    (an error at a random later test's teardown)."""
    async with database_through_proxy(config, db, database_dsn) as (proxy, database):
        pool_only = proxy.open_connections
        proxy.hold_replies(after=b"LISTEN", new_connections=True)
        listening = asyncio.create_task(database.listen("hookgate_probe", _ignore))
        await wait_for(lambda: _count(proxy.held_connections), lambda held: held == 1)
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening
        await wait_for(lambda: _count(proxy.open_connections), lambda n: n == pool_only)


def _ignore(*_: Any) -> None:
    pass


async def test_a_listener_closed_as_its_connection_is_lost_stops_and_opens_none(
    db: Database,
) -> None:
    """The loss and the close in the same turn of the event loop (the database and the gateway
    stopped together): Python 3.11's wait_for, woken by the loss, swallowed the close's
    cancellation, and the listener went on: it opened a new connection and close() waited for
    it forever. Here the connection is ended the way the driver ends a lost one, and the
    listener closed before its termination callback has even run."""
    opened = 0

    def on_listening() -> None:
        nonlocal opened
        opened += 1

    kept = KeptListener(db, "hookgate_probe", _ignore, name="probe", on_listening=on_listening)
    await kept.start()
    for _ in range(3):  # its keeper task starts waiting for a loss (no I/O until then)
        await asyncio.sleep(0)
    assert kept._listener is not None
    kept._listener._conn.terminate()  # the driver calls the listener's on_lost soon
    await asyncio.sleep(0)  # ... now, in this same turn of the loop
    async with asyncio.timeout(10):  # a bound for a hang, not a speed
        await kept.close()
    assert (opened, kept.listening) == (1, False)
