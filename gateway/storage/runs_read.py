"""Reading pipeline runs for the management API (executors change them elsewhere)."""

from __future__ import annotations

import uuid

from gateway.storage.database import Database, Record
from gateway.storage.paging import split_page


async def list_runs(
    db: Database, pipeline_id: int, status: str | None, limit: int, offset: int
) -> tuple[list[Record], int]:
    """A page of a pipeline's runs, newest first, and the total."""
    return split_page(await db.fetch("run_list_for_pipeline", pipeline_id, status, limit, offset))


async def run_by_id(db: Database, run_id: uuid.UUID) -> Record | None:
    """One run with its output and ``environment_id`` (None once the pipeline is gone)."""
    return await db.fetchrow("run_by_id", run_id)
