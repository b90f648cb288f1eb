"""Applying schema.sql to a database other releases use too (upgrade review 21): while the group
commit writes, a pre-digest release put its older functions back, or the database is newer than
the release."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Config, DatabaseConfig
from gateway.exceptions import SchemaNotApplied
from gateway.ingest.batcher import PendingRequest, RunBatcher, Stored
from gateway.storage.database import SCHEMA_PATH, Database
from tests.integration.ingest_helpers import fetch
from tests.integration.test_batcher import add_outgoing_hook, request

Factory = Callable[..., RunBatcher]


async def new_pipeline(dsn: str, name: str) -> int:
    rows = await fetch(
        dsn,
        "WITH e AS (INSERT INTO environments (name) VALUES ($1) RETURNING id) "
        "INSERT INTO pipelines (environment_id, name, resource_type, resource_id, action_type) "
        "SELECT id, 'Deploy', 'application', 1, 'deploy' FROM e RETURNING id",
        name,
    )
    return int(rows[0]["id"])


@pytest.fixture
async def batcher(config: Config, db: Database) -> AsyncIterator[RunBatcher]:
    started = RunBatcher(db, replace(config, batch=replace(config.batch, max_wait_ms=1.0)))
    started.start()
    yield started
    await started.close()


async def test_migrate_while_the_group_commit_writes_never_deadlocks(
    batcher: RunBatcher, db: Database, database_dsn: str
) -> None:
    """`gateway migrate` against a serving fleet: the file's locks and the ingest writer's
    (runs, then history, then the outbox) are taken in the same order, so neither the schema
    nor a batch fails with a deadlock (review finding 3)."""
    plain = await new_pipeline(database_dsn, "plain")
    notified = await new_pipeline(database_dsn, "notified")
    await add_outgoing_hook(database_dsn, notified)  # batches then write the outbox too
    stop, under_way = asyncio.Event(), asyncio.Event()
    stored: list[Stored] = []
    pipelines = itertools.cycle([plain, notified])

    async def handler() -> None:
        while not stop.is_set():
            item: PendingRequest = request(next(pipelines))
            stored.append(await batcher.submit(item))
            if len(stored) >= 50:
                under_way.set()

    handlers = [asyncio.create_task(handler()) for _ in range(8)]
    try:
        await under_way.wait()
        for _ in range(15):
            assert (await db.apply_schema_outcome(force=True)).applied
    finally:
        stop.set()
        results = await asyncio.gather(*handlers, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert all(s.run_id is not None and not s.duplicate for s in stored)
    assert await fetch(database_dsn, "SELECT count(*) AS n FROM pipeline_runs") == [
        {"n": len(stored)}
    ]


async def test_schema_application_has_its_own_time_limit(database_dsn: str, tmp_path: Path) -> None:
    """Finding 5: the file may run longer than one request's command_timeout when `gateway
    migrate` allows it (an index built on a large table); past its limit the error says so."""
    slow = tmp_path / "schema.sql"
    slow.write_text(
        SCHEMA_PATH.read_text(encoding="utf-8") + "\nSELECT pg_sleep(1.5);\n", encoding="utf-8"
    )
    db = await Database.connect(database_dsn, DatabaseConfig(command_timeout=1.0))
    try:
        with pytest.raises(SchemaNotApplied) as refused:  # at start: command_timeout
            await db.apply_schema_outcome(slow)
        message = str(refused.value)
        assert message.startswith("cannot apply schema.sql: it ran longer than the 1s it may ")
        assert "nothing was applied" in message and "--timeout" in message
        assert (await db.apply_schema_outcome(slow, force=True, statement_timeout=0)).applied
        with pytest.raises(SchemaNotApplied, match=r"longer than the 0\.5s"):
            await db.apply_schema_outcome(slow, force=True, statement_timeout=0.5)
    finally:
        await db.close()
