"""Outgoing hooks in the database: definitions, the delivery outbox, and attempt history.

The outbox write (:func:`enqueue_run_events`) runs inside the transaction that changes a run's
status, so a delivery exists exactly when the change committed. The dispatcher claims due rows
with ``FOR UPDATE SKIP LOCKED`` and a lease (``locked_until``): a dispatcher that dies holding
deliveries loses them to another once the lease expires. Delivery is at-least-once; receivers
de-duplicate on ``webhook-id`` (the delivery id, the same on every retry).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.dispatcher.signing import with_sensitive_header_values
from gateway.progress import Progress
from gateway.security.secret_box import SecretBox, StoredSecret
from gateway.storage.database import Database, Record, Session
from gateway.storage.paging import split_page
from gateway.storage.retention import PRUNE_BATCH, delete_in_batches

DELIVERY_DUE_CHANNEL = "hookgate_delivery_due"


async def insert_hook(
    db: Database,
    hook_id: uuid.UUID,
    pipeline_id: int,
    values: dict[str, Any],
    secret: str | None,
    created_by: int | None,
) -> Record:
    """Create a hook from validated ``values`` (``secret`` plaintext, stored encrypted); return
    it with ``environment_id``."""
    row = await db.fetchrow(
        "outgoing_hook_insert",
        hook_id,
        pipeline_id,
        values["name"],
        values["active"],
        values["target_url"],
        values["events"],
        values["trigger_when"],
        sealed_settings(values["settings"], db.secret_box),
        values["requires_secret"],
        None if secret is None else db.secret_box.encrypt(secret),
        created_by,
    )
    assert row is not None
    return row


def sealed_settings(settings: Mapping[str, Any], box: SecretBox) -> dict[str, Any]:
    """``settings`` as stored: the values of sensitive request headers (Authorization, API
    keys, tokens: gateway.security.sensitive_headers) encrypted like hook secrets, so that a
    database dump reveals none of them; the dispatcher opens them (dispatcher.outbound). A
    value the client sent (a ``str``) is encrypted whatever it looks like; only a value kept as
    stored (a :class:`StoredSecret`: the mask sent back, management.outgoing_hook_input) is
    written back as it is."""
    return with_sensitive_header_values(settings, box.stored_form)


async def hook_by_id(db: Database, hook_id: uuid.UUID) -> Record | None:
    """The hook (secret included: callers mask it) with ``environment_id``, or None."""
    return await db.fetchrow("outgoing_hook_by_id", hook_id)


async def hooks_for_pipeline(db: Database, pipeline_id: int) -> list[Record]:
    """Every outgoing hook of a pipeline, oldest first."""
    return await db.fetch("outgoing_hook_list_for_pipeline", pipeline_id)


async def lock_hook(session: Session, hook_id: uuid.UUID) -> Record | None:
    """The hook, locked until the end of ``session``'s transaction, or None."""
    return await session.fetchrow("outgoing_hook_lock", hook_id)


async def update_hook(
    session: Session,
    hook_id: uuid.UUID,
    values: dict[str, Any],
    secret: str | StoredSecret | None,
) -> Record:
    """Replace the hook's definition with ``values`` (all fields); ``secret`` is a new plaintext
    secret (encrypted) or the stored one, written back as it is. Return the new row."""
    row = await session.fetchrow(
        "outgoing_hook_update",
        hook_id,
        values["name"],
        values["active"],
        values["target_url"],
        values["events"],
        values["trigger_when"],
        sealed_settings(values["settings"], session.secret_box),
        values["requires_secret"],
        None if secret is None else session.secret_box.stored_form(secret),
    )
    assert row is not None
    return row


async def rotate_secret(
    session: Session, hook_id: uuid.UUID, secret: str, grace_seconds: int
) -> Record:
    """Replace the secret of a hook the caller locked (:func:`lock_hook`) with ``secret``
    (plaintext, stored encrypted); the old one keeps signing next to it for ``grace_seconds``
    (0: stops now). Return the new row."""
    sealed = session.secret_box.encrypt(secret)
    row = await session.fetchrow("outgoing_hook_rotate_secret", hook_id, sealed, grace_seconds)
    assert row is not None  # the caller's lock keeps the hook from being deleted meanwhile
    return row


