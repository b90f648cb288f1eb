"""Applying schema.sql to a database other releases use too (upgrade review 21): while the group
commit writes, a pre-digest release put its older functions back, or the database is newer than
the release."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway.config import Config, DatabaseConfig
from gateway.exceptions import SchemaNewerThanRelease, SchemaNotApplied
from gateway.ingest.batcher import PendingRequest, RunBatcher, Stored
from gateway.server import prepare_database
from gateway.storage import outgoing
from gateway.storage.database import SCHEMA_PATH, Database
from gateway.storage.schema import release_schema_version
from tests.conftest import _dsn_with_database
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


# hookgate_run_before_insert as releases before f6e3cfb/cb818fc define it (no pipeline lock, and
# a run of a deleted pipeline stays queued), as their schema.sql puts it back at every start.
OLDER_RUN_BEFORE_INSERT = """
CREATE OR REPLACE FUNCTION hookgate_run_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    policy    text;
    key_name  text;
BEGIN
    SELECT p.concurrency_policy, p.concurrency_key INTO policy, key_name
    FROM pipelines p WHERE p.id = NEW.pipeline_id;
    IF key_name IS NULL THEN
        NEW.concurrency_key_value := NULL;
        RETURN NEW;
    END IF;
    NEW.concurrency_key_value := hookgate_concurrency_key(NEW.variables, key_name);
    RETURN NEW;
END;
$$;
"""
# A trigger defined otherwise by an older file (illustrative: without its WHEN clause).
OLDER_STATUS_TRIGGER = """
CREATE OR REPLACE TRIGGER pipeline_runs_status_changed
    AFTER UPDATE OF status ON pipeline_runs
    FOR EACH ROW EXECUTE FUNCTION hookgate_notify_run_changed();
"""
# What happens to a run written for a pipeline that no longer exists (review probe).
DELETED_PIPELINE_PROBE = (
    "INSERT INTO pipeline_runs (id, pipeline_id, status, variables) "
    "VALUES (gen_random_uuid(), 999999, 'queued', '{}') RETURNING status"
)


async def _probe(db: Database) -> str:
    """The status the probe's run gets; the run is not kept."""
    async with db.pool.acquire() as conn:
        status: str = await conn.fetchval(
            f"WITH run AS ({DELETED_PIPELINE_PROBE}) SELECT status FROM run"
        )
        await conn.execute("DELETE FROM pipeline_runs WHERE pipeline_id = 999999")
    return status


async def test_a_start_repairs_the_functions_a_pre_digest_release_put_back(db: Database) -> None:
    """Finding 2: a release from before schema_digest re-applied its older file at a restart;
    this release's digest is recorded, and its next start used to skip the file for good."""
    assert not (await db.apply_schema_outcome()).applied  # the file's digest is known
    await db.pool.execute(OLDER_RUN_BEFORE_INSERT + OLDER_STATUS_TRIGGER)
    assert await _probe(db) == "queued"  # the deleted-pipeline fix is gone

    with capture_logs() as logs:
        outcome = await db.apply_schema_outcome()
    assert outcome.applied
    assert outcome.repaired == (
        "function hookgate_run_before_insert()",
        "trigger pipeline_runs_status_changed on pipeline_runs",
    )
    [repaired] = [e for e in logs if e["event"] == "schema_drift_repaired"]
    assert repaired["log_level"] == "warning"
    assert repaired["objects"] == list(outcome.repaired)
    assert await _probe(db) == "cancelled"
    # Repaired and recorded: the next start leaves the schema alone again.
    again = await db.apply_schema_outcome()
    assert not again.applied and again.repaired == ()


