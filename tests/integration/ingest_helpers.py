"""Helpers for ingest tests: hooks created through the management API, signed requests, rows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from gateway.ingest.signatures import sign_hmac_hex
from gateway.storage.database import Database
from tests.conftest import FIXTURES
from tests.integration.management_helpers import (
    JSON_HEADERS,
    make_environment,
    make_pipeline,
    make_seed_hook,
)

PR_OPENED = (FIXTURES / "github" / "pull_request.opened.json").read_bytes()
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
SEED_VARIABLES = {
    "source_type": "branch",
    "source_ref": "changes",
    "pull_request_id": 2,
    "pull_request_title": "Update the README with new information.",
    "commit_hash": HEAD_SHA,
}

T = TypeVar("T")


async def new_pipeline(client: Any, admin_headers: dict[str, str]) -> int:
    """A fresh environment + pipeline; returns the pipeline id."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    return int(pipeline["id"])


async def seed_hook(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    """The seed's hook (exact create body) on a fresh pipeline; the create response."""
    return await make_seed_hook(client, admin_headers, await new_pipeline(client, admin_headers))


async def create_hook(
    client: Any, admin_headers: dict[str, str], pipeline_id: int, **body: Any
) -> dict[str, Any]:
    """Create an incoming hook with the given create body; the create response."""
    payload = {"name": "test hook", "action_type": "deploy", **body}
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/incoming",
        json=payload,
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


def github_headers(
    secret: str, body: bytes, delivery: str | None = None, **extra: str
) -> dict[str, str]:
    """Headers as GitHub sends them for a pull_request delivery, signed with ``secret``."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sign_hmac_hex(secret, "sha256", body),
        **extra,
    }


def hook_path(hook: dict[str, Any]) -> str:
    """The path of the hook's absolute ``url``."""
    url: str = hook["url"]
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    assert path == f"/hooks/incoming/{hook['id']}"
    return path


async def fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of a query on a separate connection (what another process would see)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def execute(dsn: str, query: str, *args: Any) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        status: str = await conn.execute(query, *args)
        return status
    finally:
        await conn.close()


async def wait_for(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 10.0
) -> T:
    """Poll ``probe`` until ``accept(result)``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {result!r}")
        await asyncio.sleep(0.02)


async def wait_until_blocked(
    db: Database,
    within: float = 10.0,
    task: asyncio.Future[Any] | None = None,
    *,
    sessions: int = 1,
) -> None:
    """Until ``sessions`` sessions of this database wait for a lock another holds: the state a
    lock order or race test must reach before it goes on. A fixed sleep is not enough: on a
    loaded machine it can end before the other task even sent its statement, and the test would
    then pass without building the race it is about. With ``task``, its ending first is a
    failure (it did not wait for the lock)."""

    async def blocked() -> int:
        if task is not None and task.done():
            raise AssertionError(f"finished without waiting for a lock: {task!r}")
        waiting: int = await db.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        return waiting

    await wait_for(blocked, lambda waiting: waiting >= sessions, within)
