"""The database's limits turned into honest answers: a statement the server has not finished by
shortly before ``command_timeout`` is rolled back by the server itself (so a 503 means "not
stored"), and a pool with no free connection answers 503 within ``connect_timeout`` instead of
leaving the request hanging."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.config import MAX_STATEMENT_SECONDS, Config, ConfigError, build_config
from gateway.exceptions import PoolExhausted
from gateway.storage.database import Database, server_settings
from tests.conftest import client_for
from tests.integration.ingest_helpers import PR_OPENED, fetch, github_headers, hook_path, seed_hook


@pytest.fixture
def config(config: Config) -> Config:
    """One second per statement; half a second to wait for a pool connection."""
    return replace(
        config,
        database=replace(
            config.database, command_timeout=1.0, connect_timeout=0.5, pool_max_size=2
        ),
    )


async def test_the_longest_command_timeout_the_configuration_takes_is_one_the_server_takes(
    database_dsn: str,
) -> None:
    """database.command_timeout had no upper bound: 3000000 passed check-config, and then every
    connection was refused ('invalid value for parameter "statement_timeout"', blamed on the
    DSN's query parameters). The bound is the server's own limit."""
    longest = build_config({"database": {"command_timeout": MAX_STATEMENT_SECONDS}}, {})
    db = await Database.connect(database_dsn, longest.database)
    try:
        assert await db.pool.fetchval("SELECT 1") == 1
    finally:
        await db.close()
    with pytest.raises(ConfigError, match=r"between 0\.1 and 2147483"):
        build_config({"database": {"command_timeout": MAX_STATEMENT_SECONDS + 1}}, {})


def test_the_server_gives_up_before_the_client_does() -> None:
    base = Config().database
    assert server_settings(base) == {"statement_timeout": "9000"}  # command_timeout 10 s
    assert server_settings(replace(base, command_timeout=1.0)) == {"statement_timeout": "800"}


async def test_pool_and_writer_connections_carry_the_statement_timeout(db: Database) -> None:
    assert await db.pool.fetchval("SHOW statement_timeout") == "800ms"
    writer = await db.connection()
    try:
        assert await writer.fetchval("SHOW statement_timeout") == "800ms"
    finally:
        await writer.close()


async def test_a_write_stuck_behind_a_lock_answers_503_and_is_never_committed_later(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    warm = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert warm.status == 202  # the hook is cached: the stuck statement is the batch's insert
    locker = await asyncpg.connect(database_dsn)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE pipeline_runs IN EXCLUSIVE MODE")
            delivery = f"slow-{uuid.uuid4().hex}"
            headers = github_headers(hook["secret"], PR_OPENED, delivery=delivery)
            answer = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
            assert answer.status == 503 and answer.headers["Retry-After"]
            await asyncio.sleep(0.5)
        # The lock is gone: a statement the server had not cancelled would commit now.
        await asyncio.sleep(1.0)
    finally:
        await locker.close()
    query = "SELECT id FROM pipeline_runs WHERE delivery_id = $1"
    assert await fetch(database_dsn, query, delivery) == []
    retried = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert retried.status == 202  # the retry the 503 asked for is the first copy stored


@pytest.fixture
async def busy_pool(db: Database) -> AsyncIterator[None]:
    """Every connection of ``db``'s pool held by someone else."""
    held = [await db.pool.acquire() for _ in range(db.config.pool_max_size)]
    yield
    for conn in held:
        await db.pool.release(conn)


async def test_a_pool_with_no_free_connection_raises_pool_exhausted_in_time(
    db: Database, busy_pool: None
) -> None:
    started = time.monotonic()
    with pytest.raises(PoolExhausted, match=r"became free within 0\.5s"):
        await db.fetchval("ping")
    with pytest.raises(PoolExhausted):
        async with db.transaction():
            pass
    assert time.monotonic() - started < 3


async def test_requests_answer_503_when_the_pool_stays_busy(
    config: Config, db: Database, aiohttp_client: Any, admin_headers: dict[str, str]
) -> None:
    client = await client_for(create_app(config, db), aiohttp_client)
    pipeline_hook = await seed_hook(client, admin_headers)  # created before the pool is taken
    held = [await db.pool.acquire() for _ in range(db.config.pool_max_size)]
    try:
        management = await asyncio.wait_for(client.get("/environments", headers=admin_headers), 5)
        assert management.status == 503 and management.headers["Retry-After"] == "1"
        # A hook not in this worker's cache needs the pool to be read.
        uncached = await asyncio.wait_for(
            client.post(
                hook_path(pipeline_hook),
                data=PR_OPENED,
                headers=github_headers(pipeline_hook["secret"], PR_OPENED),
            ),
            5,
        )
        assert uncached.status == 503 and uncached.headers["Retry-After"]
    finally:
        for conn in held:
            await db.pool.release(conn)
