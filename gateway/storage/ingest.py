"""Storage for the ingest hot path: hook definitions for the cache, group-committed batches, and
the LISTEN connection that tells the cache a hook changed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime
from typing import Any

from gateway.exceptions import DatabaseUnavailable, TransientConflict, WriteInDoubt
from gateway.storage.database import (
    Database,
    Record,
    Session,
    close_quietly,
    lost_without_an_answer,
    translated,
)
from gateway.storage.queries import QUERIES

HOOK_CHANGED_CHANNEL = "hookgate_hook_changed"


async def hook_definition(db: Database, hook_id: uuid.UUID) -> Record | None:
    """The ``incoming_hooks`` row (with secrets) the ingest cache compiles, or None."""
    return await db.fetchrow("ingest_hook_by_id", hook_id)


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
    received_ages: Sequence[float],
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
    """Write the history rows of one batch in one statement; ``received_ages``: seconds since
    each request was received (its received_at is the database's clock less that)."""
    await session.execute(
        "ingest_insert_requests",
        ids,
        hook_ids,
        received_ages,
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


# Seconds a batch statement may wait for a lock. A batch mixes requests for every hook, and a
# run's insert locks its pipeline row (FOR SHARE): while one pipeline is locked for long (a long
# transaction that changed it; its deletion and a concurrency change hold it only a moment,
# whatever the backlog: storage/pipelines.py, storage/concurrency.py), every batch
# holding one of its requests would wait, up to the statement timeout, and with all the writers
# so taken the requests of every other pipeline too. After this long the batch fails as a
# TransientConflict and is written again one request at a time: only that pipeline's requests
# are answered 503 (Retry-After), not the worker's.
WRITER_LOCK_TIMEOUT = 2.0


class WriterConnections:
    """Dedicated connections for the group-commit writer (one per concurrent batch).

    Unlike the pool, there is no acquire and no reset query (an extra round trip) around each
    batch. A connection that broke, or whose batch was cancelled mid-statement, is dropped and a
    new one opened for the next batch; opening fails with DatabaseUnavailable while the server
    is unreachable.

    A connection lost while its commit may have been under way (during the single statement,
    or during COMMIT) raises :class:`WriteInDoubt` naming the server process, which
    :func:`settle_lost_write` can end before finding out whether the batch committed.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._idle: list[Any] = []
        self._backends: dict[Any, tuple[int, datetime]] = {}  # connection -> (pid, start)
        self._closed = False

    async def _open(self) -> Any:
        conn = await self._db.connection(lock_timeout=WRITER_LOCK_TIMEOUT)
        try:
            async with translated():
                row = await conn.fetchrow(QUERIES["ingest_writer_backend"])
        except BaseException:
            conn.terminate()
            raise
        if row is not None:  # None only through a proxy that hides the server's processes
            self._backends[conn] = (row["pid"], row["backend_start"])
        return conn

    def _drop(self, conn: Any) -> None:
        self._backends.pop(conn, None)
        conn.terminate()

    @asynccontextmanager
    async def transaction(self, *, single_statement: bool = False) -> AsyncIterator[Session]:
        """A Session on a dedicated connection, inside one transaction.

        ``single_statement``: no BEGIN and COMMIT (two round trips fewer); the one statement
        run on the session is its own transaction.
        """
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            if conn.is_closed():  # dropped while idle (a database restart): open a new one
                conn = None
        if conn is None:
            conn = await self._open()
        reusable = False
        committing = single_statement  # the one statement carries its own commit
        try:
            async with translated(), nullcontext() if single_statement else conn.transaction():
                yield Session(conn)
                committing = True  # leaving the block sends COMMIT
            reusable = True
        except TransientConflict:  # rolled back by the server: the connection is fine
            reusable = not conn.is_closed() and not conn.is_in_transaction()
            raise
        except DatabaseUnavailable as exc:  # the connection's state is unknown: not reused
            backend = self._backends.get(conn)
            if committing and backend is not None and lost_without_an_answer(exc):
                raise WriteInDoubt(str(exc), backend) from exc
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            reusable = not conn.is_closed() and not conn.is_in_transaction()
            raise
        finally:
            if reusable and not self._closed:
                self._idle.append(conn)
            else:
                self._drop(conn)

    async def close(self) -> None:
        """Close the idle connections (call once no transaction is running)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._backends.pop(conn, None)
            await close_quietly(conn)


async def settle_lost_write(
    db: Database, lost: WriteInDoubt, request_ids: Sequence[uuid.UUID], wait: float
) -> dict[uuid.UUID, Record] | None:
    """Find out, on a pool connection, whether the batch whose writer connection was lost
    committed: the history rows (id, run_id, outcome) found among ``request_ids`` (empty: it
    did not commit), or None when that cannot be known yet.

    The lost connection's server process is ended first (waiting up to ``wait`` seconds for it
    to exit): until it is gone it may still commit, for instance once a lock it waits for is
    released, and a look at the rows before then would answer "not stored" too early.
    Raises DatabaseUnavailable when the database cannot be asked.
    """
    pid, started = lost.backend
    ended = await db.fetchrow("ingest_end_lost_writer", pid, started, int(wait * 1000))
    if ended is not None and not ended["ended"]:
        return None
    rows = await db.fetch("ingest_requests_stored", list(request_ids))
    return {row["id"]: row for row in rows}


class BatchResult:
    """What :func:`insert_batch` wrote: the runs inserted, and those of them whose pipeline has
    an active outgoing hook (the outbox must then be written in the same transaction)."""

    __slots__ = ("inserted", "with_outgoing")

    def __init__(self, inserted: set[uuid.UUID], with_outgoing: set[uuid.UUID]) -> None:
        self.inserted = inserted
        self.with_outgoing = with_outgoing

    @property
    def has_outgoing(self) -> bool:
        return bool(self.with_outgoing)


async def insert_batch(
    session: Session,
    runs: Sequence[Sequence[Any]],
    requests: Sequence[Sequence[Any]],
    *,
    single_statement: bool = False,
) -> BatchResult:
    """Queue runs and write history rows in ONE statement (``ingest_insert_batch``).

    ``runs``: seven columns (ids, pipeline ids, hook ids, request ids, delivery ids,
    variables, and the requests' ages in seconds: queued_at, like the history row's
    received_at, is the database's clock less that age, which orders runs by arrival).
    ``requests``: the fifteen columns of ``ingest_insert_requests`` (client ips as text).
    History rows of requests whose run was not inserted (duplicates) are left out; write them
    with :func:`insert_requests`.

    ``single_statement`` (on a session without a transaction, see
    :meth:`WriterConnections.transaction`): raise ``NeedsTransaction``, with nothing
    written, when a run was not inserted or an inserted run has an outgoing hook to notify.
    """
    row = await session.fetchrow("ingest_insert_batch", *runs, *requests, single_statement)
    assert row is not None  # an aggregate: always one row
    return BatchResult(set(row["inserted"]), set(row["with_outgoing"]))
