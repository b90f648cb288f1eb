"""The probes a load balancer or orchestrator calls: /healthz and /readyz."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.ingest.health import READY_TIMEOUT
from gateway.storage.database import Database
from tests.integration.ingest_helpers import (
    execute,
    github_headers,
    hook_path,
    seed_hook,
    wait_for,
)


async def test_probes_answer_when_the_database_does(client: Any) -> None:
    live = await client.get("/healthz")
    assert (live.status, await live.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready", "database": "ok"})


async def test_readyz_answers_503_when_no_pool_connection_comes_free(
    client: Any, db: Database
) -> None:
    # Every connection busy: the probe waited for one with no bound, and the prober saw no
    # answer at all instead of a 503.
    held = [await db.pool.acquire() for _ in range(db.pool.get_max_size())]
    try:
        response = await asyncio.wait_for(client.get("/readyz"), timeout=READY_TIMEOUT + 10)
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["message"] == (
            f"not ready: the database is unavailable or did not answer within {READY_TIMEOUT:g}s"
        )
    finally:
        for connection in held:
            await db.pool.release(connection)
    assert (await client.get("/readyz")).status == 200


async def test_a_database_closed_to_connections_is_unavailable_not_an_error(
    client: Any, db: Database, database_dsn: str, server_dsn: str, admin_headers: dict[str, str]
) -> None:
    """ALTER DATABASE ... ALLOW_CONNECTIONS false (maintenance) answers new connections with
    SQLSTATE 55000: ingest answered 500 without Retry-After, and /readyz aiohttp's plain-text
    500, where an outage gets 503."""
    hook = await seed_hook(client, admin_headers)
    body = b'{"action": "opened"}'
    name = urlsplit(database_dsn).path.lstrip("/")  # the embedded DSN has ?host=/socket/dir
    await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await db.pool.expire_connections()  # new ones are refused from now on
        await execute(
            server_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert ready.content_type == "application/json"
        assert ready.headers["Retry-After"] == "1"
        ingest = await client.post(
            hook_path(hook), data=body, headers=github_headers(hook["secret"], body)
        )
        assert ingest.status == 503, await ingest.text()
        assert "Retry-After" in ingest.headers
        listing = await client.get("/environments", headers=admin_headers)
        assert listing.status == 503, await listing.text()
    finally:
        await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    ready = await wait_for(lambda: client.get("/readyz"), lambda r: r.status == 200)
    assert ready.status == 200


async def test_readyz_fails_closed_on_an_unexpected_error_of_its_ping(
    client: Any, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any error of the ping, not only an outage: the probe says "not ready" in JSON, instead
    # of aiohttp's plain-text 500.
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(db, "fetchval", broken)
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "1"
