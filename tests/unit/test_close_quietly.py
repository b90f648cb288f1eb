"""close_quietly: a dedicated connection's close, which a cancellation still interrupts."""

from __future__ import annotations

import asyncio

from gateway.storage.database import close_quietly


class _Closing:
    """Stands in for an asyncpg connection whose close ends when ``done`` is set."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.terminated = False

    async def close(self) -> None:
        await self.done.wait()

    def terminate(self) -> None:
        self.terminated = True


async def test_a_cancellation_as_the_close_ends_is_not_swallowed() -> None:
    """Cancelled in the turn of the loop in which the close ended (a KeptListener closed as
    its keeper drops a lost connection), Python 3.11's wait_for returned as if not cancelled:
    the keeper went on and opened a new connection, and its close() waited forever."""
    conn = _Closing()
    closing = asyncio.create_task(close_quietly(conn))  # type: ignore[arg-type]
    for _ in range(3):  # until it waits for the close (no I/O until then)
        await asyncio.sleep(0)
    assert not closing.done()
    conn.done.set()
    closing.cancel()
    await asyncio.wait([closing])
    assert closing.cancelled()
    assert not conn.terminated  # asyncpg's own close aborts a connection it cannot finish
