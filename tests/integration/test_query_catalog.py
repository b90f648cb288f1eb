"""Every named query in queries.sql is valid SQL against the real schema.

PostgreSQL parses, plans and type-checks each statement (``PREPARE``) without running it, so a
misspelt column, a table that schema.sql lacks or a bad cast fails here rather than in
production the first time that code path runs.
"""

from __future__ import annotations

import pytest

from gateway.storage.database import Database
from gateway.storage.queries import QUERIES


async def test_every_query_prepares_against_the_schema(db: Database) -> None:
    failures = {}
    async with db.pool.acquire() as conn:
        for name, sql in QUERIES.items():
            try:
                await conn.prepare(sql)
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
    assert not failures, failures


async def test_a_broken_query_would_be_caught(db: Database) -> None:
    # The check above is only worth something if PREPARE really validates columns.
    async with db.pool.acquire() as conn:
        with pytest.raises(Exception, match="no_such_column"):
            await conn.prepare("SELECT no_such_column FROM users WHERE id = $1")
