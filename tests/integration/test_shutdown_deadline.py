"""Stopping a `gateway serve` process with a dispatcher inside: the listeners' drain and the
dispatcher's own stopping share one `[server] shutdown_timeout` (a worker's supervisor kills
it a few seconds after that), and the dispatcher claims nothing new while requests drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from gateway.config import Config
from gateway.server import run_listeners
from gateway.storage.database import Database
from tests.integration.ingest_helpers import PR_OPENED, github_headers, hook_path, seed_hook
from tests.integration.outgoing_helpers import complete_run, eventually, hook_body, outgoing_config
from tests.ports import free_port

SHUTDOWN_TIMEOUT = 3.0


@pytest.fixture
def config(database_dsn: str) -> Config:
    """The test client's app runs no dispatcher: only the served process's delivers."""
    return outgoing_config(database_dsn)


async def _served_with_a_dispatcher(
    client: Any,
    admin_headers: dict[str, str],
    database_dsn: str,
    aiohttp_server: Any,
    notify: Callable[[web.Request], Awaitable[web.Response]],
) -> tuple[dict[str, Any], Config]:
    """A pipeline with an incoming hook and an outgoing hook to ``notify``, and the config of a
    served process (free port) that runs a dispatcher: (incoming hook, config)."""
    target = web.Application()
    target.router.add_post("/notify", notify)
    server = await aiohttp_server(target)
    hook = await seed_hook(client, admin_headers)
    created = await client.post(
        f"/pipelines/{hook['pipeline_id']}/hooks/outgoing",
        json=hook_body(f"http://127.0.0.1:{server.port}/notify"),
        headers=admin_headers,
    )
    assert created.status == 201, await created.text()
    base = outgoing_config(database_dsn, dispatcher_in_serve=True, timeout=30.0)
    server_settings = replace(base.server, port=free_port(), shutdown_timeout=SHUTDOWN_TIMEOUT)
    return hook, replace(base, server=server_settings)


async def test_stopping_shares_one_deadline_and_claims_nothing_while_draining(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    database_dsn: str,
    aiohttp_server: Any,
) -> None:
    # A target that never answers: its delivery is in flight for the whole stop.
    received: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        received.append(request.path)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    hook, config = await _served_with_a_dispatcher(
        client, admin_headers, database_dsn, aiohttp_server, hang
    )
    pipeline_id, port = hook["pipeline_id"], config.server.port
    stop = asyncio.Event()
    serving = asyncio.create_task(run_listeners(config, db, stop))
    writer = None
    try:
        await complete_run(db, pipeline_id)
        await eventually(lambda: len(received) == 1, limit=10)
        # A sender whose body is still arriving keeps the drain busy until the deadline.
        body = PR_OPENED
        headers = github_headers(hook["secret"], body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {hook_path(hook)} HTTP/1.1\r\nHost: x\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is reading the body
        began = time.monotonic()
        stop.set()
        await asyncio.sleep(0.5)  # draining now
        # A run completing meanwhile makes a delivery due; this process must not take it.
        await complete_run(db, pipeline_id)
        await asyncio.sleep(1.0)
        assert received == ["/notify"]
        await asyncio.wait_for(serving, timeout=4 * SHUTDOWN_TIMEOUT)
        took = time.monotonic() - began
    finally:
        stop.set()
        if writer is not None:
            writer.close()
        if not serving.done():
            serving.cancel()
    # The drain used the whole timeout; the dispatcher got what was left of it, not another.
    # (Two full timeouts, drain then dispatcher, took about 7 s: the bound sits between.)
    assert SHUTDOWN_TIMEOUT <= took < 2 * SHUTDOWN_TIMEOUT, took
    # The delivery cut off is handed back (sent again after its lease); the one that became
    # due while draining was never claimed.
    rows = await db.pool.fetch(
        "SELECT status, attempt, updated_at > created_at AS claimed"
        " FROM outgoing_deliveries ORDER BY created_at, id"
    )
    assert [(row["status"], row["attempt"]) for row in rows] == [("pending", 0), ("pending", 0)]
    # ...and never claimed (a claim stamps updated_at): a delivery claimed while draining but
    # not sent yet when `received` was read (a loaded machine) is handed back as it was.
    assert [row["claimed"] for row in rows] == [True, False]


async def test_a_process_without_requests_in_flight_gives_its_deliveries_the_whole_timeout(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    database_dsn: str,
    aiohttp_server: Any,
) -> None:
    """The shared deadline does not shorten a dispatcher's grace when nothing else used it: a
    delivery answered within the timeout is recorded, not cut off."""
    answered: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        answered.append(request.path)
        return web.Response(text="ok")

    hook, config = await _served_with_a_dispatcher(
        client, admin_headers, database_dsn, aiohttp_server, slow
    )
    pipeline_id = hook["pipeline_id"]
    stop = asyncio.Event()
    serving = asyncio.create_task(run_listeners(config, db, stop))
    try:
        await complete_run(db, pipeline_id)
        rows: list[Any] = []

        async def sending() -> bool:
            rows[:] = await db.pool.fetch("SELECT status FROM outgoing_deliveries")
            return bool(rows) and rows[0]["status"] == "delivering"

        await eventually(sending, limit=10)
        stop.set()
        await asyncio.wait_for(serving, timeout=4 * SHUTDOWN_TIMEOUT)
    finally:
        stop.set()
        if not serving.done():
            serving.cancel()
    assert answered == ["/notify"]
    [row] = await db.pool.fetch("SELECT status FROM outgoing_deliveries")
    assert row["status"] == "succeeded"
