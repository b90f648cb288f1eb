"""Storage-level choices made for ingest throughput (issue 7): notifications per pipeline and
statement, history bodies kept inline."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from gateway.storage import runs
from gateway.storage.database import Database
from tests.integration.ingest_helpers import execute, fetch
from tests.integration.runs_helpers import make_pipeline


async def test_a_multi_row_insert_notifies_once_per_pipeline_and_status(db: Database) -> None:
    first, second = await make_pipeline(db), await make_pipeline(db)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        received.put_nowait(orjson.loads(payload))

    listener = await db.listen("hookgate_run_changed", on_notify)
    try:
        async with db.transaction() as session:
            await runs.enqueue_many(session, first["id"], [{"n": i} for i in range(5)])
        async with db.transaction() as session:
            await runs.enqueue_many(session, second["id"], [{"n": 1}])
        seen = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
        await asyncio.sleep(0.2)  # anything else would have arrived by now
    finally:
        await listener.close()

    assert seen[0] == {"pipeline_id": first["id"], "status": "queued", "runs": 5}
    [only] = await fetch(
        db.dsn, "SELECT id FROM pipeline_runs WHERE pipeline_id = $1", second["id"]
    )
    # One run: it is named, exactly as a status change is.
    assert seen[1] == {"run_id": str(only["id"]), "pipeline_id": second["id"], "status": "queued"}
    assert received.empty()


async def test_compressed_history_bodies_stay_inline(db: Database) -> None:
    # 3 KB of incompressible bytes: the size of a zstd-compressed 28 KB GitHub payload.
    await execute(
        db.dsn,
        "INSERT INTO hook_requests (id, hook_id, outcome, status_code, body, body_encoding)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), 'accepted', 202, $1, 'zstd')",
        os.urandom(3000),
    )
    [row] = await fetch(
        db.dsn,
        "SELECT pg_relation_size(reltoastrelid) AS toasted FROM pg_class"
        " WHERE oid = 'hook_requests'::regclass",
    )
    assert row["toasted"] == 0
