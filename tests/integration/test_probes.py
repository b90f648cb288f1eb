"""The probes a load balancer or orchestrator calls: /healthz and /readyz."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.ingest.health import READY_TIMEOUT
from gateway.storage.database import Database


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
            f"not ready: the database did not answer within {READY_TIMEOUT:g}s"
        )
    finally:
        for connection in held:
            await db.pool.release(connection)
    assert (await client.get("/readyz")).status == 200
