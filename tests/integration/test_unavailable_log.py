"""A database outage is logged once, not once per request or per reconnection attempt: hook
requests answered 503 (the metrics count each one), and the LISTEN connections trying to come
back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.dispatcher.dispatcher import Dispatcher
from gateway.executor.worker import Executor, ExecutorSettings
from gateway.logs import configure_logging
from gateway.storage.database import Database
from gateway.storage.listener import KeptListener
from tests.integration.ingest_helpers import (
    execute,
    github_headers,
    hook_path,
    seed_hook,
    wait_for,
)
from tests.integration.ops_helpers import sample, scrape
from tests.integration.outgoing_helpers import outgoing_config
from tests.integration.runs_helpers import enqueue, make_pipeline

REQUESTS = 25


def _logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines written to stderr since the last read."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


@contextlib.asynccontextmanager
async def database_away(
    database_dsn: str, server_dsn: str, db: Database | None = None
) -> AsyncIterator[None]:
    """The test database refuses connections, and its open ones are ended (``db``'s pool
    forgets its own), until the block ends."""
    name = urlsplit(database_dsn).path.lstrip("/")
    await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        if db is not None:
            await db.pool.expire_connections()
        await execute(
            server_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        yield
    finally:
        await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_an_outage_logs_one_line_not_one_per_request(
    client: Any,
    db: Database,
    database_dsn: str,
    server_dsn: str,
    admin_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook = await seed_hook(client, admin_headers)
    body = b'{"action": "opened"}'
    headers = github_headers(hook["secret"], body)
    configure_logging("info", "json")
    before = await scrape(client)
    capsys.readouterr()
    async with database_away(database_dsn, server_dsn, db):
        for _ in range(REQUESTS):
            response = await client.post(hook_path(hook), data=body, headers=headers)
            assert response.status == 503, await response.text()
        lines = _logged(capsys)
    await wait_for(lambda: client.get("/readyz"), lambda r: r.status == 200)
    after = await scrape(client)

    unavailable = [line for line in lines if line["event"] == "hook_request_unavailable"]
    assert len(unavailable) == 1, unavailable
    assert unavailable[0]["level"] == "warning"
    assert unavailable[0]["suppressed"] == 0 and unavailable[0]["reason"]
    # Every one of them is still counted.
    labels = {"outcome": "unavailable", "status": "503"}
    counted = sample(after, "hookgate_ingest_requests_total", **labels) - sample(
        before, "hookgate_ingest_requests_total", **labels
    )
    assert counted == REQUESTS


async def test_a_listener_that_cannot_reconnect_warns_once_not_every_attempt(
    db: Database, database_dsn: str, server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each failed reconnection was a warning: every 5 s per listener (two per worker) for as
    # long as the database stayed away.
    configure_logging("info", "json")
    listener = KeptListener(db, "hookgate_outage_probe", lambda _: None, name="probe")
    await listener.start()
    capsys.readouterr()
    async with database_away(database_dsn, server_dsn):
        await asyncio.sleep(3.5)  # tries after 0.1, 0.2, 0.4, 0.8 and 1.6 s
    try:
        await wait_for(_async(lambda: listener.listening), bool)
    finally:
        await listener.close()
    lines = _logged(capsys)
    failed = [line for line in lines if line["event"] == "probe_listen_failed"]
    assert [(line["level"], line["attempts"]) for line in failed] == [("warning", 1)]
    [back] = [line for line in lines if line["event"] == "probe_listening"]
    assert back["failed_attempts"] >= 4


def _async(value: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return value()

    return probe


async def test_the_dispatcher_warns_once_when_its_polls_find_the_database_away(
    db: Database, database_dsn: str, server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each poll (every outgoing.poll_interval, 5 s by default) logged a warning while the
    # database was away.
    configure_logging("info", "json")
    dispatcher = Dispatcher(db, outgoing_config(database_dsn, poll_interval=0.2))
    await dispatcher.start()
    capsys.readouterr()
    async with database_away(database_dsn, server_dsn, db):
        await asyncio.sleep(2.5)  # a dozen polls
    await asyncio.sleep(1.0)  # polls work again
    await dispatcher.stop(0)
    lines = _logged(capsys)
    down = [line for line in lines if line["event"] == "dispatcher_database_unavailable"]
    assert [line["level"] for line in down] == ["warning"]
    assert down[0]["polls"] == 1
    [back] = [line for line in lines if line["event"] == "dispatcher_database_available"]
    assert back["failed_polls"] >= 5


async def test_the_executor_warns_once_when_its_claims_find_the_database_away(
    db: Database, database_dsn: str, server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each claim (every --poll-interval) logged a warning while the database was away.
    configure_logging("info", "json")
    pipeline = await make_pipeline(db)
    settings = ExecutorSettings(pipeline["id"], ["true"], poll_interval=0.1, name="test")
    executor = Executor(db, settings)
    loop = asyncio.create_task(executor.run())
    await asyncio.sleep(0.3)
    async with database_away(database_dsn, server_dsn, db):
        await asyncio.sleep(2.0)  # a dozen claims
    await asyncio.sleep(1.0)  # claims succeed again
    executor.stop()
    await asyncio.wait_for(loop, 10)
    lines = _logged(capsys)
    failed = [line for line in lines if line["event"] == "claim_failed"]
    assert [line["level"] for line in failed] == ["warning"] and failed[0]["polls"] == 1
    [resumed] = [line for line in lines if line["event"] == "claims_resumed"]
    assert resumed["failed_polls"] >= 5


async def test_a_runs_failed_heartbeats_warn_again_in_a_later_outage(
    db: Database, database_dsn: str, server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Heartbeats every 4 s (lease 12 s, the local deadline 8 s after a renewal): the beat at
    # 4 s fails in the first outage and is retried until it works; the beat 4 s after that
    # fails in the second. Both outages' first failures are warnings, though a minute has not
    # passed.
    configure_logging("info", "json")
    pipeline = await make_pipeline(db)
    await enqueue(db, pipeline["id"])
    settings = ExecutorSettings(
        pipeline["id"], ["sleep", "30"], poll_interval=0.5, lease_seconds=12.0, name="test"
    )
    executor = Executor(db, settings)
    loop = asyncio.create_task(executor.run())
    try:
        await asyncio.sleep(1.0)  # claimed and started
        async with database_away(database_dsn, server_dsn, db):
            await asyncio.sleep(4.0)  # the beat at 4 s fails, and its retry at 5 s
        await asyncio.sleep(1.5)  # a retry works: the lease is renewed
        async with database_away(database_dsn, server_dsn, db):
            await asyncio.sleep(4.5)  # the next beat, 4 s after the renewal, fails
        await asyncio.sleep(1.5)
    finally:
        executor.stop()
        executor.stop()  # no grace: the command is ended
        await asyncio.wait_for(loop, 20)
    lines = _logged(capsys)
    failed = [line["level"] for line in lines if line["event"] == "heartbeat_failed"]
    assert failed.count("warning") == 2, failed
    assert not [line for line in lines if line["event"] == "run_lease_expired_locally"]
