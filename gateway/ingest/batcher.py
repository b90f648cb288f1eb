"""Group commit for the ingest path (DESIGN.md §3, step 8; issue 7).

Handlers hand a :class:`PendingRequest` to :meth:`RunBatcher.submit` and await the returned
future. One background task drains a bounded queue: it waits at most ``batch.max_wait_ms`` for up
to ``batch.max_size`` requests, writes them in ONE transaction (one multi-row INSERT for the runs,
one lookup for duplicate deliveries, one multi-row INSERT for the history rows), and only then
resolves each future. A 2xx is therefore never sent for an uncommitted request.

Failure modes: a full queue raises :class:`Overloaded` at once; a database that is down fails the
batch with :class:`DatabaseUnavailable` and, for a short back-off (growing up to
``batch.retry_after`` seconds), fails new submissions immediately instead of queueing them; the
first batch after the back-off probes the database again (the pool reconnects by itself). A batch
that fails for another reason (a row the database refuses) is retried one request per transaction,
so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import zstandard

from gateway import metrics
from gateway.config import Config
from gateway.exceptions import DatabaseUnavailable, GatewayError, Overloaded
from gateway.ingest.evaluation import REJECTED
from gateway.logs import get_logger
from gateway.storage import ingest as store
from gateway.storage import outgoing
from gateway.storage.database import Database

log = get_logger(__name__)

RUN_BATCHER = "run_batcher"  # key in app[appkeys.SERVICES]
DUPLICATE = "duplicate"  # hook_requests.outcome of a repeated delivery
ZSTD_LEVEL = 3
_FIRST_BACKOFF = 0.05


class RequestNotStored(GatewayError):
    """The request could not be stored; see the gateway log."""


class Stored(NamedTuple):
    """The committed result of one request: its run (None without one) and whether the run
    already existed (a repeated delivery)."""

    run_id: uuid.UUID | None
    duplicate: bool


@dataclass(slots=True, eq=False)
class PendingRequest:
    """One request to record; ``run_id`` set (with ``variables``) means "queue this run"."""

    id: uuid.UUID
    hook_id: uuid.UUID
    pipeline_id: int
    received_at: datetime
    client_ip: str | None
    headers: dict[str, str]
    body: bytes | None  # None: not read (rejected before the body)
    body_size: int
    outcome: str  # accepted | skipped | rejected
    status_code: int
    message: str
    delivery_id: str | None = None
    run_id: uuid.UUID | None = None
    variables: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)  # for latency_ms
    retry_of: uuid.UUID | None = None
    future: asyncio.Future[Stored] | None = None


class RunBatcher:
    """The per-process group-commit writer; see the module docstring."""

    def __init__(self, db: Database, config: Config) -> None:
        self._db = db
        self.reconfigure(config)
        self._queue: deque[PendingRequest] = deque()
        self._wakeup = asyncio.Event()
        self._filled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down_until = 0.0
        self._backoff = _FIRST_BACKOFF
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._loop: asyncio.AbstractEventLoop | None = None

    def reconfigure(self, config: Config) -> None:
        """Take ``[batch]`` and ``hooks.store_bodies`` from ``config`` (also on SIGHUP reload;
        the batch being written keeps the settings it started with)."""
        self._max_size = config.batch.max_size
        self._max_wait = config.batch.max_wait_ms / 1000
        self._max_queue = config.batch.max_queue
        self._max_backoff = float(config.batch.retry_after)
        self._store_bodies = config.hooks.store_bodies

    def start(self) -> None:
        """Start the writer task."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="run-batcher")

    async def close(self) -> None:
        """Refuse new requests, write everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        self._filled.set()
        if self._task is not None:
            await self._task

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, item: PendingRequest) -> asyncio.Future[Stored]:
        """Queue ``item``; ``await`` the result, resolved once it is committed.

        Raises Overloaded (queue full, or shutting down) or DatabaseUnavailable (the database
        failed recently) at once, without queueing.
        """
        loop = self._loop
        if loop is None or self._closing:
            raise Overloaded("the gateway is shutting down; retry later")
        if len(self._queue) >= self._max_queue:
            raise Overloaded("the gateway is overloaded; retry later")
        if self._down_until and loop.time() < self._down_until:
            raise DatabaseUnavailable("the database is unavailable; retry later")
        item.future = future = loop.create_future()
        self._queue.append(item)
        self._wakeup.set()
        if len(self._queue) >= self._max_size:
            self._filled.set()
        return future

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(queue) < self._max_size and self._max_wait > 0 and not self._closing:
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._max_wait):
                        await self._filled.wait()
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_size))]
            try:
                await self._flush(batch)
            except asyncio.CancelledError:
                _fail(batch, DatabaseUnavailable("the gateway stopped before the write finished"))
                raise

    async def _flush(self, batch: list[PendingRequest]) -> None:
        assert self._loop is not None
        if self._down_until and self._loop.time() < self._down_until:
            _fail(batch, DatabaseUnavailable("the database is unavailable; retry later"))
            return
        try:
            results = await self._write(batch)
        except DatabaseUnavailable as exc:
            self._mark_down(exc, len(batch))
            _fail(batch, exc)
            metrics.set_queue_depth(len(self._queue))
            return
        except Exception as exc:
            if len(batch) == 1:
                log.error("hook_request_not_stored", error=str(exc), error_type=type(exc).__name__)
                _fail(batch, RequestNotStored())
                return
            log.warning("batch_write_failed_retrying_singly", size=len(batch), error=str(exc))
            for item in batch:
                await self._flush([item])
            return
        self._down_until, self._backoff = 0.0, _FIRST_BACKOFF
        for item, result in zip(batch, results, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(result)
        metrics.record_batch(len(batch), len(self._queue))

    def _mark_down(self, exc: Exception, size: int) -> None:
        assert self._loop is not None
        self._down_until = self._loop.time() + self._backoff
        log.warning("batch_write_failed", error=str(exc), size=size, retry_in=self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)

    async def _write(self, batch: list[PendingRequest]) -> list[Stored]:
        """Commit one batch; return each request's result in order."""
        runs = [item for item in batch if item.run_id is not None]
        results = [Stored(item.run_id, False) for item in batch]
        async with self._db.transaction() as session:
            if runs:
                inserted = await store.insert_runs(
                    session,
                    [r.run_id for r in runs],  # type: ignore[misc]
                    [r.pipeline_id for r in runs],
                    [r.hook_id for r in runs],
                    [r.id for r in runs],
                    [r.delivery_id for r in runs],
                    [r.variables or {} for r in runs],
                )
                if len(inserted) < len(runs):
                    await self._resolve_duplicates(session, batch, inserted, results)
                # Outgoing hooks (issue 6): run.queued outbox rows, in this same transaction.
                await outgoing.enqueue_run_events(session, list(inserted))
            now = time.perf_counter()
            bodies = [self._stored_body(item) for item in batch]
            outcomes, statuses, messages = [], [], []
            for item, result in zip(batch, results, strict=True):
                if result.duplicate:
                    outcomes.append(DUPLICATE)
                    statuses.append(200)
                    messages.append(duplicate_message(item.delivery_id, result.run_id))
                else:
                    outcomes.append(item.outcome)
                    statuses.append(item.status_code)
                    messages.append(item.message)
            await store.insert_requests(
                session,
                [item.id for item in batch],
                [item.hook_id for item in batch],
                [item.received_at for item in batch],
                [item.client_ip for item in batch],
                [item.headers for item in batch],
                [body for body, _ in bodies],
                [encoding for _, encoding in bodies],
                [item.body_size for item in batch],
                outcomes,
                statuses,
                messages,
                [result.run_id for result in results],
                [item.delivery_id for item in batch],
                [(now - item.started) * 1000 for item in batch],
                [item.retry_of for item in batch],
            )
        return results

    async def _resolve_duplicates(
        self,
        session: Any,
        batch: list[PendingRequest],
        inserted: set[uuid.UUID],
        results: list[Stored],
    ) -> None:
        missing = [
            i
            for i, item in enumerate(batch)
            if item.run_id is not None and item.run_id not in inserted
        ]
        originals = await store.runs_by_delivery(
            session,
            [batch[i].hook_id for i in missing],
            [batch[i].delivery_id for i in missing],  # type: ignore[misc]
        )
        for i in missing:
            item = batch[i]
            results[i] = Stored(originals.get((item.hook_id, item.delivery_id or "")), True)

    def _stored_body(self, item: PendingRequest) -> tuple[bytes | None, str | None]:
        body = item.body
        if body is None or self._store_bodies == "none":
            return None, None
        if self._store_bodies == "failures" and item.outcome != REJECTED:
            return None, None
        compressed = self._compressor.compress(body)
        if len(compressed) < len(body):
            return compressed, "zstd"
        return body, "identity"


def duplicate_message(delivery_id: str | None, run_id: uuid.UUID | None) -> str:
    """The message for a repeated delivery (history row and response)."""
    return f"duplicate delivery {delivery_id!r}: already accepted as run {run_id}"


def _fail(batch: list[PendingRequest], exc: Exception) -> None:
    for item in batch:
        if item.future is not None and not item.future.done():
            item.future.set_exception(exc)
            item.future.exception()  # marked retrieved: a handler that went away must not warn
