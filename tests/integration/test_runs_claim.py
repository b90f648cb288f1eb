"""Claiming runs: leases, attempts, expiry, release, races between claimers, notifications."""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import orjson
import pytest

from gateway.config import Config
from gateway.exceptions import Conflict
from gateway.logs import configure_logging
from gateway.storage import runs
from gateway.storage.database import Database
from tests.integration.runs_helpers import claim, enqueue, expire_lease, make_pipeline, run_row


async def test_claim_marks_oldest_runs_in_progress_with_a_lease(db: Database) -> None:
    pipeline = await make_pipeline(db)
    first = await enqueue(db, pipeline["id"], n=1)
    second = await enqueue(db, pipeline["id"], n=2)
    third = await enqueue(db, pipeline["id"], n=3)

    claimed = await claim(db, pipeline["id"], limit=2)

    assert [r["id"] for r in claimed] == [first["id"], second["id"]]
    for row in claimed:
        assert row["status"] == "in-progress"
        assert row["attempt"] == 1
        assert isinstance(row["lease_token"], uuid.UUID)
        assert row["lease_expires_at"] > row["started_at"]
        assert row["claimed_by"] == "test"
    assert claimed[0]["lease_token"] != claimed[1]["lease_token"]
    assert (await run_row(db, third["id"]))["status"] == "queued"
    assert [r["id"] for r in await claim(db, pipeline["id"])] == [third["id"]]
    assert await claim(db, pipeline["id"]) == []


async def test_claim_is_scoped_to_the_pipeline_or_environments(db: Database) -> None:
    one = await make_pipeline(db)
    other = await make_pipeline(db)
    mine = await enqueue(db, one["id"])
    theirs = await enqueue(db, other["id"])

    assert [r["id"] for r in await claim(db, one["id"])] == [mine["id"]]
    assert await claim(db, None, environment_ids=[one["environment_id"]]) == []
    assert await claim(db, None, environment_ids=[]) == []
    assert [r["id"] for r in await claim(db, None)] == [theirs["id"]]


async def test_two_claimers_racing_on_1000_runs_claim_each_exactly_once(
    db: Database, config: Config
) -> None:
    pipeline = await make_pipeline(db)
    async with db.transaction() as session:
        queued = await runs.enqueue_many(session, pipeline["id"], [{"n": i} for i in range(1000)])
    assert queued == 1000
    claims: collections.Counter[uuid.UUID] = collections.Counter()
    per_claimer: collections.Counter[str] = collections.Counter()

    async def claimer(database: Database, name: str) -> None:
        while True:
            got = await runs.claim(
                database, pipeline_id=pipeline["id"], limit=7, lease_seconds=60, claimed_by=name
            )
            if not got:
                return
            for row in got:
                claims[row["id"]] += 1
            per_claimer[name] += len(got)
            await asyncio.sleep(0)  # let the other claimers interleave

    # Two separate pools (as two executor processes would have), two claim loops each.
    other = await Database.connect(config.database.dsn, config.database)
    try:
        await asyncio.gather(
            claimer(db, "a1"), claimer(db, "a2"), claimer(other, "b1"), claimer(other, "b2")
        )
    finally:
        await other.close()

    assert len(claims) == 1000
    assert set(claims.values()) == {1}
    assert sum(per_claimer.values()) == 1000
    counts = await db.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'in-progress') AS running, "
        "count(DISTINCT lease_token) AS tokens, max(attempt) AS attempts FROM pipeline_runs"
    )
    assert dict(counts) == {"running": 1000, "tokens": 1000, "attempts": 1}


async def test_expired_lease_is_claimed_again_with_the_next_attempt(db: Database) -> None:
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    [first] = await claim(db, pipeline["id"])
    assert await claim(db, pipeline["id"]) == []  # the live lease keeps it

    await expire_lease(db, run["id"])
    [second] = await claim(db, pipeline["id"])

    assert second["id"] == run["id"]
    assert second["attempt"] == 2
    assert second["lease_token"] != first["lease_token"]
    with pytest.raises(Conflict, match="lease token does not match"):
        await runs.heartbeat(db, run["id"], first["lease_token"], 60)
    with pytest.raises(Conflict, match="lease token does not match"):
        await runs.report_status(db, run["id"], first["lease_token"], "completed")
    done = await runs.report_status(db, run["id"], second["lease_token"], "completed")
    assert done["status"] == "completed"
    assert done["attempt"] == 2


