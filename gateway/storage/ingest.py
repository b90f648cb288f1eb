"""Storage for the ingest hot path: hook definitions for the cache, group-committed batches, and
the LISTEN connection that tells the cache a hook changed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.exceptions import DatabaseUnavailable
from gateway.storage.database import Database, Record, Session, translated
from gateway.storage.queries import QUERIES

HOOK_CHANGED_CHANNEL = "hookgate_hook_changed"


async def hook_definition(db: Database, hook_id: uuid.UUID) -> Record | None:
    """The ``incoming_hooks`` row (with secrets) the ingest cache compiles, or None."""
    return await db.fetchrow("ingest_hook_by_id", hook_id)


async def insert_runs(
    session: Session,
    ids: Sequence[uuid.UUID],
    pipeline_ids: Sequence[int],
    hook_ids: Sequence[uuid.UUID],
    request_ids: Sequence[uuid.UUID],
    delivery_ids: Sequence[str | None],
    variables: Sequence[dict[str, Any]],
) -> set[uuid.UUID]:
    """Queue runs in one statement; return the ids inserted (the others were duplicates)."""
    rows = await session.fetch(
        "ingest_insert_runs", ids, pipeline_ids, hook_ids, request_ids, delivery_ids, variables
    )
    return {row["id"] for row in rows}


async def runs_by_delivery(
    session: Session, hook_ids: Sequence[uuid.UUID], delivery_ids: Sequence[str]
) -> dict[tuple[uuid.UUID, str], uuid.UUID]:
    """The existing run id per (hook id, delivery id) pair, in one query."""
    rows = await session.fetch("ingest_runs_by_delivery", hook_ids, delivery_ids)
    return {(row["hook_id"], row["delivery_id"]): row["id"] for row in rows}


async def insert_requests(
    session: Session,
    ids: Sequence[uuid.UUID],
    hook_ids: Sequence[uuid.UUID],
    received_at: Sequence[datetime],
    client_ips: Sequence[str | None],
    headers: Sequence[dict[str, str]],
    bodies: Sequence[bytes | None],
    body_encodings: Sequence[str | None],
    body_sizes: Sequence[int],
    outcomes: Sequence[str],
    status_codes: Sequence[int],
    messages: Sequence[str],
    run_ids: Sequence[uuid.UUID | None],
    delivery_ids: Sequence[str | None],
    latencies_ms: Sequence[float],
    retry_of: Sequence[uuid.UUID | None],
) -> None:
    """Write the history rows of one batch in one statement."""
    await session.execute(
        "ingest_insert_requests",
        ids,
        hook_ids,
        received_at,
        client_ips,
        headers,
        bodies,
        body_encodings,
        body_sizes,
        outcomes,
        status_codes,
        messages,
        run_ids,
        delivery_ids,
        latencies_ms,
        retry_of,
    )


class HookChangeListener:
    """A dedicated connection LISTENing on ``hookgate_hook_changed``.

    ``on_change(hook_id_text)`` runs for every notification; ``on_lost()`` when the connection
    closes for any reason. Use :meth:`alive` to detect a silently dead connection.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def open(
        cls, db: Database, on_change: Callable[[str], None], on_lost: Callable[[], None]
    ) -> HookChangeListener:
        """Connect and LISTEN; raise DatabaseUnavailable when the server cannot be reached."""

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_change(payload)

        conn = await db.listen(HOOK_CHANGED_CHANNEL, notified)
        conn.add_termination_listener(lambda _conn: on_lost())
        return cls(conn)

    @property
    def closed(self) -> bool:
        return bool(self._conn.is_closed())

    async def alive(self) -> bool:
        """True when a round trip on the connection succeeds (bound it with asyncio.timeout)."""
        try:
            async with translated():
                return bool(await self._conn.fetchval(QUERIES["ping"]) == 1)
        except DatabaseUnavailable:
            return False

    async def close(self) -> None:
        """Close the connection (abruptly when a graceful close does not finish quickly)."""
        if self._conn.is_closed():
            return
        try:
            await asyncio.wait_for(self._conn.close(), timeout=2)
        except Exception:  # already broken: nothing left to release gracefully
            self._conn.terminate()
