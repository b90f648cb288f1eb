"""A dedicated LISTEN connection is never left open by a listen that did not finish."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import Config
from gateway.storage.database import Database
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
