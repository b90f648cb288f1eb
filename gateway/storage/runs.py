"""Runs for executors: claim with leases, heartbeats, status changes, concurrency policies.

Every status change goes through :func:`on_status_change` inside the transaction that makes it
(the database also NOTIFYs ``hookgate_run_changed`` from a trigger on commit).

Concurrency (pipelines.concurrency_policy, keyed by the variable named in concurrency_key):

- ``queue``: at most one in-progress run per key; the others wait, oldest first. Claimers race
  safely because a keyed run is started only while holding the transaction-scoped advisory lock
  of its (pipeline, key), taken with a try-lock in a statement *before* the claim statement: the
  claim's snapshot is therefore newer than the commit of the previous holder, and only holders
  start runs of a key, so "none in progress" is read exactly. A key whose lock another claimer
  holds is skipped (like SKIP LOCKED), never waited for.
- ``skip-if-running``: like queue, but a run whose key has a run in progress ends ``skipped``
  (when it is enqueued, by the insert trigger, or at the next claim).
- ``cancel-in-progress``: the newest active run of a key wins; older queued/in-progress ones are
  cancelled by the next claim (of any run of that pipeline) or by the holder's next heartbeat,
  which then answers Conflict. Enqueueing does not touch other rows, so the ingest hot path never
  waits on executors' row locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import run_states
from gateway.exceptions import Conflict, NotFound
from gateway.logs import get_logger
from gateway.progress import Progress
from gateway.storage import outgoing
from gateway.storage.concurrency import set_concurrency as set_concurrency  # re-exported
from gateway.storage.database import Database, Record, Session
from gateway.storage.retention import PRUNE_BATCH, delete_in_batches

log = get_logger(__name__)

SWEEP_LIMIT = 1000  # rows per housekeeping statement inside a claim


@dataclass(frozen=True, slots=True)
class RunChange:
    """One run's status change: the run as it is now, and the status it had before."""

    run: Record  # the pipeline_runs row after the change
    previous_status: str | None  # None when the run was just enqueued

    @property
    def run_id(self) -> uuid.UUID:
        run_id: uuid.UUID = self.run["id"]
        return run_id

    @property
    def pipeline_id(self) -> int:
        pipeline_id: int = self.run["pipeline_id"]
        return pipeline_id

    @property
    def status(self) -> str:
        status: str = self.run["status"]
        return status


async def on_status_change(session: Session, changes: Sequence[RunChange]) -> None:
    """The one place every run status change passes through, inside its transaction.

    Called by enqueue, claim (claimed, lease expired, skipped, superseded), heartbeat
    (superseded) and :func:`transition` (finish, cancel, release). Anything that must happen
    atomically with a status change (e.g. writing outgoing-hook outbox rows) belongs here.
    The ``hookgate_run_changed`` NOTIFY is sent by a database trigger.
    """
    # Outgoing hooks (issue 6): the outbox rows of subscribed hooks, in this same transaction.
    await outgoing.enqueue_run_events(
        session,
        [c.run_id for c in changes],
        [c.previous_status for c in changes],
        [c.status for c in changes],
    )


def _changes(rows: Iterable[Record]) -> list[RunChange]:
    return [RunChange(row, row["previous_status"]) for row in rows]


async def enqueue(
    session: Session,
    pipeline_id: int,
    variables: dict[str, Any],
    *,
    hook_id: uuid.UUID | None = None,
    request_id: uuid.UUID | None = None,
    delivery_id: str | None = None,
) -> Record:
    """Queue one run (the insert trigger may end it ``skipped`` at once); return its row."""
    rows = await session.fetch(
        "runs_enqueue",
        [uuid.uuid4()],
        [pipeline_id],
        [variables],
        [hook_id],
        [request_id],
        [delivery_id],
    )
    await on_status_change(session, _changes(rows))
    return rows[0]


async def enqueue_many(
    session: Session, pipeline_id: int, variables: Sequence[dict[str, Any]]
) -> int:
    """Queue one run per variables mapping in one statement; return how many were queued."""
    n = len(variables)
    rows = await session.fetch(
        "runs_enqueue",
        [uuid.uuid4() for _ in range(n)],
        [pipeline_id] * n,
        list(variables),
        [None] * n,
        [None] * n,
        [None] * n,
    )
    await on_status_change(session, _changes(rows))
    return len(rows)


