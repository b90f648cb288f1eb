"""Reading the hook request history (the ingest path writes it), and clearing old bodies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import zstandard

from gateway.progress import Progress
from gateway.storage.database import Database, Record
from gateway.storage.paging import split_page
from gateway.storage.retention import PRUNE_BATCH


async def list_hook_requests(
    db: Database,
    hook_id: uuid.UUID,
    hook_type: str,
    outcome: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Record], int]:
    """A page of a hook's requests, newest first (no headers or bodies), and the total."""
    rows = await db.fetch("hook_request_list", hook_id, hook_type, outcome, limit, offset)
    return split_page(rows)


async def hook_request_by_id(db: Database, request_id: uuid.UUID) -> Record | None:
    """One request with headers and body, plus ``pipeline_id``/``environment_id`` of its hook
    (both None once the hook is deleted), or None."""
    return await db.fetchrow("hook_request_by_id", request_id)


def stored_body(row: Record) -> bytes | None:
    """The request body as received, or None when it was not stored."""
    body, encoding = row["body"], row["body_encoding"]
    if body is None or encoding is None:
        return None
    if encoding == "zstd":
        # decompressobj handles frames written without a content size in their header.
        return zstandard.ZstdDecompressor().decompressobj().decompress(bytes(body))
    if encoding == "identity":
        return bytes(body)
    raise ValueError(f"unknown body encoding {encoding!r}")


async def drop_bodies(
    db: Database, cutoff: datetime, batch: int = PRUNE_BATCH, progress: Progress | None = None
) -> int:
    """Clear the stored bodies of requests received before ``cutoff`` (the rows stay), ``batch``
    rows per statement, each committed on its own; the number of bodies cleared.
    ``progress("hook_requests.body", bodies so far)`` is called after each statement."""
    total = 0
    after = datetime.min.replace(tzinfo=UTC)
    while True:
        row = await db.fetchrow("hook_requests_drop_bodies", cutoff, batch, after)
        assert row is not None
        total += row["cleared"]
        if progress is not None:
            progress("hook_requests.body", total)
        if row["cleared"] < batch:
            return total
        after = row["last"]
