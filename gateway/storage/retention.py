"""Deleting old rows in short batches (``gateway prune``): each statement deletes at most
``batch`` rows and commits on its own, so no lock is held for long and the gateway keeps
serving meanwhile."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line reads PRUNE_BATCH without loading the driver
    from datetime import datetime

    from gateway.progress import Progress
    from gateway.storage.database import Database

PRUNE_BATCH = 5000  # rows per prune statement: short transactions, no long locks


async def delete_in_batches(
    db: Database,
    query: str,
    cutoff: datetime,
    table: str,
    batch: int = PRUNE_BATCH,
    progress: Progress | None = None,
) -> int:
    """Run ``query`` (its parameters: ``cutoff``, ``batch``; it returns how many rows it
    deleted) until a statement deletes fewer than ``batch``; the rows deleted in all.
    ``progress(table, rows so far)`` is called after each statement."""
    removed = 0
    while True:
        count: int = await db.fetchval(query, cutoff, batch)
        removed += count
        if progress is not None:
            progress(table, removed)
        if count < batch:
            return removed
