"""Pipelines in the database."""

from __future__ import annotations

from gateway.exceptions import GatewayError
from gateway.logs import get_logger
from gateway.storage.database import Database, Record
from gateway.storage.paging import split_page

log = get_logger(__name__)

CANCEL_CHUNK = 5000  # runs per cancelling statement after a delete: a fraction of a second


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
    """Delete a pipeline and its hooks, then cancel its unfinished runs; False when it did not
    exist.

    The delete touches no run, so the pipeline row (which every run insert share-locks) is held
    only for the delete itself, whatever the backlog; the runs are cancelled after it commits,
    ``CANCEL_CHUNK`` at a time, each chunk a short statement of its own. Until then they cannot
    be claimed (a claim joins the pipeline); runs written after the delete are cancelled by the
    insert trigger; and any the chunks leave (the process stopped, a chunk failed) are
    cancelled by `gateway prune` (runs.cancel_orphaned). A status change locks its run, then
    the outgoing hook its outbox row refers to, and the delete takes only the pipeline, then
    its hooks (the cascade): no order of theirs makes a cycle.
    """
    async with db.transaction() as session:
        if await session.fetchval("pipeline_delete", pipeline_id) is None:
            return False
    try:
        cancelled = await cancel_runs_of_deleted(db, pipeline_id)
    except GatewayError as exc:  # the delete is committed: it is answered as done
        log.warning(
            "pipeline_runs_cancel_incomplete",
            pipeline_id=pipeline_id,
            error=str(exc),
            hint="the runs left are not claimable, and are cancelled by the next `gateway prune`",
        )
        return True
    log.info("pipeline_runs_cancelled", pipeline_id=pipeline_id, runs=cancelled)
    return True


async def cancel_runs_of_deleted(db: Database, pipeline_id: int, chunk: int = CANCEL_CHUNK) -> int:
    """Cancel the unfinished runs of deleted pipeline ``pipeline_id``, ``chunk`` runs of each
    status per statement; return how many."""
    cancelled = 0
    while True:
        done = await db.fetchrow("pipeline_cancel_runs", pipeline_id, chunk)
        assert done is not None
        cancelled += done["cancelled"]
        if done["found"] == 0:
            return cancelled
