"""Pruning: only runs finished before the cutoff go, and request history left without a run."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.logs import configure_logging
from gateway.progress import ProgressLog
from gateway.storage import history, pipelines, runs
from gateway.storage.database import Database
from tests.integration.runs_helpers import enqueue, make_pipeline

OLD = datetime.now(UTC) - timedelta(days=40)


async def _age(db: Database, run_id: uuid.UUID, status: str, finished: datetime | None) -> None:
    await db.pool.execute(
        "UPDATE pipeline_runs SET status = $2, finished_at = $3, queued_at = $4 WHERE id = $1",
        run_id,
        status,
        finished,
        OLD,
    )


async def _request(db: Database, run_id: uuid.UUID | None, received: datetime) -> uuid.UUID:
    request_id = uuid.uuid4()
    await db.pool.execute(
        "INSERT INTO hook_requests (id, hook_id, received_at, outcome, status_code, run_id) "
        "VALUES ($1, $2, $3, 'accepted', 202, $4)",
        request_id,
        uuid.uuid4(),
        received,
        run_id,
    )
    return request_id


async def test_prune_removes_only_old_finished_runs_and_their_requests(db: Database) -> None:
    pipeline = await make_pipeline(db)
    old_finished = []
    for status in ("completed", "failed", "cancelled", "skipped", "completed"):
        run = await enqueue(db, pipeline["id"])
        await _age(db, run["id"], status, OLD)
        old_finished.append(run["id"])
    old_queued = await enqueue(db, pipeline["id"])
    await _age(db, old_queued["id"], "queued", None)
    old_running = await enqueue(db, pipeline["id"])
    await _age(db, old_running["id"], "in-progress", None)
    recent = await enqueue(db, pipeline["id"])
    await _age(db, recent["id"], "completed", datetime.now(UTC) - timedelta(days=1))
    gone = [await _request(db, run_id, OLD) for run_id in old_finished]
    gone.append(await _request(db, None, OLD))  # a rejected request: no run
    kept = [
        await _request(db, old_queued["id"], OLD),  # its run is still waiting
        await _request(db, recent["id"], OLD),  # its run finished after the cutoff
        await _request(db, None, datetime.now(UTC)),  # recent history
    ]

    removed = await runs.prune(db, datetime.now(UTC) - timedelta(days=30), batch=2)

    assert removed == {"pipeline_runs": 5, "hook_requests": 6}
    left_runs = {r["id"] for r in await db.pool.fetch("SELECT id FROM pipeline_runs")}
    assert left_runs == {old_queued["id"], old_running["id"], recent["id"]}
    left_requests = {r["id"] for r in await db.pool.fetch("SELECT id FROM hook_requests")}
    assert left_requests == set(kept)
    assert await runs.prune(db, datetime.now(UTC) - timedelta(days=30)) == {
        "pipeline_runs": 0,
        "hook_requests": 0,
    }


async def test_drop_bodies_clears_only_old_bodies_and_keeps_the_rows(db: Database) -> None:
    same_moment = datetime.now(UTC) - timedelta(days=10)
    old = [await _request(db, None, same_moment) for _ in range(3)]  # one timestamp: keyset ties
    old.append(await _request(db, None, same_moment - timedelta(hours=1)))
    new = await _request(db, None, datetime.now(UTC))
    no_body = await _request(db, None, same_moment)
    await db.pool.execute(
        "UPDATE hook_requests SET body = 'x', body_encoding = 'identity', body_size = 1"
        " WHERE id <> $1",
        no_body,
    )

    cleared = await history.drop_bodies(db, datetime.now(UTC) - timedelta(days=7), batch=2)

    assert cleared == 4
    rows = {
        r["id"]: (r["body"], r["body_encoding"], r["body_size"])
        for r in await db.pool.fetch("SELECT id, body, body_encoding, body_size FROM hook_requests")
    }
    assert {i: rows[i] for i in old} == dict.fromkeys(old, (None, None, 1))
    assert rows[new] == (b"x", "identity", 1)
    assert rows[no_body] == (None, None, 0)
    assert await history.drop_bodies(db, datetime.now(UTC) - timedelta(days=7), batch=2) == 0


async def test_a_run_written_for_a_deleted_pipeline_is_cancelled_not_queued_forever(
    db: Database,
) -> None:
    """A worker whose hook cache has not heard of the delete yet still writes runs: nothing
    could claim them, so the insert ends them at once, saying why."""
    pipeline = await make_pipeline(db)
    assert await pipelines.delete_pipeline(db, pipeline["id"])
    late = await enqueue(db, pipeline["id"], source_ref="main")
    assert late["status"] == "cancelled" and late["finished_at"] is not None
    assert late["message"] == "cancelled: the pipeline was deleted"


async def test_prune_cancels_unfinished_runs_whose_pipeline_is_gone(db: Database) -> None:
    """A batch in flight while its pipeline was deleted: the trigger saw the pipeline, the
    delete did not see the run. The next prune ends it (and leaves other runs alone)."""
    gone, kept = await make_pipeline(db), await make_pipeline(db)
    orphan = await enqueue(db, gone["id"], source_ref="main")
    alive = await enqueue(db, kept["id"], source_ref="main")
    await db.pool.execute("DELETE FROM pipelines WHERE id = $1", gone["id"])  # as if unseen

    assert await runs.cancel_orphaned(db) == 1
    rows = {
        r["id"]: r
        for r in await db.pool.fetch(
            "SELECT id, status, message FROM pipeline_runs WHERE id = ANY($1)",
            [orphan["id"], alive["id"]],
        )
    }
    assert rows[orphan["id"]]["status"] == "cancelled"
    assert rows[orphan["id"]]["message"] == "cancelled: the pipeline was deleted"
    assert rows[alive["id"]]["status"] == "queued"
    assert await runs.cancel_orphaned(db) == 0


async def test_prune_reports_progress_after_each_batch(
    db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    # A prune of millions of rows said nothing until it ended: minutes that look like a hang.
    pipeline = await make_pipeline(db)
    for _ in range(5):
        run = await enqueue(db, pipeline["id"])
        await _age(db, run["id"], "completed", OLD)
        await _request(db, run["id"], OLD)
    configure_logging("info", "json")
    capsys.readouterr()
    progress = ProgressLog("prune_progress", interval=0)
    removed = await runs.prune(
        db, datetime.now(UTC) - timedelta(days=30), batch=2, progress=progress
    )
    assert removed == {"pipeline_runs": 5, "hook_requests": 5}
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    seen = [(e["table"], e["rows"]) for e in lines if e["event"] == "prune_progress"]
    assert seen == [(t, n) for t in ("pipeline_runs", "hook_requests") for n in (2, 4, 5)]
    assert all("elapsed" in e for e in lines if e["event"] == "prune_progress")