async def claim(
    db: Database,
    *,
    limit: int,
    lease_seconds: float,
    claimed_by: str,
    pipeline_id: int | None = None,
    environment_ids: Sequence[int] | None = None,
) -> list[Record]:
    """Claim up to ``limit`` runs (of one pipeline, of some environments, or any), oldest first.

    One transaction: expired leases are requeued (or failed at max_attempts), superseded runs
    cancelled, the keys this claimer may start are try-locked, one statement claims, and queued
    runs that now find their key running are skipped. Returns the claimed rows, each with its
    new ``lease_token``, ``lease_expires_at`` and incremented ``attempt``.
    """
    scope = (pipeline_id, None if environment_ids is None else list(environment_ids))
    async with db.transaction() as session:
        # Each statement's changes pass on_status_change before the next statement: a run the
        # sweep requeues may be claimed again below, and its run.queued snapshot must show the
        # run as the sweep left it (attempt, message), not as the claim did.
        expired = await session.fetch("runs_expire_leases", *scope, SWEEP_LIMIT)
        await on_status_change(session, _changes(expired))
        superseded = await session.fetch("runs_cancel_superseded", *scope, SWEEP_LIMIT, None)
        await on_status_change(session, _changes(superseded))
        keys = await session.fetch("runs_lock_keys", *scope, max(limit * 4, 16))
        claimed = await session.fetch(
            "runs_claim",
            *scope,
            limit,
            lease_seconds,
            [k["pipeline_id"] for k in keys],
            [k["key"] for k in keys],
            claimed_by,
        )
        await on_status_change(session, _changes(claimed))
        skipped = await session.fetch("runs_skip_running", *scope, SWEEP_LIMIT)
        await on_status_change(session, _changes(skipped))
    _log_expired_leases(expired, claimed_by)
    return claimed


def _log_expired_leases(rows: Iterable[Record], swept_by: str) -> None:
    """One line per run whose executor stopped renewing its lease (died, hung, or cut off
    from the database): the only trace of it on this side, logged once it is committed."""
    for row in rows:
        log.warning(
            "run_lease_expired",
            run_id=str(row["id"]),
            pipeline_id=row["pipeline_id"],
            attempt=row["attempt"],
            status=row["status"],
            lost_by=row["lost_by"],
            swept_by=swept_by,
        )


async def transition(
    session: Session,
    run_id: uuid.UUID,
    lease_token: uuid.UUID | None,
    new_status: str,
    *,
    message: str | None = None,
    output: str | None = None,
    exit_code: int | None = None,
) -> Record:
    """Move a run to ``new_status`` inside ``session``'s transaction; return the updated row.

    Allowed: in-progress → completed | failed | cancelled | queued (a release: the attempt is
    not used up), queued → cancelled. Raises NotFound, or Conflict naming both states for an
    illegal move, or naming the lease when ``lease_token`` is not the live lease of the
    in-progress run. ``lease_token=None`` acts without a lease (administrative cancel), so
    executors must always pass theirs. Output is bounded to its tail.
    """
    row = await session.fetchrow("runs_lock_one", run_id)
    if row is None:
        raise NotFound("run not found")
    if _repeats_recorded_outcome(row, lease_token, new_status, exit_code):
        return row  # a retry of a report whose answer was lost: already done, nothing to do
    _check_not_replacing_recorded_outcome(row, lease_token, new_status)
    run_states.check_transition(row["status"], new_status)
    if row["status"] == run_states.IN_PROGRESS and lease_token is not None:
        _check_lease(row, lease_token)
    elif lease_token is not None:
        raise Conflict("the lease token does not match: the run is not in progress")
    if message is not None:
        message = run_states.bound_message(message)
    if new_status == run_states.QUEUED:
        updated = await session.fetchrow("runs_release", run_id, message)
    else:
        bounded = None if output is None else run_states.bound_output(output)
        updated = await session.fetchrow(
            "runs_finish",
            run_id,
            new_status,
            message,
            bounded,
            exit_code,
            row["status"],
            lease_token,
        )
    assert updated is not None
    await on_status_change(session, [RunChange(updated, row["status"])])
    return updated


async def report_status(
    db: Database,
    run_id: uuid.UUID,
    lease_token: uuid.UUID | None,
    new_status: str,
    *,
    message: str | None = None,
    output: str | None = None,
    exit_code: int | None = None,
) -> Record:
    """:func:`transition` in a transaction of its own."""
    async with db.transaction() as session:
        return await transition(
            session,
            run_id,
            lease_token,
            new_status,
            message=message,
            output=output,
            exit_code=exit_code,
        )


