"""Pipelines in the database."""

from __future__ import annotations

from gateway.storage.database import Database, Record
from gateway.storage.paging import split_page


async def insert_pipeline(
    db: Database,
    environment_id: int,
    name: str,
    resource_type: str,
    resource_id: int,
    action_type: str,
) -> Record:
    """Create a pipeline (NotFound when the environment vanished meanwhile)."""
    row = await db.fetchrow(
        "pipeline_insert", environment_id, name, resource_type, resource_id, action_type
    )
    assert row is not None
    return row


async def pipeline_by_id(db: Database, pipeline_id: int) -> Record | None:
    """The pipeline, or None."""
    return await db.fetchrow("pipeline_by_id", pipeline_id)


async def list_pipelines(
    db: Database, environment_id: int, limit: int, offset: int
) -> tuple[list[Record], int]:
    """A page of an environment's pipelines and their total count."""
    return split_page(await db.fetch("pipeline_list", environment_id, limit, offset))


async def update_pipeline(
    db: Database,
    pipeline_id: int,
    *,
    name: str | None = None,
    resource_type: str | None = None,
    resource_id: int | None = None,
    action_type: str | None = None,
) -> Record | None:
    """Change the given fields (None keeps a field); None when the pipeline is gone."""
    return await db.fetchrow(
        "pipeline_update", pipeline_id, name, resource_type, resource_id, action_type
    )


async def delete_pipeline(db: Database, pipeline_id: int) -> bool:
    """Delete a pipeline and its hooks, cancelling its unfinished runs; False when it did not
    exist."""
    async with db.transaction() as session:
        # One lock order for everyone: the pipeline (as set_concurrency and the run insert
        # trigger lock it before runs), its runs (as a status change locks its run before the
        # outgoing hook that its outbox row refers to), then its hooks (the delete's cascade).
        # The runs are cancelled again after the delete for runs committed meanwhile.
        if await session.fetchval("pipeline_lock_for_delete", pipeline_id) is None:
            return False
        await session.execute("pipeline_cancel_runs", pipeline_id)
        if await session.fetchval("pipeline_delete", pipeline_id) is None:
            return False
        await session.execute("pipeline_cancel_runs", pipeline_id)
    return True