async def delete_hook(db: Database, hook_id: uuid.UUID) -> bool:
    """Delete a hook and its undelivered deliveries; False when it did not exist."""
    return await db.fetchval("outgoing_hook_delete", hook_id) is not None


# --- the outbox ---------------------------------------------------------------------------


async def enqueue_run_events(
    session: Session,
    run_ids: Sequence[uuid.UUID],
    previous_statuses: Sequence[str | None] | None = None,
    statuses: Sequence[str | None] | None = None,
) -> int:
    """Write the deliveries for runs whose status just changed, in the caller's transaction.

    Call it after the change, in the same transaction. ``statuses`` are the statuses the runs
    entered (None: read the run's current status, e.g. right after an insert);
    ``previous_statuses`` None means the runs were just created. The event is ``run.queued``,
    ``run.started`` (in-progress), ``run.completed``, ``run.failed``, or
    ``run.status_changed`` for the other statuses; hooks subscribed to ``run.status_changed``
    get every change. Returns the number of deliveries written (one statement either way).
    """
    if not run_ids:
        return 0
    count = len(run_ids)
    status = await session.execute(
        "outgoing_enqueue_run_events",
        list(run_ids),
        list(previous_statuses) if previous_statuses is not None else [None] * count,
        list(statuses) if statuses is not None else [None] * count,
    )
    return int(status.rsplit(" ", 1)[-1])


async def claim_deliveries(
    db: Database,
    limit: int,
    lease_seconds: float,
    busy_hook_ids: Sequence[uuid.UUID],
    per_hook: int,
    room: Mapping[uuid.UUID, int] | None = None,
    recording: Collection[uuid.UUID] = (),
    *,
    per_environment: int | None = None,
    environment_room: Mapping[int, int] | None = None,
) -> list[Record]:
    """Claim up to ``limit`` due deliveries (with their hook's definition and
    ``environment_id``) under a lease: none of the busy hooks, at most ``per_hook`` of any
    other hook, or ``room[hook_id]``; at most ``per_environment`` of an environment (None: no
    limit), or ``environment_room[environment_id]`` (0: none); and none of the deliveries in
    ``recording`` (the caller still records their answer)."""
    room = room or {}
    environment_room = environment_room or {}
    return await db.fetch(
        "outgoing_claim",
        limit,
        lease_seconds,
        list(busy_hook_ids),
        per_hook,
        list(room),
        list(room.values()),
        list(recording),
        [e for e, free in environment_room.items() if free <= 0],
        per_environment,
        list(environment_room),
        list(environment_room.values()),
    )


async def release_deliveries(
    db: Database, claims: Sequence[tuple[uuid.UUID, int]], due_in: float = 0.0
) -> None:
    """Give claimed (delivery id, attempt) pairs back, their attempt not used up: due again at
    once, or ``due_in`` seconds from now."""
    if claims:
        await db.execute("outgoing_release", [c[0] for c in claims], [c[1] for c in claims], due_in)


async def seconds_until_due(
    db: Database,
    busy_hook_ids: Sequence[uuid.UUID],
    recording: Collection[uuid.UUID] = (),
    busy_environment_ids: Sequence[int] = (),
) -> float | None:
    """Seconds until the next delivery is due (<= 0: due now), or None when none is pending;
    the busy hooks' and environments' deliveries and the leases of the deliveries in
    ``recording`` do not count (see claim_deliveries)."""
    value = await db.fetchval(
        "outgoing_next_due", list(busy_hook_ids), list(recording), list(busy_environment_ids)
    )
    return None if value is None else float(value)