async def release(db: Database, run_id: uuid.UUID, lease_token: uuid.UUID, reason: str) -> Record:
    """Give an in-progress run back to the queue (graceful stop) without using up its attempt."""
    return await report_status(db, run_id, lease_token, run_states.QUEUED, message=reason)


async def heartbeat(
    db: Database, run_id: uuid.UUID, lease_token: uuid.UUID, lease_seconds: float
) -> datetime:
    """Extend the lease to ``lease_seconds`` from now; return the new expiry.

    Raises Conflict when the run was cancelled (including superseded under cancel-in-progress,
    which this call applies), finished, released, claimed again, or its lease expired.
    """
    async with db.transaction() as session:
        superseded = await session.fetch("runs_cancel_superseded", None, None, 1, run_id)
        await on_status_change(session, _changes(superseded))
        extended = await session.fetchrow("runs_heartbeat", run_id, lease_token, lease_seconds)
        current = None if extended else await session.fetchrow("runs_lock_one", run_id)
    if extended is not None:
        expires: datetime = extended["lease_expires_at"]
        return expires
    if current is None:
        raise NotFound("run not found")
    if current["status"] != run_states.IN_PROGRESS:
        detail = f": {current['message']}" if current["message"] else ""
        raise Conflict(f"the run is {current['status']}, no longer in progress{detail}")
    _check_lease(current, lease_token)
    raise Conflict("the lease could not be extended")  # pragma: no cover - raced; retry


def _repeats_recorded_outcome(
    row: Record, lease_token: uuid.UUID | None, new_status: str, exit_code: int | None
) -> bool:
    """True when the lease holder reports the outcome its lease already recorded (the same
    final status and exit code): an executor retrying after its first report committed but the
    answer never arrived, which must not get a 409 for its own success. (A release is not
    repeatable: it ends the lease, and the run may be claimed again meanwhile.)"""
    return (
        lease_token is not None
        and new_status in (run_states.COMPLETED, run_states.FAILED, run_states.CANCELLED)
        and row["status"] == new_status
        and row["lease_token"] == lease_token
        and row["exit_code"] == exit_code
    )


def _check_not_replacing_recorded_outcome(
    row: Record, lease_token: uuid.UUID | None, new_status: str
) -> None:
    """Raise Conflict naming the recorded outcome when the lease holder reports another one
    (a different exit code or status) for a run its lease already ended."""
    outcomes = (run_states.COMPLETED, run_states.FAILED)
    if lease_token is None or row["lease_token"] != lease_token:
        return
    if row["status"] in outcomes and new_status in outcomes:
        code = row["exit_code"]
        recorded = f"{row['status']} with exit code {code}" if code is not None else row["status"]
        raise Conflict(
            f"the run already ended {recorded} under this lease; "
            "a different outcome cannot replace it"
        )


def _check_lease(row: Record, lease_token: uuid.UUID) -> None:
    if row["lease_token"] != lease_token:
        raise Conflict(
            "the lease token does not match the run's current lease "
            "(the lease was lost and the run claimed again)"
        )
    if not row["lease_live"]:
        expired = row["lease_expires_at"]
        when = expired.isoformat() if expired is not None else "an unknown time"
        raise Conflict(f"the lease expired at {when}; the run will be claimed again")


async def pipeline_settings(db: Database, pipeline_id: int) -> Record | None:
    """The pipeline's environment and concurrency settings, or None."""
    return await db.fetchrow("runs_pipeline_settings", pipeline_id)


async def environments_with(db: Database, user_id: int, permission: str) -> list[int]:
    """Ids of environments where the user holds ``permission`` through a team."""
    rows = await db.fetch("runs_execute_environment_ids", user_id, permission)
    return [r["environment_id"] for r in rows]


async def cancel_orphaned(db: Database) -> int:
    """Cancel unfinished runs whose pipeline no longer exists; return how many."""
    count: int = await db.fetchval("runs_cancel_orphaned")
    return count


async def prune(
    db: Database, cutoff: datetime, batch: int = PRUNE_BATCH, progress: Progress | None = None
) -> dict[str, int]:
    """Delete finished runs that ended before ``cutoff``, then request history received before
    it whose run is gone (or that never had one), ``batch`` rows per statement
    (gateway.storage.retention). Returns rows per table."""
    return {
        table: await delete_in_batches(db, query, cutoff, table, batch, progress)
        for table, query in (
            ("pipeline_runs", "runs_prune_finished"),
            ("hook_requests", "runs_prune_requests"),
        )
    }
