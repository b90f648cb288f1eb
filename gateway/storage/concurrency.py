"""Changing a pipeline's concurrency settings, and re-keying its backlog to the new key.

Every queued and in-progress run carries the value of the pipeline's key variable
(``concurrency_key_value``, which the claim statements compare). A new key re-keys them all,
and on a backlog of a million runs that is seconds of writing. It happens in one transaction, so
that no claim ever sees runs keyed by two keys (claims skip the runs it has re-keyed, which it
holds locked until it commits), but in chunks (no statement nears the statement timeout) and
without holding the pipeline row, which every run insert share-locks: the ingest writers, which
wait at most ``WRITER_LOCK_TIMEOUT`` for a lock, keep writing the pipeline's runs meanwhile.

The order:

1. Take the pipeline's re-key lock (advisory, exclusive): it waits for the run inserts in
   flight, which hold it shared; inserts from then on cannot, and list their runs in
   ``pipeline_runs_rekey`` instead of waiting (schema.sql, hookgate_list_runs_for_rekey: once
   per insert statement and pipeline).
2. Re-key the queued backlog by the new key, chunk by chunk, writing only the runs whose value
   changes but locking them all (a run left claimable could be started by values about to
   change), then the in-progress runs in one short statement (locked from the first chunk on,
   their executors' heartbeats would wait for the whole change, and could lose their lease);
   the same key needs none of it: a new policy or max_attempts is instant.
3. Update the pipeline row: waits for the inserts still in flight (a moment), and inserts after
   it wait for the commit and are keyed by the new settings.
4. Re-key the runs listed meanwhile (few), in the same transaction.

A change that runs out of time (``time_limit``, or a statement its statement timeout) is
rolled back whole and raised as :class:`OperationTimedOut`, saying what it was doing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway import run_states
from gateway.exceptions import DatabaseUnavailable, GatewayError, NotFound, OperationTimedOut
from gateway.logs import get_logger
from gateway.storage.database import Database, Record, Session, statement_timed_out

log = get_logger(__name__)

REKEY_CHUNK = 2000  # runs per re-key statement: tens of milliseconds each
REKEY_TIME_LIMIT = 60.0  # seconds a concurrency change may spend on its backlog, in all

_FIRST = (datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # before every (queued_at, id)


_WAITING = "waiting for the run inserts in flight"
_WAITING_HINT = (
    "a transaction that wrote runs of this pipeline is still open (see pg_stat_activity); "
    "retry once it has ended"
)
_REKEYING_HINT = "retry later, or when fewer of its runs are queued"


@dataclass(slots=True)
class _Progress:
    """How far a concurrency change got, for the message when it runs out of time."""

    step: str = _WAITING
    hint: str = _WAITING_HINT
    read: int = 0
    rekeyed: int = 0

    def now(self, step: str, hint: str) -> None:
        self.step, self.hint = step, hint


async def set_concurrency(
    db: Database,
    pipeline_id: int,
    policy: str,
    key: str | None,
    max_attempts: int,
    *,
    time_limit: float | None = None,
    chunk: int = REKEY_CHUNK,
) -> Record:
    """Change a pipeline's concurrency settings; its active runs are re-keyed at once, those
    being inserted meanwhile included (``rekeyed``: how many runs' key value changed).
    OperationTimedOut, nothing changed, past ``time_limit`` (default ``REKEY_TIME_LIMIT``)."""
    if policy not in run_states.POLICIES:
        raise ValueError(f"policy: must be one of {', '.join(run_states.POLICIES)}")
    started = time.monotonic()
    deadline = started + (REKEY_TIME_LIMIT if time_limit is None else time_limit)
    progress = _Progress()
    try:
        async with db.transaction() as session:
            await session.execute("runs_rekey_lock", pipeline_id)
            current = await session.fetchrow("runs_pipeline_settings", pipeline_id)
            if current is None:
                raise NotFound("pipeline not found")
            if current["concurrency_key"] != key:
                progress.now("re-keying its queued and in-progress runs", _REKEYING_HINT)
                await _rekey_backlog(session, pipeline_id, key, deadline, chunk, progress)
            progress.now(f"{_WAITING} to update the pipeline", _WAITING_HINT)
            row = await session.fetchrow(
                "runs_set_concurrency", pipeline_id, policy, key, max_attempts
            )
            if row is None:
                raise NotFound("pipeline not found")
            progress.now("re-keying the runs inserted meanwhile", _REKEYING_HINT)
            progress.rekeyed += await session.fetchval("runs_rekey_inserted_meanwhile", pipeline_id)
    except DatabaseUnavailable as exc:
        if not statement_timed_out(exc):
            raise
        raise await _timed_out(db, pipeline_id, progress, time.monotonic() - started) from exc
    except OperationTimedOut as exc:
        raise await _timed_out(db, pipeline_id, progress, time.monotonic() - started) from exc
    return {**row, "rekeyed": progress.rekeyed}


async def _rekey_backlog(
    session: Session,
    pipeline_id: int,
    key: str | None,
    deadline: float,
    chunk: int,
    progress: _Progress,
) -> None:
    """Re-key the pipeline's queued runs by ``key``, ``chunk`` at a time, in (queued_at, id)
    order, each locked until the change commits (claims skip them meanwhile), then its
    in-progress runs in one statement; OperationTimedOut past ``deadline``."""
    after = _FIRST
    while True:
        done = await session.fetchrow("runs_rekey_chunk", pipeline_id, key, *after, chunk)
        assert done is not None
        progress.read += done["read"]
        progress.rekeyed += done["changed"]
        if done["read"] == 0:
            break
        after = (done["last_queued_at"], done["last_id"])
        if time.monotonic() > deadline:
            raise OperationTimedOut("the time limit of a concurrency change")
    # Then the in-progress runs, in one short statement: locked from the first chunk on, their
    # heartbeats and status reports would have waited for the whole change.
    running = await session.fetchrow("runs_rekey_in_progress", pipeline_id, key)
    assert running is not None
    progress.read += running["read"]
    progress.rekeyed += running["changed"]


async def _timed_out(
    db: Database, pipeline_id: int, progress: _Progress, seconds: float
) -> OperationTimedOut:
    """The error for a change that ran out of time (and was rolled back), with its backlog."""
    try:
        backlog: int | None = await db.fetchval("runs_active_count", pipeline_id)
    except GatewayError:
        backlog = None  # the message does without it
    log.warning(
        "pipeline_concurrency_timed_out",
        pipeline_id=pipeline_id,
        step=progress.step,
        runs_read=progress.read,
        backlog=backlog,
        seconds=round(seconds, 1),
    )
    of_backlog = (
        "" if backlog is None else f" (its backlog: {backlog:,} queued and in-progress runs)"
    )
    read = f", {progress.read:,} runs read" if progress.read else ""
    return OperationTimedOut(
        f"changing the concurrency settings of pipeline {pipeline_id} ran out of time after "
        f"{seconds:.1f}s {progress.step}{read}{of_backlog}; it was rolled back and nothing "
        f"changed: {progress.hint}"
    )