async def skip_delivery(db: Database, delivery_id: uuid.UUID, attempt: int, reason: str) -> None:
    """End a claimed delivery without sending it."""
    await db.execute("outgoing_delivery_skip", delivery_id, attempt, reason)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One sent (or refused) request, as recorded in ``hook_requests``."""

    request_id: uuid.UUID
    hook_id: uuid.UUID
    delivery_id: uuid.UUID
    run_id: uuid.UUID | None
    retry_of: uuid.UUID | None
    attempt: int
    sent_at: datetime
    method: str
    target_url: str
    headers: dict[str, str]  # already redacted
    body: bytes | None  # None when not kept (hooks.store_bodies)
    body_size: int
    outcome: str  # succeeded | failed | refused
    status_code: int  # 0 when no response came back
    message: str
    response_excerpt: str | None
    latency_ms: float


async def record_attempt(
    db: Database,
    attempt: Attempt,
    *,
    next_status: str,
    retry_in: float,
    final: bool,
    gone: bool = False,
    disables: Callable[[int], bool] = lambda _failures: False,
) -> tuple[bool, int | None, str | None]:
    """Record an attempt and the delivery's new state in one transaction.

    ``next_status`` is succeeded | failed | pending (retry in ``retry_in`` seconds). A finished
    delivery is counted against its hook, and the hook is disabled in the same transaction when
    the target answered 410 (``gone``) or ``disables(failures in a row)`` says so
    (RetryPolicy.should_disable): the count's row lock makes an owner's re-enabling (which
    resets the count) come wholly before or after, never between. Returns (whether this
    dispatcher still held the delivery, the hook's consecutive failure count when the delivery
    just finished, else None, the reason the hook was disabled now, else None).
    """
    async with db.transaction() as session:
        await session.execute(
            "outgoing_request_insert",
            attempt.request_id,
            attempt.hook_id,
            attempt.sent_at,
            attempt.headers,
            attempt.body,
            None if attempt.body is None else "identity",
            attempt.body_size,
            attempt.outcome,
            attempt.status_code,
            attempt.message,
            attempt.run_id,
            str(attempt.delivery_id),
            attempt.latency_ms,
            attempt.retry_of,
            attempt.target_url,
            attempt.response_excerpt,
            attempt.attempt,
            attempt.method,
        )
        held = await session.fetchval(
            "outgoing_delivery_finish",
            attempt.delivery_id,
            attempt.attempt,
            next_status,
            retry_in,
            attempt.status_code or None,
            None if attempt.outcome == "succeeded" else attempt.message,
        )
        if held is None or not final:
            return held is not None, None, None
        row = await session.fetchrow(
            "outgoing_hook_count_result", attempt.hook_id, attempt.outcome == "succeeded"
        )
        if row is None:  # the hook was deleted meanwhile
            return True, None, None
        failures = int(row["consecutive_failures"])
        reason = None
        if gone:
            reason = "disabled: the target answered 410 Gone"
        elif disables(failures):
            reason = f"disabled after {failures} consecutive failed deliveries"
        if reason is not None:
            if await session.fetchval("outgoing_hook_disable", attempt.hook_id, reason) is None:
                reason = None  # already inactive
    return True, failures, reason


# --- history and redelivery ---------------------------------------------------------------


async def list_attempts(
    db: Database, hook_id: uuid.UUID, outcome: str | None, limit: int, offset: int
) -> tuple[list[Record], int]:
    """A page of a hook's attempts (only those with ``outcome`` unless None), newest first,
    and their total."""
    return split_page(await db.fetch("outgoing_request_list", hook_id, outcome, limit, offset))


async def list_deliveries(
    db: Database, hook_id: uuid.UUID, status: str | None, limit: int, offset: int
) -> tuple[list[Record], int]:
    """A page of a hook's deliveries (only those in ``status`` unless None), newest first, and
    their total."""
    return split_page(await db.fetch("outgoing_delivery_list", hook_id, status, limit, offset))


async def delivery_by_id(db: Database, delivery_id: uuid.UUID) -> Record | None:
    """A delivery with its hook's pipeline and environment, or None once the hook is gone."""
    return await db.fetchrow("outgoing_delivery_by_id", delivery_id)


async def prune_deliveries(
    db: Database, cutoff: datetime, batch: int = PRUNE_BATCH, progress: Progress | None = None
) -> int:
    """Delete deliveries that finished before ``cutoff``, ``batch`` rows per statement
    (gateway.storage.retention; their attempts stay in the request history, pruned with their
    runs); return how many."""
    return await delete_in_batches(
        db, "outgoing_prune_finished", cutoff, "outgoing_deliveries", batch, progress
    )


async def redeliver(db: Database, delivery_id: uuid.UUID, retry_of: uuid.UUID) -> Record | None:
    """Queue a new delivery of the same event snapshot, ``retry_of`` the replayed attempt."""
    return await db.fetchrow("outgoing_redeliver", uuid.uuid4(), delivery_id, retry_of)
