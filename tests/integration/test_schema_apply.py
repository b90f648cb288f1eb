"""Applying schema.sql: a file already applied is skipped at start-up, so a restarting gateway
takes no table lock (its ALTER TABLE statements would wait behind a long reader such as a
pg_dump, and every write of the running gateways behind them); a changed file, or `gateway
migrate` (force), is applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.config import DatabaseConfig
from gateway.exceptions import SchemaNotApplied
from gateway.storage.database import SCHEMA_PATH, Database


async def test_the_applied_schema_is_skipped_without_waiting_for_a_long_reader(
    db: Database, database_dsn: str
) -> None:
    # The test database was made from the same file: nothing runs.
    outcome = await db.apply_schema_outcome()
    assert not outcome.applied
    version = outcome.version
    reader = await asyncpg.connect(database_dsn)
    try:
        async with reader.transaction():
            # A long reader (a pg_dump) holds ACCESS SHARE on the busiest tables.
            await reader.fetchval("SELECT count(*) FROM pipeline_runs")
            await reader.fetchval("SELECT count(*) FROM hook_requests")
            assert await asyncio.wait_for(db.apply_schema(), 5) == version
            # Applied regardless (gateway migrate), it changes nothing, and takes no lock that
            # a reader holds up: its ALTER TABLEs run only for what is missing.
            forced = await asyncio.wait_for(db.apply_schema_outcome(force=True), 5)
            assert forced.applied and forced.version == version
    finally:
        await reader.close()


async def test_a_changed_schema_file_is_applied(db: Database, tmp_path: Path) -> None:
    changed = tmp_path / "schema.sql"
    changed.write_text(
        SCHEMA_PATH.read_text(encoding="utf-8")
        + "\nCREATE TABLE IF NOT EXISTS schema_apply_probe (id int);\n",
        encoding="utf-8",
    )
    before = await db.pool.fetchval("SELECT count(*) FROM schema_digest")
    assert (await db.apply_schema_outcome(changed)).applied
    assert await db.pool.fetchval("SELECT to_regclass('schema_apply_probe') IS NOT NULL")
    assert await db.pool.fetchval("SELECT count(*) FROM schema_digest") == before + 1
    # The same file again: skipped, nothing new recorded; forced (gateway migrate): applied.
    assert not (await db.apply_schema_outcome(changed)).applied
    assert await db.pool.fetchval("SELECT count(*) FROM schema_digest") == before + 1
    assert (await db.apply_schema_outcome(changed, force=True)).applied


async def test_a_schema_change_behind_a_long_transaction_names_its_holder(
    database_dsn: str, tmp_path: Path
) -> None:
    """ALTER TABLE behind a session idle in a transaction: each lock is waited for briefly and
    tried again until the command timeout; then the error is the lock wait, naming the holder,
    not "database unavailable" (the statement timeout), and nothing of the file is applied."""
    changed = tmp_path / "schema.sql"
    changed.write_text(
        SCHEMA_PATH.read_text(encoding="utf-8")
        + "\nCREATE TABLE IF NOT EXISTS schema_apply_probe (id int);\n"
        # A new column: ACCESS EXCLUSIVE, which waits for the reader.
        + "SELECT hookgate_add_column('pipeline_runs', 'probe', 'text');\n",
        encoding="utf-8",
    )
    db = await Database.connect(database_dsn, DatabaseConfig(command_timeout=3.0))
    holder = await asyncpg.connect(database_dsn, server_settings={"application_name": "report"})
    try:
        async with holder.transaction():
            await holder.fetchval("SELECT count(*) FROM pipeline_runs")
            with pytest.raises(SchemaNotApplied) as raised:
                await db.apply_schema(changed)
        assert type(raised.value).__name__ == "SchemaLockTimeout"
        message = str(raised.value)
        assert message.startswith("cannot apply schema.sql: it waited ")
        assert f"pid {holder.get_server_pid()} (application_name 'report'" in message
        assert "state 'idle in transaction'" in message
        assert "nothing was applied" in message
        assert not await db.pool.fetchval("SELECT to_regclass('schema_apply_probe') IS NOT NULL")
        # The holder gone, the same call goes through.
        assert (await db.apply_schema_outcome(changed)).applied
    finally:
        await holder.close()
        await db.close()
