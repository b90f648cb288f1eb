"""Helpers for the runs/executor tests: pipelines with concurrency settings, raw run reads."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.storage import environments, pipelines, runs
from gateway.storage.database import Database, Record

LEASE = 60.0


async def make_pipeline(
    db: Database,
    *,
    policy: str = "queue",
    key: str | None = None,
    max_attempts: int = 3,
    environment_id: int | None = None,
) -> Record:
    """A pipeline (in a new environment unless given) with the concurrency settings."""
    if environment_id is None:
        env = await environments.insert_environment(db, f"env-{uuid.uuid4().hex[:8]}", "")
        environment_id = env["id"]
    pipeline = await pipelines.insert_pipeline(
        db, environment_id, "Deploy API", "application", 42, "deploy"
    )
    return await runs.set_concurrency(db, pipeline["id"], policy, key, max_attempts)


async def enqueue(db: Database, pipeline_id: int, **variables: Any) -> Record:
    """Queue one run with these variables."""
    async with db.transaction() as session:
        return await runs.enqueue(session, pipeline_id, variables)


async def claim(db: Database, pipeline_id: int | None, limit: int = 10, **kw: Any) -> list[Record]:
    """Claim as a test executor."""
    return await runs.claim(
        db, pipeline_id=pipeline_id, limit=limit, lease_seconds=LEASE, claimed_by="test", **kw
    )


async def run_row(db: Database, run_id: uuid.UUID) -> Record:
    """The stored run (its full row)."""
    row = await db.pool.fetchrow("SELECT * FROM pipeline_runs WHERE id = $1", run_id)
    assert row is not None
    return row


async def expire_lease(db: Database, run_id: uuid.UUID) -> None:
    """Move a lease's expiry into the past, as if the executor had died long ago."""
    await db.pool.execute(
        "UPDATE pipeline_runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        run_id,
    )
