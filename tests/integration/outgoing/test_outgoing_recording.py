"""Recording an outgoing attempt when the database misbehaves: an answered delivery is recorded
through a short outage instead of being sent again, and disabling a hook after too many
failures is decided in the transaction that counts them (an owner's re-enabling in between
cannot be undone by a stale count)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.dispatcher.retry import RetryPolicy
from gateway.storage import outgoing as store
from gateway.storage.database import Database
from tests.integration.ingest_helpers import wait_until_blocked
from tests.integration.outgoing_helpers import (
    attempts,
    complete_run,
    deliveries,
    eventually,
    hook_body,
)
from tests.integration.pg_partition import CuttableProxy

TWO_IN_A_ROW = RetryPolicy(disable_after_failures=2).should_disable


async def _create_hook(
    client: Any, headers: dict[str, str], pipeline_id: int, target_url: str
) -> dict[str, Any]:
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/outgoing", json=hook_body(target_url), headers=headers
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


@pytest.fixture
async def proxy(database_dsn: str) -> AsyncIterator[CuttableProxy]:
    cuttable = CuttableProxy(database_dsn)
    yield cuttable
    await cuttable.close()


async def test_an_answered_delivery_is_recorded_through_a_database_blip_not_sent_again(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    proxy: CuttableProxy,
    aiohttp_server: Any,
) -> None:
    received: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        received.append(request.path)
        # The database goes away for a second and a half just as the target answers 200.
        proxy.cut()
        asyncio.get_running_loop().call_later(1.5, proxy.heal)
        return web.Response(text="ok")

    target = web.Application()
    target.router.add_post("/notify", answer)
    server = await aiohttp_server(target)
    settings = replace(config.database, connect_timeout=0.5, command_timeout=1.0)
    through = await Database.connect(await proxy.start(), settings)
    through.secret_box = db.secret_box
    hook = await _create_hook(
        client, admin_headers, pipeline["id"], f"http://127.0.0.1:{server.port}/notify"
    )
    dispatcher = Dispatcher(through, config)
    await dispatcher.start()
    try:
        await complete_run(db, pipeline["id"])

        async def succeeded() -> bool:
            return [d["status"] for d in await deliveries(db, hook["id"])] == ["succeeded"]

        await eventually(succeeded, limit=20)
        # The resend a lost record used to cause came after the lease (timeout + 10 s).
        await asyncio.sleep(1.0)
    finally:
        await dispatcher.stop(0)
        await through.close()
    assert received == ["/notify"]
    [recorded] = await attempts(db, hook["id"])
    assert (recorded["outcome"], recorded["status_code"], recorded["attempt"]) == (
        "succeeded",
        200,
        1,
    )


async def _claimed_delivery(db: Database, pipeline_id: int) -> Any:
    await complete_run(db, pipeline_id)
    [row] = await store.claim_deliveries(db, 10, 60.0, [], 10)
    return row


def _failed_attempt(row: Any) -> store.Attempt:
    return store.Attempt(
        request_id=uuid.uuid4(),
        hook_id=row["hook_id"],
        delivery_id=row["id"],
        run_id=row["run_id"],
        retry_of=row["retry_of"],
        attempt=row["attempt"],
        sent_at=datetime.now(UTC),
        method="POST",
        target_url="http://127.0.0.1:9/notify",
        headers={},
        body=None,
        body_size=0,
        outcome="failed",
        status_code=500,
        message="HTTP 500",
        response_excerpt=None,
        latency_ms=1.0,
    )


async def test_re_enabling_while_a_failure_is_counted_is_never_undone(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
) -> None:
    hook = await _create_hook(client, admin_headers, pipeline["id"], "http://127.0.0.1:9/x")
    hook_id = uuid.UUID(hook["id"])
    await db.pool.execute(
        "UPDATE outgoing_hooks SET consecutive_failures = 1 WHERE id = $1", hook_id
    )
    row = await _claimed_delivery(db, pipeline["id"])
    owner = await asyncpg.connect(database_dsn)
    try:
        async with owner.transaction():
            # The owner re-enables the hook (which resets the count) while the failure of a
            # delivery that would have been the second in a row is being recorded.
            await owner.execute(
                "UPDATE outgoing_hooks SET active = true, consecutive_failures = 0 WHERE id = $1",
                hook_id,
            )
            recording = asyncio.create_task(
                store.record_attempt(
                    db,
                    _failed_attempt(row),
                    next_status="failed",
                    retry_in=0,
                    final=True,
                    disables=TWO_IN_A_ROW,
                )
            )
            await wait_until_blocked(db, task=recording)  # waits for the owner's change
        held, failures, disabled = await asyncio.wait_for(recording, 10)
    finally:
        await owner.close()
    assert (held, failures, disabled) == (True, 1, None)
    assert await db.pool.fetchval("SELECT active FROM outgoing_hooks WHERE id = $1", hook_id)

    second = await _claimed_delivery(db, pipeline["id"])
    held, failures, disabled = await store.record_attempt(
        db,
        _failed_attempt(second),
        next_status="failed",
        retry_in=0,
        final=True,
        disables=TWO_IN_A_ROW,
    )
    assert (held, failures, disabled) == (True, 2, "disabled after 2 consecutive failed deliveries")
    assert not await db.pool.fetchval("SELECT active FROM outgoing_hooks WHERE id = $1", hook_id)
