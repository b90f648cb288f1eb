"""tests/connection_origins.py: an asyncpg connection records the repository frames that opened
it (what its 'unclosed connection' warning prints), not the libraries' under .venv/."""

from __future__ import annotations

import asyncpg

from gateway.storage.database import Database


async def _open_in_a_helper(database_dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(database_dsn)


async def test_a_connection_names_the_gateway_and_test_code_that_opened_it(
    db: Database, database_dsn: str
) -> None:
    """The virtual environment lives in the repository too (.venv/): asyncpg's, pytest's and
    pluggy's frames were taken for ours, and the innermost of them filled the frames shown."""
    conn = await _open_in_a_helper(database_dsn)
    try:
        opened_by = conn._source_traceback
    finally:
        await conn.close()
    assert "site-packages" not in opened_by, opened_by
    assert "in _open_in_a_helper" in opened_by, opened_by
    # A pool's first connection, opened by Database.connect (the db fixture's), says so.
    held = await db.pool.acquire()
    try:
        pooled = held._con._source_traceback
    finally:
        await db.pool.release(held)
    assert "site-packages" not in pooled, pooled
    assert "in _open_pool" in pooled, pooled
