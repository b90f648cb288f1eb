"""Incoming hook definitions in the database (management side; ingest keeps its own cache).

Reads used by the API never select the secrets: only creation and rotation return one, once.
Every change fires the ``hookgate_hook_changed`` trigger, so ingest caches drop their copy.
Secrets are sealed on write with the database's :class:`~gateway.security.secret_box.SecretBox`
(encrypted at rest); rows come back with the stored, sealed values: the API shows the plaintext
it generated, and :meth:`gateway.ingest.evaluation.CompiledHook.from_row` opens them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from gateway.storage.database import Database, Record

# Columns a create or update may set, in the order of the insert/update statements.
HOOK_FIELDS = (
    "name",
    "active",
    "action_type",
    "requires_secret",
    "secret_algorithm",
    "secret_header_name",
    "trigger_when",
    "settings",
)


async def insert_incoming_hook(
    db: Database,
    hook_id: uuid.UUID,
    pipeline_id: int,
    values: Mapping[str, Any],
    secret: str,
    created_by: int | None,
) -> Record:
    """Create a hook from validated ``values`` (every HOOK_FIELDS key) and its plaintext
    ``secret`` (stored sealed); the row carries the sealed secret."""
    row = await db.fetchrow(
        "incoming_hook_insert",
        hook_id,
        pipeline_id,
        values["name"],
        values["active"],
        values["action_type"],
        values["requires_secret"],
        values["secret_algorithm"],
        values["secret_header_name"],
        db.secret_box.seal(secret),
        values["trigger_when"],
        values["settings"],
        created_by,
    )
    assert row is not None  # the pipeline was checked just before; a race gives NotFound (FK)
    return row


async def incoming_hook_by_id(db: Database, hook_id: uuid.UUID) -> Record | None:
    """The hook (no secrets) with its environment_id, or None."""
    return await db.fetchrow("incoming_hook_by_id", hook_id)


async def incoming_hook_with_secrets(db: Database, hook_id: uuid.UUID) -> Record | None:
    """The full hook row including its secrets as stored (sealed), with its environment_id,
    or None."""
    return await db.fetchrow("incoming_hook_full_by_id", hook_id)


async def incoming_hooks_for_pipeline(db: Database, pipeline_id: int) -> list[Record]:
    """Every incoming hook of a pipeline (no secrets), oldest first."""
    return await db.fetch("incoming_hook_list_for_pipeline", pipeline_id)


async def update_incoming_hook(
    db: Database, hook_id: uuid.UUID, changes: Mapping[str, Any]
) -> Record | None:
    """Apply validated ``changes`` (a subset of HOOK_FIELDS; ``settings`` keys are merged into
    the stored settings); None when the hook is gone."""
    return await db.fetchrow(
        "incoming_hook_update", hook_id, *(changes.get(name) for name in HOOK_FIELDS)
    )


async def rotate_incoming_secret(
    db: Database, hook_id: uuid.UUID, secret: str, grace_seconds: int
) -> Record | None:
    """Install a new secret; the old one keeps working ``grace_seconds`` (0: stops at once).

    A secret still in its grace period from an earlier rotation stops working now: a hook
    verifies against at most two secrets. Returns the row (secrets sealed), or None.
    """
    sealed = db.secret_box.seal(secret)
    return await db.fetchrow("incoming_hook_rotate_secret", hook_id, sealed, grace_seconds)


async def delete_incoming_hook(db: Database, hook_id: uuid.UUID) -> bool:
    """Delete a hook; False when it did not exist."""
    return await db.fetchval("incoming_hook_delete", hook_id) is not None
