"""A transaction whose COMMIT went out but whose answer was lost with the connection: the
gateway finds out on another connection whether it committed, instead of reporting a failure
for a change that was made (an executor would lose the run it claimed until its lease ran
out). Reproduced with a proxy that drops the server's answer to COMMIT, then the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.config import Config
from gateway.exceptions import DatabaseUnavailable
from gateway.storage.database import Database
from tests.integration.ingest_helpers import fetch, wait_for
from tests.integration.pg_partition import database_through_proxy
from tests.integration.runs_helpers import claim, enqueue, make_pipeline


@pytest.fixture
async def proxied(config: Config, db: Database, database_dsn: str) -> AsyncIterator[Any]:
    async with database_through_proxy(config, db, database_dsn) as pair:
        yield pair


async def test_a_claim_whose_commit_answer_is_lost_is_still_the_claimers(
    db: Database, database_dsn: str, proxied: Any
) -> None:
    proxy, through = proxied
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    assert await through.ping()  # the pool's connection is open: it is the one held
    proxy.hold_replies(after=b"COMMIT")
    claiming = asyncio.create_task(claim(through, pipeline["id"]))
    await wait_for(
        lambda: fetch(database_dsn, "SELECT status FROM pipeline_runs WHERE id = $1", run["id"]),
        lambda rows: rows[0]["status"] == "in-progress",
    )
    assert proxy.sever_held() == 1  # the claim's COMMIT answer was the one lost
    [claimed] = await claiming
    assert claimed["id"] == run["id"] and claimed["status"] == "in-progress"
    [row] = await fetch(
        database_dsn, "SELECT lease_token FROM pipeline_runs WHERE id = $1", run["id"]
    )
    assert row["lease_token"] == claimed["lease_token"]  # the lease the claimer holds


async def test_a_transaction_lost_before_its_commit_fails(
    db: Database, database_dsn: str, proxied: Any
) -> None:
    proxy, through = proxied
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    assert await through.ping()
    proxy.hold_replies()  # the claim's first statement is never answered
    claiming = asyncio.create_task(claim(through, pipeline["id"]))
    await asyncio.sleep(0.3)
    assert proxy.sever_held() == 1  # its first statement's answer was the one lost
    with pytest.raises(DatabaseUnavailable):
        await claiming
    rows = await fetch(database_dsn, "SELECT status FROM pipeline_runs WHERE id = $1", run["id"])
    assert rows[0]["status"] == "queued"


async def test_an_outcome_still_in_progress_is_settled_by_ending_its_server_process(
    db: Database, database_dsn: str
) -> None:
    """The lost connection's server process still holds its transaction open (it has not
    noticed the loss): looking at the status alone would say "in progress", and it could
    still commit later. It is ended first; its transaction then never commits."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    other = await asyncpg.connect(database_dsn)
    try:
        await other.execute("BEGIN")
        await other.execute(
            "UPDATE pipeline_runs SET status = 'cancelled' WHERE id = $1", run["id"]
        )
        xid = await other.fetchval("SELECT pg_current_xact_id()")
        pid = other.get_server_pid()
        assert await db._committed(xid, pid) is False
        alive = await fetch(database_dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid)
        assert alive == []
    finally:
        other.terminate()
    rows = await fetch(database_dsn, "SELECT status FROM pipeline_runs WHERE id = $1", run["id"])
    assert rows[0]["status"] == "queued"
