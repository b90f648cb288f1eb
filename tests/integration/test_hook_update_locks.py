"""The row lock a hook's read-modify-write update (or rotation) holds is FOR NO KEY UPDATE, the
lock its own UPDATE takes: it serialises updates of the hook but lets rows that merely refer to
it be written meanwhile. FOR UPDATE (the lock of a delete) also stopped every run state change
of the pipeline that writes a delivery for an outgoing hook, ingest batches included, until
the update committed (the foreign key check's KEY SHARE lock waits for it)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.storage import hooks, outgoing
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_pipeline, make_seed_hook
from tests.integration.outgoing_helpers import create_hook, hook_body
from tests.integration.runs_helpers import enqueue

# Only a lock held by the update makes the other connection wait this long (it fails the test
# then); the write itself takes milliseconds.
LOCK_TIMEOUT = "5s"


async def _other_connection(database_dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_dsn)
    await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    return conn


async def test_a_delivery_is_written_while_its_outgoing_hook_is_locked_for_an_update(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body("https://example.com/n")
    )
    run = await enqueue(db, pipeline["id"])
    other = await _other_connection(database_dsn)
    try:
        async with db.transaction() as session:
            assert await outgoing.lock_hook(session, uuid.UUID(hook["id"])) is not None
            # What the outbox write of a state change does for this hook, meanwhile.
            await other.execute(
                "INSERT INTO outgoing_deliveries (hook_id, run_id, event, payload) "
                "VALUES ($1, $2, 'run.completed', '{}')",
                uuid.UUID(hook["id"]),
                run["id"],
            )
    finally:
        await other.close()


async def test_an_incoming_hook_locked_for_an_update_is_still_read(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    """The same lock for incoming hooks; a KEY SHARE reader (a future foreign key to them)
    is not held up."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    other = await _other_connection(database_dsn)
    try:
        async with db.transaction() as session:
            assert await hooks.lock_incoming_hook(session, uuid.UUID(hook["id"])) is not None
            found = await other.fetchval(
                "SELECT id FROM incoming_hooks WHERE id = $1 FOR KEY SHARE", uuid.UUID(hook["id"])
            )
            assert found == uuid.UUID(hook["id"])
    finally:
        await other.close()
