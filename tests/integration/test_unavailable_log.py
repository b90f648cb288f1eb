"""A database outage answers every hook request 503: the log says so once, not once per
request (the metrics count each one)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.logs import configure_logging
from gateway.storage.database import Database
from tests.integration.ingest_helpers import (
    execute,
    github_headers,
    hook_path,
    seed_hook,
    wait_for,
)
from tests.integration.ops_helpers import sample, scrape

REQUESTS = 25


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
    name = urlsplit(database_dsn).path.lstrip("/")
    await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await db.pool.expire_connections()
        await execute(
            server_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        for _ in range(REQUESTS):
            response = await client.post(hook_path(hook), data=body, headers=headers)
            assert response.status == 503, await response.text()
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    finally:
        await execute(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
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