async def test_lease_expiring_at_max_attempts_fails_the_run(db: Database) -> None:
    pipeline = await make_pipeline(db, max_attempts=2)
    run = await enqueue(db, pipeline["id"])
    for attempt in (1, 2):
        [claimed] = await claim(db, pipeline["id"])
        assert claimed["attempt"] == attempt
        await expire_lease(db, run["id"])

    assert await claim(db, pipeline["id"]) == []
    row = await run_row(db, run["id"])
    assert row["status"] == "failed"
    assert row["message"] == "lease expired after 2 attempts"
    assert row["finished_at"] is not None


async def test_each_expired_lease_is_logged_once_with_who_lost_it(
    db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    # An executor that dies leaves no other trace on this side: the sweep changed the run
    # silently, and only its next attempt (or a run failed for good) told anyone.
    configure_logging("info", "json")
    pipeline = await make_pipeline(db, max_attempts=2)
    run = await enqueue(db, pipeline["id"])
    capsys.readouterr()
    for attempt in (1, 2):
        [claimed] = await runs.claim(
            db, pipeline_id=pipeline["id"], limit=1, lease_seconds=30, claimed_by=f"exec-{attempt}"
        )
        assert claimed["attempt"] == attempt
        await expire_lease(db, run["id"])
    assert await claim(db, pipeline["id"]) == []
    assert await claim(db, pipeline["id"]) == []  # nothing left to sweep: no line
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    expired = [line for line in lines if line["event"] == "run_lease_expired"]
    assert [(e["attempt"], e["status"], e["lost_by"], e["swept_by"]) for e in expired] == [
        (1, "queued", "exec-1", "exec-2"),
        (2, "failed", "exec-2", "test"),
    ]
    assert all(e["level"] == "warning" and e["run_id"] == str(run["id"]) for e in expired)
    assert all(e["pipeline_id"] == pipeline["id"] for e in expired)


async def test_a_late_report_after_the_sweep_failed_the_run_is_refused(db: Database) -> None:
    # The sweep kept the lease token on the run it failed, so a late "failed" report (without
    # exit_code, as HTTP executors may send it) passed for a repeat of a recorded outcome: 200.
    pipeline = await make_pipeline(db, max_attempts=1)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await claim(db, pipeline["id"])
    await expire_lease(db, run["id"])
    assert await claim(db, pipeline["id"]) == []  # the sweep fails it: no attempt left

    for status in ("failed", "completed"):
        with pytest.raises(Conflict):
            await runs.report_status(db, run["id"], claimed["lease_token"], status)
    row = await run_row(db, run["id"])
    assert (row["status"], row["message"]) == ("failed", "lease expired after 1 attempt")


async def test_a_run_requeued_and_claimed_again_in_one_claim_is_announced_as_each_was(
    db: Database,
) -> None:
    """The outbox snapshots were all taken at the end of the claim's transaction: the
    run.queued of the lease expiry showed attempt 2, the new started_at and no message."""
    pipeline = await make_pipeline(db, max_attempts=3)
    hook_id = uuid.uuid4()
    await db.pool.execute(
        "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events) "
        "VALUES ($1, $2, 'all', 'http://127.0.0.1:9/x', ARRAY['run.status_changed'])",
        hook_id,
        pipeline["id"],
    )
    run = await enqueue(db, pipeline["id"])
    [first] = await claim(db, pipeline["id"])
    await expire_lease(db, run["id"])
    [second] = await claim(db, pipeline["id"])  # the sweep requeues it, the claim takes it
    rows = await db.pool.fetch(
        "SELECT event, payload->'run' AS run FROM outgoing_deliveries "
        "WHERE hook_id = $1 AND run_id = $2",
        hook_id,
        run["id"],
    )
    snapshots = [orjson.loads(r["run"]) if isinstance(r["run"], str) else r["run"] for r in rows]
    [requeued] = [
        s
        for s in snapshots
        if (s["previous_status"], s["status"])
        == (
            "in-progress",
            "queued",
        )
    ]
    assert (requeued["attempt"], requeued["message"]) == (
        1,
        "lease expired on attempt 1; queued again",
    )
    started = [s for s in snapshots if s["status"] == "in-progress"]
    assert sorted(s["attempt"] for s in started) == [1, 2]
    assert first["attempt"] == 1 and second["attempt"] == 2


async def test_expired_lease_is_refused_before_it_is_reclaimed(db: Database) -> None:
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await claim(db, pipeline["id"])
    await expire_lease(db, run["id"])

    with pytest.raises(Conflict, match="lease expired at"):
        await runs.heartbeat(db, run["id"], claimed["lease_token"], 60)
    with pytest.raises(Conflict, match="lease expired at"):
        await runs.report_status(db, run["id"], claimed["lease_token"], "completed")


async def test_heartbeat_extends_the_lease(db: Database) -> None:
    pipeline = await make_pipeline(db)
    await enqueue(db, pipeline["id"])
    [claimed] = await claim(db, pipeline["id"])

    expires = await runs.heartbeat(db, claimed["id"], claimed["lease_token"], 3600)

    assert expires > claimed["lease_expires_at"]
    assert (await run_row(db, claimed["id"]))["lease_expires_at"] == expires


async def test_release_requeues_without_using_up_the_attempt(db: Database) -> None:
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await claim(db, pipeline["id"])

    released = await runs.release(db, run["id"], claimed["lease_token"], "executor stopping")

    assert released["status"] == "queued"
    assert released["attempt"] == 0
    assert released["lease_token"] is None
    assert released["message"] == "executor stopping"
    [again] = await claim(db, pipeline["id"])
    assert again["attempt"] == 1
    with pytest.raises(Conflict, match="lease token does not match"):
        await runs.heartbeat(db, run["id"], claimed["lease_token"], 60)


async def test_every_state_change_is_notified(db: Database) -> None:
    pipeline = await make_pipeline(db)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        received.put_nowait(orjson.loads(payload))

    listener = await db.listen("hookgate_run_changed", on_notify)
    try:
        run = await enqueue(db, pipeline["id"])
        [claimed] = await claim(db, pipeline["id"])
        await runs.heartbeat(db, run["id"], claimed["lease_token"], 60)  # not a state change
        await runs.report_status(db, run["id"], claimed["lease_token"], "failed", exit_code=3)
        seen = [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
    finally:
        await listener.close()

    expected = {"run_id": str(run["id"]), "pipeline_id": pipeline["id"]}
    assert seen == [
        {**expected, "status": "queued"},
        {**expected, "status": "in-progress"},
        {**expected, "status": "failed"},
    ]
    assert received.empty()


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads pipeline_runs."""
    found = [plan] if plan.get("Relation Name") == "pipeline_runs" else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_the_pending_runs_indexes_hold_only_queued_runs(db: Database) -> None:
    # schema.sql: "only queued rows are indexed for claiming" (both pending indexes are partial).
    rows = await db.pool.fetch(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = current_schema() AND tablename = 'pipeline_runs'"
    )
    definitions = {row["indexname"]: row["indexdef"] for row in rows}
    assert definitions["pipeline_runs_pending_pipeline_idx"] == (
        "CREATE INDEX pipeline_runs_pending_pipeline_idx ON public.pipeline_runs "
        "USING btree (pipeline_id, queued_at) WHERE (status = 'queued'::text)"
    )
    assert definitions["pipeline_runs_pending_idx"] == (
        "CREATE INDEX pipeline_runs_pending_idx ON public.pipeline_runs "
        "USING btree (queued_at) WHERE (status = 'queued'::text)"
    )
    predicates = dict(
        await db.pool.fetch(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname IN ('pipeline_runs_pending_pipeline_idx', 'pipeline_runs_pending_idx')"
        )
    )
    assert predicates == {
        "pipeline_runs_pending_pipeline_idx": "(status = 'queued'::text)",
        "pipeline_runs_pending_idx": "(status = 'queued'::text)",
    }

    # With mostly finished runs, the claim's lookup (queued runs of one pipeline, oldest first)
    # is answered from a pending index, whose predicate makes a status filter unnecessary.
    pipelines = [await make_pipeline(db), await make_pipeline(db)]
    for pipeline in pipelines:
        async with db.transaction() as session:
            await runs.enqueue_many(session, pipeline["id"], [{"n": i} for i in range(2000)])
    await db.pool.execute(
        "UPDATE pipeline_runs SET status = 'completed', finished_at = now() "
        "WHERE (variables->>'n')::int >= 5"
    )
    await db.pool.execute("ANALYZE pipeline_runs")
    plan = orjson.loads(
        await db.pool.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM pipeline_runs "
            "WHERE status = 'queued' AND pipeline_id = $1 ORDER BY queued_at, id LIMIT 10",
            pipelines[0]["id"],
        )
    )
    [scan] = _scans(plan[0]["Plan"])
    assert scan["Node Type"] in ("Index Scan", "Bitmap Heap Scan", "Index Only Scan"), scan
    used = scan.get("Index Name") or "".join(
        child.get("Index Name", "") for child in scan.get("Plans", [])
    )
    assert used in ("pipeline_runs_pending_pipeline_idx", "pipeline_runs_pending_idx"), plan
    assert "status" not in scan.get("Filter", "") + scan.get("Recheck Cond", ""), scan
