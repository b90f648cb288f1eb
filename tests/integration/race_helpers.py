"""Forcing an interleaving: a request that reads, decides and writes runs while another
connection holds a row it needs, with a change made and not yet committed; the change commits
once the request waits for that row's lock, whatever the machine's speed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)


async def behind_a_concurrent_change(
    database_dsn: str,
    change: str,
    args: tuple[Any, ...],
    request: Awaitable[Any],
    once_waiting: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None,
) -> Any:
    """Run ``request`` while another transaction holds the rows ``change`` (SQL with ``args``)
    writes; once the request waits for a lock, run ``once_waiting`` (if given) in that
    transaction, commit it, then return the request's answer. A request that answers without
    waiting fails the test (it decided on the rows as they were before the change)."""
    other = await asyncpg.connect(database_dsn)
    try:
        async with other.transaction():
            await other.execute(change, *args)
            task = asyncio.ensure_future(request)
            while not await other.fetchval(_WAITING):
                assert not task.done(), await task  # answered without waiting for the row
                await asyncio.sleep(0.01)
            if once_waiting is not None:
                await once_waiting(other)
        return await task
    finally:
        await other.close()