async def test_the_objects_of_a_file_applied_after_this_one_are_left_alone(
    db: Database, tmp_path: Path
) -> None:
    """Another release's file applied here later (a newer release at the same schema version,
    in a mixed fleet): its functions are not this release's, but not drift to repair either;
    each of the two would otherwise put its own back at every start."""
    later = tmp_path / "schema.sql"
    later.write_text(
        SCHEMA_PATH.read_text(encoding="utf-8")
        + "\nCREATE OR REPLACE FUNCTION hookgate_probe() RETURNS int LANGUAGE sql AS 'SELECT 2';\n",
        encoding="utf-8",
    )
    assert (await db.apply_schema_outcome(later)).applied
    assert not (await db.apply_schema_outcome()).applied


async def test_a_newer_schema_is_left_alone_at_start_and_migrate_refuses_it(
    db: Database, config: Config
) -> None:
    """Finding 9: an older release (a rollback) starts on a database a newer release migrated:
    it runs on the newer schema without applying its file, saying so; its `gateway migrate`
    refuses, since the file would put older functions back."""
    release = release_schema_version(SCHEMA_PATH.read_text(encoding="utf-8"))
    await db.pool.execute("INSERT INTO schema_version (version) VALUES ($1)", release + 1)
    # The newer release's definitions (stand-in: any that differ from this file's).
    await db.pool.execute(OLDER_RUN_BEFORE_INSERT)

    outcome = await db.apply_schema_outcome()
    assert (outcome.applied, outcome.newer_than_release) == (False, True)
    assert (outcome.version, outcome.release_version) == (release + 1, release)
    with capture_logs() as logs:
        await prepare_database(db, config)
    [newer] = [e for e in logs if e["event"].startswith("schema_")]
    assert newer["event"] == "schema_newer_than_release" and newer["log_level"] == "warning"
    assert (newer["version"], newer["release_version"]) == (release + 1, release)

    with pytest.raises(SchemaNewerThanRelease) as refused:
        await db.apply_schema_outcome(force=True)
    assert str(refused.value).startswith(
        f"cannot apply schema.sql: the database's schema is at version {release + 1}, newer "
        f"than this release's {release}"
    )
    assert await _probe(db) == "queued"  # nothing of this file ran


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


async def test_a_database_from_before_outgoing_secret_rotation_gets_its_columns(
    server_dsn: str, tmp_path: Path
) -> None:
    """Schema version 6 (release 0.2.0: the file up to the outgoing rotation's section) holding
    an outgoing hook; a start of this release adds previous_secret and its expiry, keeps the
    hook, and a rotation then works on it."""
    older = tmp_path / "schema.sql"
    older.write_text(SCHEMA_PATH.read_text().split("-- Outgoing secret rotation ---")[0])
    name = f"hookgate_up_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = await Database.connect(
        _dsn_with_database(server_dsn, name), DatabaseConfig(pool_min_size=1, pool_max_size=2)
    )
    columns = (
        "SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute "
        "WHERE attrelid = 'outgoing_hooks'::regclass AND attname LIKE 'previous%' "
        "AND NOT attisdropped"
    )
    try:
        assert await db.apply_schema(older) == 6
        assert await db.pool.fetchval(columns) is None
        pipeline_id = await new_pipeline(_dsn_with_database(server_dsn, name), "env")
        hook_id = uuid.uuid4()
        await db.pool.execute(
            "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events, secret) "
            "VALUES ($1, $2, 'o', 'https://example.com/h', '{run.completed}', 'whsec_one')",
            hook_id,
            pipeline_id,
        )

        outcome = await db.apply_schema_outcome()  # what `gateway serve` does at start-up
        assert outcome.applied and outcome.version == 7 and outcome.repaired == ()
        assert await db.pool.fetchval(columns) == ["previous_secret", "previous_secret_expires_at"]
        async with db.transaction() as session:
            row = await outgoing.rotate_secret(session, hook_id, "whsec_two", 60)
        assert row is not None
        assert (row["secret"], row["previous_secret"]) == ("whsec_two", "whsec_one")
        assert not (await db.apply_schema_outcome()).applied  # the next start: nothing to do
        assert (await db.apply_schema_outcome(force=True)).version == 7  # `gateway migrate`
    finally:
        await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
