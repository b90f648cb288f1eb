"""A transaction whose COMMIT went out but whose answer was lost with the connection: the
gateway finds out on another connection whether it committed, instead of reporting a failure
for a change that was made (an executor would lose the run it claimed until its lease ran
out). Reproduced with a proxy that drops the server's answer to COMMIT, then the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

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
    proxy.sever_held()
    [claimed] = await claiming
    assert claimed["id"] == run["id"] and claimed["status"] == "in-progress"
    [row] = await fetch(
        database_dsn, "SELECT lease_token FROM pipeline_runs WHERE id = $1", run["id"]
    )
    assert row["lease_token"] == claimed["lease_token"]  # the lease the claimer holds


async def test_a_transaction_lost_before_its_commit_still_fails_and_changes_nothing(
    db: Database, database_dsn: str, proxied: Any
) -> None:
    proxy, through = proxied
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    assert await through.ping()
    proxy.hold_replies()  # the claim's first statement is never answered
    claiming = asyncio.create_task(claim(through, pipeline["id"]))
    await asyncio.sleep(0.3)
    proxy.sever_held()
    with pytest.raises(DatabaseUnavailable):
        await claiming
    # Nothing committed: the transaction waits, open, for a client that is gone.
    rows = await fetch(database_dsn, "SELECT status FROM pipeline_runs WHERE id = $1", run["id"])
    assert rows[0]["status"] == "queued"
