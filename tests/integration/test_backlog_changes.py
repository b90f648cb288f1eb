"""Management changes to a pipeline with a large backlog of queued runs: a concurrency change
(re-keying every run) and a delete (cancelling every run) stay within the statement timeout
and do not hold the pipeline row, which every run insert share-locks, while they work; one that
runs out of time says so, and changes nothing.

The statement timeout is shortened (``command_timeout``) so that a backlog of tens of thousands
of runs shows what a million showed at the default: the old single statements were cancelled
("database unavailable"), and held the pipeline row meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.storage import pipelines, runs
from gateway.storage.database import Database
from tests.integration.ingest_helpers import wait_for
from tests.integration.runs_helpers import make_pipeline

BACKLOG = 60_000  # at a 0.6 s command timeout, one statement over all of them was cancelled


@pytest.fixture
def config(config: Config) -> Config:
    """The statement timeout cut to 0.48 s (0.8 of a command timeout of 0.6 s)."""
    return replace(config, database=replace(config.database, command_timeout=0.6))


@pytest.fixture
async def raw(config: Config) -> AsyncIterator[asyncpg.Connection]:
    """A connection without the shortened timeouts, to set up the backlog and look at it."""
    conn = await asyncpg.connect(config.database.dsn)
    yield conn
    await conn.close()


async def fill_backlog(raw: asyncpg.Connection, pipeline_id: int, runs_: int = BACKLOG) -> None:
    """``runs_`` queued runs of one statement, each with a branch (50 of them) and a repo."""
    await raw.execute(
        "INSERT INTO pipeline_runs (id, pipeline_id, variables, queued_at) "
        "SELECT gen_random_uuid(), $1, jsonb_build_object('branch', 'b' || (g % 50), "
        "'repo', 'r' || (g % 7)), now() - g * interval '1 second' "
        "FROM generate_series(1, $2) g",
        pipeline_id,
        runs_,
    )
    await raw.execute("ANALYZE pipeline_runs")


async def key_values(raw: asyncpg.Connection, pipeline_id: int) -> dict[Any, int]:
    rows = await raw.fetch(
        "SELECT concurrency_key_value AS v, count(*) AS n FROM pipeline_runs "
        "WHERE pipeline_id = $1 GROUP BY 1",
        pipeline_id,
    )
    return {r["v"]: r["n"] for r in rows}


async def test_a_new_key_on_a_large_backlog_rekeys_every_run_within_the_timeout(
    client: Any, admin_headers: dict[str, str], db: Database, raw: asyncpg.Connection
) -> None:
    pipeline = await make_pipeline(db)
    await fill_backlog(raw, pipeline["id"])

    response = await client.put(
        f"/pipelines/{pipeline['id']}/concurrency",
        json={"policy": "queue", "key": "branch"},
        headers=admin_headers,
    )

    assert response.status == 200, await response.text()
    assert (await response.json())["rekeyed_runs"] == BACKLOG
    values = await key_values(raw, pipeline["id"])
    assert len(values) == 50 and sum(values.values()) == BACKLOG and None not in values
    # Only the policy: no run's key value changes, none is written.
    response = await client.put(
        f"/pipelines/{pipeline['id']}/concurrency",
        json={"policy": "cancel-in-progress", "key": "branch", "max_attempts": 5},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["rekeyed_runs"] == 0


async def test_deleting_a_pipeline_with_a_large_backlog_cancels_every_run(
    client: Any, admin_headers: dict[str, str], db: Database, raw: asyncpg.Connection
) -> None:
    pipeline = await make_pipeline(db)
    await fill_backlog(raw, pipeline["id"])

    response = await client.delete(f"/pipelines/{pipeline['id']}", headers=admin_headers)

    assert response.status == 204, await response.text()
    statuses = await raw.fetch(
        "SELECT status, message, count(*) AS n FROM pipeline_runs GROUP BY 1, 2"
    )
    assert [tuple(r) for r in statuses] == [
        ("cancelled", "cancelled: the pipeline was deleted", BACKLOG)
    ]


async def test_a_delete_whose_run_cancelling_fails_is_still_answered_as_done(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    raw: asyncpg.Connection,
    config: Config,
) -> None:
    """The pipeline is deleted (committed) before its runs are cancelled: a chunk that then
    fails (here one run's row is held locked past the statement timeout) is logged, and the
    delete answered 204, not 503 (a retry would get 404 and the runs would look forgotten)."""
    pipeline = await make_pipeline(db)
    await fill_backlog(raw, pipeline["id"], 100)
    holder = await asyncpg.connect(config.database.dsn)
    try:
        async with holder.transaction():
            await holder.fetchval(
                "SELECT id FROM pipeline_runs WHERE pipeline_id = $1 LIMIT 1 FOR UPDATE",
                pipeline["id"],
            )
            with capture_logs() as logs:
                response = await client.delete(
                    f"/pipelines/{pipeline['id']}", headers=admin_headers
                )
    finally:
        await holder.close()

    assert response.status == 204, await response.text()
    assert await raw.fetchval("SELECT count(*) FROM pipelines WHERE id = $1", pipeline["id"]) == 0
    [incomplete] = [e for e in logs if e["event"] == "pipeline_runs_cancel_incomplete"]
    assert incomplete["log_level"] == "warning" and incomplete["pipeline_id"] == pipeline["id"]
    left = "SELECT count(*) FROM pipeline_runs WHERE status = 'queued' AND pipeline_id = $1"
    assert await raw.fetchval(left, pipeline["id"]) > 0  # for the orphan cleanup


async def test_a_concurrency_change_out_of_time_says_so_and_changes_nothing(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    raw: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = await make_pipeline(db, policy="queue", key="repo")
    await fill_backlog(raw, pipeline["id"])
    before = await key_values(raw, pipeline["id"])
    monkeypatch.setattr(
        "gateway.storage.concurrency.REKEY_TIME_LIMIT", 0.0
    )  # out of time after one chunk

    response = await client.put(
        f"/pipelines/{pipeline['id']}/concurrency",
        json={"policy": "cancel-in-progress", "key": "branch", "max_attempts": 7},
        headers=admin_headers,
    )

    assert response.status == 503, await response.text()
    assert int(response.headers["Retry-After"]) >= 1
    message = (await response.json())["message"]
    assert f"changing the concurrency settings of pipeline {pipeline['id']}" in message
    assert "re-keying its queued and in-progress runs" in message
    assert f"its backlog: {BACKLOG:,} queued and in-progress runs" in message
    assert "nothing changed" in message
    assert "database unavailable" not in message
    settings = await runs.pipeline_settings(db, pipeline["id"])
    assert settings is not None
    assert (settings["concurrency_policy"], settings["concurrency_key"]) == ("queue", "repo")
    assert settings["max_attempts"] == 3
    assert await key_values(raw, pipeline["id"]) == before


async def test_a_concurrency_change_behind_a_long_insert_says_what_it_waited_for(
    client: Any, admin_headers: dict[str, str], db: Database, raw: asyncpg.Connection
) -> None:
    """A transaction that wrote a run and stays open holds the pipeline: the change waits for
    it until the statement timeout, and said "database unavailable"."""
    pipeline = await make_pipeline(db)
    async with raw.transaction():
        await raw.execute(
            "INSERT INTO pipeline_runs (id, pipeline_id, variables) VALUES ($1, $2, '{}')",
            uuid.uuid4(),
            pipeline["id"],
        )
        response = await client.put(
            f"/pipelines/{pipeline['id']}/concurrency",
            json={"policy": "queue", "key": "branch"},
            headers=admin_headers,
        )
        assert response.status == 503, await response.text()
        assert "Retry-After" in response.headers
        message = (await response.json())["message"]
        assert f"concurrency settings of pipeline {pipeline['id']} ran out of time" in message
        assert "waiting for the run inserts in flight" in message


async def rekey_or_cancel_under_way(db: Database) -> None:
    """Until a session of this database is inside a transaction whose last statement re-keyed
    or cancelled runs (the old code's and the new one's statements alike)."""

    async def sessions() -> int:
        found: int = await db.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
            "AND (query LIKE '%hookgate\\_concurrency\\_key(r.variables,%' "
            "     OR query LIKE '%cancelled: the pipeline was deleted%')"
        )
        return found

    await wait_for(sessions, lambda n: n > 0, 30)


async def insert_like_a_writer(config: Config, pipeline_id: int) -> uuid.UUID:
    """One run inserted as the ingest writers do, waiting at most 0.5 s for a lock. Queued a
    year ago, before the whole backlog: a re-key's chunks (in queued_at order) have passed it,
    and only the list of runs inserted meanwhile has it re-keyed."""
    conn = await asyncpg.connect(config.database.dsn, server_settings={"lock_timeout": "500"})
    try:
        run_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO pipeline_runs (id, pipeline_id, variables, queued_at) "
            "VALUES ($1, $2, '{\"branch\": \"late\"}', now() - interval '1 year')",
            run_id,
            pipeline_id,
        )
        return run_id
    finally:
        await conn.close()


@pytest.mark.parametrize("change", ["rekey", "delete"])
async def test_runs_are_written_while_a_large_backlog_is_changed(
    change: str, config: Config, raw: asyncpg.Connection
) -> None:
    """The change works for seconds (200,000 runs at the default timeouts); a run insert meanwhile
    does not wait for it (it waited for the pipeline row, and an ingest writer gave up after
    its lock_timeout: 503 for that pipeline's hooks). The run inserted during a re-key is keyed
    by the new key when the change commits; one inserted after a delete is cancelled."""
    unshortened = replace(config.database, command_timeout=60.0)
    db = await Database.connect(config.database.dsn, unshortened)
    try:
        pipeline = await make_pipeline(db)
        await fill_backlog(raw, pipeline["id"], 200_000)
        if change == "rekey":
            work = asyncio.create_task(
                runs.set_concurrency(db, pipeline["id"], "queue", "branch", 3)
            )
        else:
            work = asyncio.create_task(pipelines.delete_pipeline(db, pipeline["id"]))
        await rekey_or_cancel_under_way(db)
        inserted = await insert_like_a_writer(config, pipeline["id"])
        assert not work.done()  # inserted while the change was still at work
        await asyncio.wait_for(work, 120)
    finally:
        await db.close()
    row = await raw.fetchrow(
        "SELECT status, concurrency_key_value FROM pipeline_runs WHERE id = $1", inserted
    )
    if change == "rekey":
        assert tuple(row) == ("queued", "late")
        assert await raw.fetchval("SELECT count(*) FROM pipeline_runs_rekey") == 0
    else:
        assert row["status"] == "cancelled"
