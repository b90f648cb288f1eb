"""Group commit for the ingest path (DESIGN.md §3, step 8; issue 7).

Handlers hand a :class:`PendingRequest` to :meth:`RunBatcher.submit` and await the returned
future. One background task drains a bounded queue: once a writer is free it lets the batch fill
(up to ``batch.max_size`` requests and ``batch.max_wait_ms``, but only while requests keep
arriving) and hands it to the writer (an equal share of the queue when other writers are idle
too, so that they write in parallel), which commits it in ONE transaction on its own dedicated
connection and only then resolves each future. A 2xx is therefore never sent for an uncommitted
request.

Most batches are a single statement that is its own transaction (no BEGIN/COMMIT round trips):
it queues the runs and writes their history rows. A batch with a repeated delivery (a lookup and
a second INSERT) or a pipeline with outgoing hooks (the outbox INSERT) is written in an explicit
transaction; the single statement aborts, writing nothing, when it finds out only then.
Up to ``WRITERS`` batches are in flight at once, so the event loop keeps preparing the next batch
while one waits for the database (the database orders concurrent inserts of one delivery id: the
later one waits for the earlier to commit, then is a duplicate). Stored bodies are
zstd-compressed a batch at a time: on the event loop for a batch of ordinary webhook bodies, on
a helper thread (zstd releases the GIL) for large ones.

Failure modes: a full queue raises :class:`Overloaded` at once; a database that is down fails the
batch with :class:`DatabaseUnavailable` and, for a short back-off (growing up to
``batch.retry_after`` seconds), fails new submissions immediately instead of queueing them. Once
the back-off is over, ONE batch probes the database: other batches wait for its answer, new
submissions still fail fast meanwhile. The outcome of the batch that started last decides: a
success or failure of a batch that was already in flight when a later one got its answer (it
started before the database went away, or before it came back) changes nothing, and neither
does a failure before the statement reached the database (a bug of the gateway's). A batch that
fails for another reason (a row the database refuses) is retried one request per transaction,
so one bad request cannot fail its neighbours. A batch whose connection was lost while it may
have been committing is looked up on another connection (after its server process is ended)
before its requests get a 503: those found stored are answered as such.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import zstandard

from gateway import metrics
from gateway.config import Config
from gateway.exceptions import (
    DatabaseUnavailable,
    GatewayError,
    NeedsTransaction,
    Overloaded,
    TransientConflict,
    WriteInDoubt,
)
from gateway.ingest.evaluation import REJECTED
from gateway.logs import get_logger
from gateway.storage import ingest as store
from gateway.storage import outgoing
from gateway.storage.database import Database, reported_by_the_server

log = get_logger(__name__)

RUN_BATCHER = "run_batcher"  # key in app[appkeys.SERVICES]
DUPLICATE = "duplicate"  # hook_requests.outcome of a repeated delivery
ZSTD_LEVEL = 3
WRITERS = 3  # batches in flight at once (each on its own connection)
# Iterations without a new request after which a batch stops waiting to fill: a request's data
# is read in one iteration and its handler submits in the next.
QUIET_ITERATIONS = 2
# A batch's bodies up to this many bytes in all are compressed on the event loop (about 2.5 ms
# for 64 GitHub-sized bodies), larger ones on a helper thread.
INLINE_COMPRESSION_BYTES = 2 * 1024 * 1024
# Batches written in a transaction after a single statement had to be redone (see _write).
TRANSACTION_STREAK = 16
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
    # When it was read and checked (perf_counter). Written as its age, which the statement
    # subtracts from the database's clock: received_at (and its run's queued_at, which orders
    # runs by arrival) is the database's time, whatever this host's clock says.
    received: float = field(default_factory=time.perf_counter)
    retry_of: uuid.UUID | None = None
    future: asyncio.Future[Stored] | None = None


class RunBatcher:
    """The per-process group-commit writer; see the module docstring."""

    def __init__(self, db: Database, config: Config, *, writers: int = WRITERS) -> None:
        self._db = db
        self._writers = writers
        self.reconfigure(config)
        self._queue: deque[PendingRequest] = deque()
        self._wakeup = asyncio.Event()
        self._submitted = 0  # requests ever queued: tells _fill whether submissions continue
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Back-off state: failing fast until _down_until (0: the database is up); _decided_by is
        # when the batch whose outcome set that state started; _probe is set while one batch
        # checks whether the database is back (resolved with its answer).
        self._down_until = 0.0
        self._decided_by = 0.0
        self._probe: asyncio.Future[None] | None = None
        self._backoff = _FIRST_BACKOFF
        # zstd releases the GIL while it compresses: a batch of large bodies is compressed on a
        # helper thread (one hand-off per batch), so the event loop keeps serving meanwhile.
        self._compression = ThreadPoolExecutor(writers, thread_name_prefix="batch-zstd")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections = store.WriterConnections(db)
        self._slots = asyncio.Semaphore(writers)
        # Pipelines whose runs have outgoing hooks to notify: their batches go straight to a
        # transaction. After a single statement had to be redone, the next few batches do too.
        self._outgoing_pipelines: set[int] = set()
        self._transactions_due = 0
        self._flushes: set[asyncio.Task[None]] = set()

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
        if self._task is not None:
            await self._task
        await self._connections.close()
        self._compression.shutdown(wait=False)

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
        if self._down_until and (self._probe is not None or loop.time() < self._down_until):
            raise DatabaseUnavailable("the database is unavailable; retry later")
        item.future = future = loop.create_future()
        self._queue.append(item)
        self._submitted += 1
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._slots.acquire()  # a free writer (the queue grows meanwhile)
                await self._fill()
                batch = [queue.popleft() for _ in range(self._batch_size())]
                task = asyncio.create_task(self._flush_in_slot(batch), name="run-batch")
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)
            await asyncio.gather(*self._flushes)
        except asyncio.CancelledError:
            for task in self._flushes:
                task.cancel()
            raise

    async def _fill(self) -> None:
        """Let the batch fill, up to ``max_size`` requests and ``max_wait`` seconds, but no
        longer than submissions keep coming: once ``QUIET_ITERATIONS`` event-loop iterations in a
        row queued nothing, waiting more would only delay the requests already queued (a burst
        of requests is handled within an iteration or two; a lone request goes at once)."""
        assert self._loop is not None
        deadline = self._loop.time() + self._max_wait
        seen, quiet = self._submitted, 0
        while len(self._queue) < self._max_size and not self._closing:
            if self._loop.time() >= deadline:
                return
            await asyncio.sleep(0)  # one iteration: handlers with data ready run and submit
            if self._submitted != seen:
                seen, quiet = self._submitted, 0
                continue
            quiet += 1
            if quiet >= QUIET_ITERATIONS:
                return

    def _batch_size(self) -> int:
        """How many queued requests the writer about to start takes: up to ``max_size``, and an
        equal share when other writers are idle too.

        Under load the requests of many connections arrive in bursts. Sharing a burst among the
        idle writers writes it in parallel, and the loop prepares one part while another is
        being written, instead of one writer taking it all while the others wait.
        """
        idle = max(1, self._writers - len(self._flushes))  # each batch in flight holds a writer
        queued = len(self._queue)
        return min(queued, self._max_size, -(-queued // idle))

    async def _flush_in_slot(self, batch: list[PendingRequest]) -> None:
        try:
            await self._flush(batch)
        except asyncio.CancelledError:
            _fail(batch, DatabaseUnavailable("the gateway stopped before the write finished"))
            raise
        finally:
            self._slots.release()

    async def _flush(self, batch: list[PendingRequest]) -> None:
        assert self._loop is not None
        while self._probe is not None:  # another batch is finding out: its answer decides
            await asyncio.shield(self._probe)
        probe = None
        if self._down_until:
            if self._loop.time() < self._down_until:
                _fail(batch, DatabaseUnavailable("the database is unavailable; retry later"))
                return
            self._probe = probe = self._loop.create_future()  # this batch finds out
        started = self._loop.time()
        failure: Exception | None = None
        lost: DatabaseUnavailable | None = None
        try:
            results = await self._write(batch)
        except TransientConflict as exc:  # the database answered: not down
            failure = exc
        except DatabaseUnavailable as exc:
            self._mark_down(exc, len(batch), started)
            lost = exc
        except Exception as exc:
            failure = exc
        finally:
            if probe is not None:  # answered: the batches waiting for it go on
                self._probe = None
                probe.set_result(None)
        if lost is not None:
            if isinstance(lost, WriteInDoubt):
                await self._settle_lost_write(batch, lost, started)
            _fail(batch, lost)  # the requests not found committed
            metrics.set_queue_depth(len(self._queue))
            return
        if failure is None or reported_by_the_server(failure):
            self._database_answered(started)
        if failure is not None:
            if len(batch) == 1 and isinstance(failure, TransientConflict):
                _fail(batch, failure)  # rolled back: a 503, and the sender's retry succeeds
                return
            if len(batch) == 1:
                log.error(
                    "hook_request_not_stored",
                    error=str(failure),
                    error_type=type(failure).__name__,
                )
                _fail(batch, RequestNotStored())
                return
            log.warning("batch_write_failed_retrying_singly", size=len(batch), error=str(failure))
            for item in batch:
                await self._flush([item])
            return
        for item, result in zip(batch, results, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(result)
        metrics.record_batch(len(batch), len(self._queue))

    async def _settle_lost_write(
        self, batch: list[PendingRequest], lost: WriteInDoubt, started: float
    ) -> None:
        """The writer connection was lost while the batch may have been committing: find out
        on another connection, and resolve the requests that were in fact stored as such
        (answering them 503 would have their senders deliver them again, and a retry without a
        delivery id would queue a second run). Gives up after ``database.connect_timeout``
        seconds; the requests not resolved are then failed as before."""
        budget = self._db.config.connect_timeout
        try:
            async with asyncio.timeout(budget):
                rows = await store.settle_lost_write(
                    self._db, lost, [item.id for item in batch], wait=budget / 2
                )
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("batch_outcome_unknown", size=len(batch), error=str(exc) or "timeout")
            return
        if rows is None:
            log.warning("batch_outcome_unknown", size=len(batch), error="writer still running")
            return
        self._database_answered(started)
        log.warning("batch_connection_lost_in_commit", size=len(batch), committed=bool(rows))
        for item in batch:
            row = rows.get(item.id)
            if row is None or item.future is None or item.future.done():
                continue
            duplicate = row["outcome"] == DUPLICATE
            item.future.set_result(Stored(row["run_id"] if duplicate else item.run_id, duplicate))
        if rows:
            metrics.record_batch(len(batch), len(self._queue))

    def _database_answered(self, started: float) -> None:
        """A batch that started at ``started`` reached the database: the back-off ends, unless
        a batch that started later found it down (this one was in flight before that)."""
        if started < self._decided_by:
            return
        self._decided_by = started
        if self._down_until:
            self._down_until, self._backoff = 0.0, _FIRST_BACKOFF
            log.info("batch_database_back")

    def _mark_down(self, exc: Exception, size: int, started: float) -> None:
        assert self._loop is not None
        if started < self._decided_by:  # a later batch reached the database since this began
            log.warning("batch_write_failed", error=str(exc), size=size, stale=True)
            return
        self._decided_by = started
        self._down_until = self._loop.time() + self._backoff
        log.warning("batch_write_failed", error=str(exc), size=size, retry_in=self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)

    async def _write(self, batch: list[PendingRequest]) -> list[Stored]:
        """Commit one batch; return each request's result in order.

        Most batches are one statement committed on its own, without BEGIN and COMMIT: each
        round trip of a batch waits for the event loop to finish what it is doing, and under load
        that is the batch's latency. A batch that needs more (a repeated delivery, an outgoing
        hook to notify) is written in a transaction: directly when that is known in advance,
        else after the single statement aborted without writing anything.
        """
        results = [Stored(item.run_id, False) for item in batch]
        runs = _runs_to_insert(batch)
        bodies = await self._stored_bodies(batch)
        if self._fits_one_statement(batch, runs):
            try:
                async with self._connections.transaction(single_statement=True) as session:
                    now = time.perf_counter()
                    await store.insert_batch(
                        session,
                        _run_columns(runs, now),
                        _history_columns(batch, bodies, now),
                        single_statement=True,
                    )
                return results
            except NeedsTransaction:
                self._transactions_due = TRANSACTION_STREAK
        async with self._connections.transaction() as session:
            now = time.perf_counter()
            written = await store.insert_batch(
                session, _run_columns(runs, now), _history_columns(batch, bodies, now)
            )
            self._learn_outgoing(runs, written)
            inserted = written.inserted
            missing = [
                i
                for i, item in enumerate(batch)
                if item.run_id is not None and item.run_id not in inserted
            ]
            if missing:
                await self._resolve_duplicates(session, batch, missing, results)
                duplicates = [batch[i] for i in missing]
                await store.insert_requests(
                    session,
                    *_history_columns(
                        duplicates,
                        [bodies[i] for i in missing],
                        time.perf_counter(),  # a statement later than the batch's
                        [results[i].run_id for i in missing],
                    ),
                )
            if written.has_outgoing:
                # Outgoing hooks (issue 6): run.queued outbox rows, in this same transaction.
                await outgoing.enqueue_run_events(session, list(inserted))
        return results

    def _fits_one_statement(self, batch: list[PendingRequest], runs: list[PendingRequest]) -> bool:
        """Whether to try the batch as a single statement (see ``_write``)."""
        if self._transactions_due:
            self._transactions_due -= 1
            return False
        if len(runs) != sum(item.run_id is not None for item in batch):
            return False  # a delivery repeated within the batch
        return not any(r.pipeline_id in self._outgoing_pipelines for r in runs)

    def _learn_outgoing(self, runs: list[PendingRequest], written: store.BatchResult) -> None:
        """Remember which pipelines have outgoing hooks, as the statement saw them (only an
        inserted run tells: a repeated delivery's pipeline was not looked at)."""
        for run in runs:
            if run.run_id in written.with_outgoing:
                self._outgoing_pipelines.add(run.pipeline_id)
            elif run.run_id in written.inserted:
                self._outgoing_pipelines.discard(run.pipeline_id)

    async def _resolve_duplicates(
        self,
        session: Any,
        batch: list[PendingRequest],
        missing: list[int],
        results: list[Stored],
    ) -> None:
        # A new statement: sees the originals inserted by this batch and by transactions that
        # committed while our insert waited for them.
        originals = await store.runs_by_delivery(
            session,
            [batch[i].hook_id for i in missing],
            [batch[i].delivery_id for i in missing],  # type: ignore[misc]
        )
        for i in missing:
            item = batch[i]
            results[i] = Stored(originals.get((item.hook_id, item.delivery_id or "")), True)

    async def _stored_bodies(
        self, batch: list[PendingRequest]
    ) -> list[tuple[bytes | None, str | None]]:
        """Each request's body as stored (bytes, encoding), per ``hooks.store_bodies``."""
        setting = self._store_bodies
        stored: list[bytes | None] = [
            item.body
            if setting == "all" or (setting == "failures" and item.outcome == REJECTED)
            else None
            for item in batch
        ]
        if all(body is None for body in stored):
            return [(None, None)] * len(batch)
        if sum(len(body) for body in stored if body is not None) <= INLINE_COMPRESSION_BYTES:
            # Handing the work to a thread and back costs the batch an event-loop iteration,
            # which under load takes longer than compressing up to 2 MB here (~2.5 ms).
            compressed = _compress_all(stored)
        else:
            loop = asyncio.get_running_loop()
            compressed = await loop.run_in_executor(self._compression, _compress_all, stored)
        return [_smaller(body, small) for body, small in zip(stored, compressed, strict=True)]


_COMPRESSORS = threading.local()


def _compress_all(bodies: list[bytes | None]) -> list[bytes | None]:
    """zstd-compress every body (None stays None), on the event loop or a helper thread; each
    thread has its own compressor (a ZstdCompressor must not be used by two threads at once)."""
    compressor = getattr(_COMPRESSORS, "zstd", None)
    if compressor is None:
        compressor = _COMPRESSORS.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return [None if body is None else compressor.compress(body) for body in bodies]


def _smaller(body: bytes | None, compressed: bytes | None) -> tuple[bytes | None, str | None]:
    """The body as stored: compressed when that is smaller (random bytes are not)."""
    if body is None:
        return None, None
    if compressed is not None and len(compressed) < len(body):
        return compressed, "zstd"
    return body, "identity"


def _runs_to_insert(batch: list[PendingRequest]) -> list[PendingRequest]:
    """The requests whose run to insert, in one global order.

    A repeat of a (hook, delivery id) inside the batch is left out: it is a duplicate of the
    first, resolved after the insert like any other. Sorting by that key makes every writer
    (every batch, every worker process) take the unique index's locks in the same order, so two
    concurrent batches that share delivery ids wait for each other instead of deadlocking.
    """
    runs: list[PendingRequest] = []
    seen: set[tuple[uuid.UUID, str]] = set()
    for item in batch:
        if item.run_id is None:
            continue
        if item.delivery_id is not None:
            key = (item.hook_id, item.delivery_id)
            if key in seen:
                continue
            seen.add(key)
        runs.append(item)
    runs.sort(key=lambda r: (r.hook_id, r.delivery_id or ""))
    return runs


def _run_columns(runs: list[PendingRequest], now: float) -> tuple[list[Any], ...]:
    """The seven run columns of ``runs`` for a statement sent at ``now`` (perf_counter)."""
    return (
        [r.run_id for r in runs],
        [r.pipeline_id for r in runs],
        [r.hook_id for r in runs],
        [r.id for r in runs],
        [r.delivery_id for r in runs],
        [r.variables or {} for r in runs],
        [now - r.received for r in runs],  # queued_at: runs are ordered by arrival
    )


def _history_columns(
    items: list[PendingRequest],
    bodies: list[tuple[bytes | None, str | None]],
    now: float,
    duplicate_of: list[uuid.UUID | None] | None = None,
) -> tuple[list[Any], ...]:
    """The fifteen history columns of ``items`` for a statement sent at ``now`` (perf_counter);
    ``duplicate_of`` (the original run of each) turns them into the rows of repeated
    deliveries."""
    if duplicate_of is None:
        outcomes = [item.outcome for item in items]
        statuses = [item.status_code for item in items]
        messages = [item.message for item in items]
        run_ids = [item.run_id for item in items]
    else:
        outcomes = [DUPLICATE] * len(items)
        statuses = [200] * len(items)
        messages = [
            duplicate_message(item.delivery_id, run_id)
            for item, run_id in zip(items, duplicate_of, strict=True)
        ]
        run_ids = duplicate_of
    return (
        [item.id for item in items],
        [item.hook_id for item in items],
        [now - item.received for item in items],  # received_at, by the database's clock
        [item.client_ip for item in items],
        [item.headers for item in items],
        [body for body, _ in bodies],
        [encoding for _, encoding in bodies],
        [item.body_size for item in items],
        outcomes,
        statuses,
        messages,
        run_ids,
        [item.delivery_id for item in items],
        [(now - item.started) * 1000 for item in items],
        [item.retry_of for item in items],
    )


def duplicate_message(delivery_id: str | None, run_id: uuid.UUID | None) -> str:
    """The message for a repeated delivery (history row and response)."""
    return f"duplicate delivery {delivery_id!r}: already accepted as run {run_id}"


def _fail(batch: list[PendingRequest], exc: Exception) -> None:
    for item in batch:
        if item.future is not None and not item.future.done():
            item.future.set_exception(exc)
            item.future.exception()  # marked retrieved: a handler that went away must not warn
