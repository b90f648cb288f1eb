"""Per-key concurrency: queue, skip-if-running, cancel-in-progress (two runs of one key)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from gateway.config import Config
from gateway.exceptions import Conflict
from gateway.storage import pipelines, runs
from gateway.storage.database import Database, Session, _init_connection
from gateway.storage.queries import QUERIES
from tests.integration.ingest_helpers import (
    create_hook,
    new_pipeline,
    wait_until_blocked,
)
from tests.integration.runs_helpers import claim, enqueue, make_pipeline, run_row


async def test_queue_runs_one_run_per_key_at_a_time_in_order(db: Database) -> None:
    pipeline = await make_pipeline(db, policy="queue", key="source_ref")
    first = await enqueue(db, pipeline["id"], source_ref="main")
    second = await enqueue(db, pipeline["id"], source_ref="main")
    other = await enqueue(db, pipeline["id"], source_ref="feature")
    unkeyed = await enqueue(db, pipeline["id"], commit="abc")  # no key: never limited

    claimed = await claim(db, pipeline["id"], limit=10)

    assert {r["id"] for r in claimed} == {first["id"], other["id"], unkeyed["id"]}
    assert (await run_row(db, second["id"]))["status"] == "queued"
    assert await claim(db, pipeline["id"]) == []  # main is still running

    [running] = [r for r in claimed if r["id"] == first["id"]]
    await runs.report_status(db, first["id"], running["lease_token"], "completed")
    [after] = await claim(db, pipeline["id"])
    assert after["id"] == second["id"]


async def test_queue_policy_holds_under_racing_claimers(db: Database, config: Config) -> None:
    pipeline = await make_pipeline(db, policy="queue", key="source_ref")
    refs = ["main", "dev", "release", "docs"]
    async with db.transaction() as session:
        await runs.enqueue_many(
            session, pipeline["id"], [{"source_ref": refs[i % len(refs)]} for i in range(120)]
        )
    violations: list[list[tuple[str, int]]] = []
    done: list[str] = []

    async def executor(database: Database) -> None:
        while True:
            got = await runs.claim(
                database, pipeline_id=pipeline["id"], limit=2, lease_seconds=60, claimed_by="x"
            )
            if not got:
                queued = await database.pool.fetchval(
                    "SELECT count(*) FROM pipeline_runs WHERE status = 'queued'"
                )
                if queued == 0:
                    return
                await asyncio.sleep(0.005)
                continue
            # While other claimers run, no key may have two runs in progress.
            doubled = await database.pool.fetch(
                "SELECT concurrency_key_value, count(*) FROM pipeline_runs "
                "WHERE status = 'in-progress' GROUP BY 1 HAVING count(*) > 1"
            )
            if doubled:
                violations.append([(r[0], r[1]) for r in doubled])
            await asyncio.sleep(random.random() * 0.003)
            for row in got:
                await runs.report_status(database, row["id"], row["lease_token"], "completed")
                done.append(row["concurrency_key_value"])

    other = await Database.connect(config.database.dsn, config.database)
    try:
        await asyncio.wait_for(
            asyncio.gather(executor(db), executor(db), executor(other), executor(other)), 120
        )
    finally:
        await other.close()

    assert violations == []
    assert len(done) == 120
    assert sorted(set(done)) == sorted(refs)


async def test_skip_if_running_skips_a_run_enqueued_while_its_key_runs(db: Database) -> None:
    pipeline = await make_pipeline(db, policy="skip-if-running", key="source_ref")
    first = await enqueue(db, pipeline["id"], source_ref="main")
    [running] = await claim(db, pipeline["id"])

    second = await enqueue(db, pipeline["id"], source_ref="main")
    other = await enqueue(db, pipeline["id"], source_ref="feature")

    assert second["status"] == "skipped"
    assert (
        second["message"] == f"skipped: run {first['id']} with the same source_ref is in progress"
    )
    assert second["finished_at"] is not None
    assert other["status"] == "queued"
    assert [r["id"] for r in await claim(db, pipeline["id"])] == [other["id"]]
    await runs.report_status(db, first["id"], running["lease_token"], "completed")
    third = await enqueue(db, pipeline["id"], source_ref="main")
    assert third["status"] == "queued"  # nothing of main runs any more


async def test_skip_if_running_skips_the_later_of_two_queued_runs_at_claim(db: Database) -> None:
    pipeline = await make_pipeline(db, policy="skip-if-running", key="source_ref")
    first = await enqueue(db, pipeline["id"], source_ref="main")
    second = await enqueue(db, pipeline["id"], source_ref="main")  # nothing runs yet: queued
    assert second["status"] == "queued"

    claimed = await claim(db, pipeline["id"], limit=10)

    assert [r["id"] for r in claimed] == [first["id"]]
    row = await run_row(db, second["id"])
    assert row["status"] == "skipped"
    assert str(first["id"]) in row["message"]


async def test_cancel_in_progress_cancels_the_older_run_of_the_key(db: Database) -> None:
    pipeline = await make_pipeline(db, policy="cancel-in-progress", key="source_ref")
    first = await enqueue(db, pipeline["id"], source_ref="main")
    [running] = await claim(db, pipeline["id"])
    other = await enqueue(db, pipeline["id"], source_ref="feature")
    [other_running] = await claim(db, pipeline["id"])
    assert other_running["id"] == other["id"]

    newer = await enqueue(db, pipeline["id"], source_ref="main")

    # The executor holding the older run learns it on its next heartbeat.
    with pytest.raises(
        Conflict, match=f"cancelled, no longer in progress: superseded by run {newer['id']}"
    ):
        await runs.heartbeat(db, first["id"], running["lease_token"], 60)
    row = await run_row(db, first["id"])
    assert row["status"] == "cancelled"
    assert row["finished_at"] is not None
    with pytest.raises(Conflict, match="cannot move run from cancelled to completed"):
        await runs.report_status(db, first["id"], running["lease_token"], "completed")
    [claimed] = await claim(db, pipeline["id"])
    assert claimed["id"] == newer["id"]
    # A different key is untouched.
    await runs.heartbeat(db, other["id"], other_running["lease_token"], 60)
    assert (await run_row(db, other["id"]))["status"] == "in-progress"


async def test_cancel_in_progress_claim_starts_the_newest_and_cancels_older(db: Database) -> None:
    pipeline = await make_pipeline(db, policy="cancel-in-progress", key="source_ref")
    old_running = await enqueue(db, pipeline["id"], source_ref="main")
    [lease] = await claim(db, pipeline["id"])
    old_queued = await enqueue(db, pipeline["id"], source_ref="main")
    newest = await enqueue(db, pipeline["id"], source_ref="main")

    claimed = await claim(db, pipeline["id"], limit=10)

    assert [r["id"] for r in claimed] == [newest["id"]]
    for run in (old_running, old_queued):
        row = await run_row(db, run["id"])
        assert row["status"] == "cancelled"
        assert row["message"] == f"superseded by run {newest['id']}"
    with pytest.raises(Conflict, match="cancelled"):
        await runs.heartbeat(db, old_running["id"], lease["lease_token"], 60)


async def test_changing_the_key_rekeys_queued_runs(db: Database) -> None:
    pipeline = await make_pipeline(db)  # no key: no limit
    first = await enqueue(db, pipeline["id"], source_ref="main")
    second = await enqueue(db, pipeline["id"], source_ref="main")
    assert first["concurrency_key_value"] is None

    updated = await runs.set_concurrency(db, pipeline["id"], "queue", "source_ref", 5)

    assert updated["rekeyed"] == 2
    assert (await run_row(db, second["id"]))["concurrency_key_value"] == "main"
    assert [r["id"] for r in await claim(db, pipeline["id"], limit=10)] == [first["id"]]


async def test_a_key_value_too_long_for_an_index_is_keyed_by_its_digest(db: Database) -> None:
    # 6,000 incompressible characters: stored as-is it exceeded the B-tree entry limit and
    # failed the insert (an ingest 500 on every retry); its SHA-256 keys it exactly instead.
    pipeline = await make_pipeline(db, policy="skip-if-running", key="source_ref")
    long_ref, other_ref = secrets.token_hex(3000), secrets.token_hex(3000)
    first = await enqueue(db, pipeline["id"], source_ref=long_ref)
    digest = "sha256:" + hashlib.sha256(long_ref.encode()).hexdigest()
    assert first["concurrency_key_value"] == digest
    await claim(db, pipeline["id"])
    assert (await enqueue(db, pipeline["id"], source_ref=long_ref))["status"] == "skipped"
    assert (await enqueue(db, pipeline["id"], source_ref=other_ref))["status"] == "queued"
    # 256 bytes and under are kept as they are; re-keying uses the same rule.
    short = await enqueue(db, pipeline["id"], source_ref="r" * 256)
    assert short["concurrency_key_value"] == "r" * 256
    await runs.set_concurrency(db, pipeline["id"], "queue", "source_ref", 3)
    assert (await run_row(db, first["id"]))["concurrency_key_value"] == digest


async def _insert_in_flight(conn: asyncpg.Connection, pipeline_id: int) -> uuid.UUID:
    """Insert a run inside ``conn``'s open transaction (an ingest batch not yet committed)."""
    run_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO pipeline_runs (id, pipeline_id, variables) VALUES ($1, $2, $3)",
        run_id,
        pipeline_id,
        {"branch": "main"},
    )
    return run_id


async def test_a_run_inserted_while_the_settings_change_is_keyed_by_the_new_settings(
    db: Database, config: Config
) -> None:
    """The insert trigger holds the pipeline row FOR SHARE: turning on "one deploy per branch"
    waits for the batch in flight, then re-keys its run too; before, that run kept no key and
    was claimed beside the next run of the same branch."""
    pipeline = await make_pipeline(db, policy="queue", key=None)
    conn = await asyncpg.connect(config.database.dsn)
    await _init_connection(conn)
    try:
        async with conn.transaction():
            in_flight = await _insert_in_flight(conn, pipeline["id"])
            change = asyncio.create_task(
                runs.set_concurrency(db, pipeline["id"], "queue", "branch", 3)
            )
            await wait_until_blocked(db, task=change)  # waiting for the batch in flight
        changed = await asyncio.wait_for(change, 10)
    finally:
        await conn.close()
    assert changed["rekeyed"] == 1
    later = await enqueue(db, pipeline["id"], branch="main")
    keys = await db.pool.fetch("SELECT id, concurrency_key_value FROM pipeline_runs")
    assert {r["id"]: r["concurrency_key_value"] for r in keys} == {
        in_flight: "main",
        later["id"]: "main",
    }
    assert len(await claim(db, pipeline["id"])) == 1  # one deploy of main at a time


async def test_a_run_inserted_while_its_pipeline_is_deleted_is_cancelled_with_it(
    db: Database, config: Config
) -> None:
    pipeline = await make_pipeline(db)
    conn = await asyncpg.connect(config.database.dsn)
    await _init_connection(conn)
    try:
        async with conn.transaction():
            in_flight = await _insert_in_flight(conn, pipeline["id"])
            delete = asyncio.create_task(pipelines.delete_pipeline(db, pipeline["id"]))
            await wait_until_blocked(db, task=delete)  # waiting for the batch in flight
        assert await asyncio.wait_for(delete, 10)
    finally:
        await conn.close()
    row = await run_row(db, in_flight)
    assert (row["status"], row["message"]) == ("cancelled", "cancelled: the pipeline was deleted")


async def test_deleting_a_pipeline_while_a_run_reports_does_not_deadlock(db: Database) -> None:
    """A status change locks its run, then share-locks the outgoing hook (the outbox row's
    foreign key); the delete locked the hook first (cascade), then waited for the run. The
    server aborted one of them: a 500 for the administrator or a lost report."""
    pipeline = await make_pipeline(db)
    await db.pool.execute(
        "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events) "
        "VALUES ($1, $2, 'notify', 'http://127.0.0.1:9/x', ARRAY['run.completed'])",
        uuid.uuid4(),
        pipeline["id"],
    )
    run = await enqueue(db, pipeline["id"])
    [held] = await claim(db, pipeline["id"])
    run_locked = asyncio.Event()
    deleting: asyncio.Task[bool] | None = None

    async def report() -> None:
        async with db.transaction() as session:
            await session.fetchrow("runs_lock_one", run["id"])  # runs.transition's first step
            run_locked.set()
            await wait_until_blocked(db)  # the delete waits for this run
            assert deleting is not None and not deleting.done()
            await runs.transition(session, run["id"], held["lease_token"], "completed")

    reporting = asyncio.create_task(report())
    await run_locked.wait()
    deleting = asyncio.create_task(pipelines.delete_pipeline(db, pipeline["id"]))
    await asyncio.wait_for(reporting, 10)
    assert await asyncio.wait_for(deleting, 10) is True
    row = await run_row(db, run["id"])
    assert row["status"] == "completed"  # the report came first and stands


async def test_a_run_keyed_alike_by_both_keys_waits_for_the_rekey_to_commit(db: Database) -> None:
    """The re-key writes only the runs whose value changes, but locks them all: a queued run
    whose value stays ("main" by repo and by branch) was otherwise claimable by the values the
    others still had, and started beside the running one that the new key puts on its branch."""
    pipeline = await make_pipeline(db, policy="queue", key="repo")
    running = await enqueue(db, pipeline["id"], repo="x", branch="main")
    [claimed] = await claim(db, pipeline["id"], limit=1)
    assert claimed["id"] == running["id"]
    waiting = await enqueue(db, pipeline["id"], repo="main", branch="main")
    first = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    async with db.pool.acquire() as other:
        async with other.transaction():
            # runs.set_concurrency to key "branch", statement by statement
            await other.execute(QUERIES["runs_rekey_lock"], pipeline["id"])
            done = await other.fetchrow(
                QUERIES["runs_rekey_chunk"], pipeline["id"], "branch", *first, 100
            )
            assert (done["read"], done["changed"]) == (1, 0)  # the queued run, locked
            running_ = await other.fetchrow(
                QUERIES["runs_rekey_in_progress"], pipeline["id"], "branch"
            )
            assert (running_["read"], running_["changed"]) == (1, 1)  # the running one
            assert await claim(db, pipeline["id"]) == []  # not by the old values
            await other.fetchrow(
                QUERIES["runs_set_concurrency"], pipeline["id"], "queue", "branch", 3
            )
            await other.fetchval(QUERIES["runs_rekey_inserted_meanwhile"], pipeline["id"])
    assert await claim(db, pipeline["id"]) == []  # main is running
    assert (await run_row(db, waiting["id"]))["status"] == "queued"


async def test_a_running_runs_heartbeat_does_not_wait_for_the_rekey_of_the_backlog(
    db: Database,
) -> None:
    """The chunks lock only queued runs: an in-progress run locked from the first chunk on
    would have its heartbeats and status reports wait for the whole change (up to a minute on
    a large backlog), and its executor could lose the lease and kill the command."""
    pipeline = await make_pipeline(db, policy="queue", key="repo")
    running = await enqueue(db, pipeline["id"], repo="x", branch="main")
    [claimed] = await claim(db, pipeline["id"], limit=1)
    assert claimed["id"] == running["id"]
    await enqueue(db, pipeline["id"], repo="y", branch="dev")
    first = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    async with db.pool.acquire() as other:
        async with other.transaction():
            await other.execute(QUERIES["runs_rekey_lock"], pipeline["id"])
            await other.fetchrow(QUERIES["runs_rekey_chunk"], pipeline["id"], "branch", *first, 100)
            # Mid-change: the executor's heartbeat goes through at once.
            beat = await asyncio.wait_for(
                runs.heartbeat(db, claimed["id"], claimed["lease_token"], 60), 2
            )
            assert beat is not None
            await other.fetchrow(QUERIES["runs_rekey_in_progress"], pipeline["id"], "branch")
            await other.fetchrow(
                QUERIES["runs_set_concurrency"], pipeline["id"], "queue", "branch", 3
            )
    assert (await run_row(db, running["id"]))["concurrency_key_value"] is not None


@pytest.mark.parametrize("delete_after", ["runs_rekey_chunk", "runs_set_concurrency"])
async def test_deleting_a_pipeline_while_its_concurrency_changes_does_not_deadlock(
    db: Database, delete_after: str
) -> None:
    """set_concurrency re-keys the runs, then locks the pipeline; the delete locks the pipeline
    (and its hooks), commits, and only then cancels the runs: whichever statement of the change
    the delete comes after, one waits for the other, never both (once a deadlock)."""
    pipeline = await make_pipeline(db, policy="queue", key="ref")
    await enqueue(db, pipeline["id"], ref="main")  # keyed "main" by ref, by branch none
    steps = [
        ("runs_rekey_lock", (pipeline["id"],)),
        (
            "runs_rekey_chunk",
            (pipeline["id"], "branch", datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0), 100),
        ),
        ("runs_rekey_in_progress", (pipeline["id"], "branch")),
        ("runs_set_concurrency", (pipeline["id"], "queue", "branch", 3)),
        ("runs_rekey_inserted_meanwhile", (pipeline["id"],)),
    ]
    deleting: asyncio.Task[bool] | None = None
    async with db.pool.acquire() as other:
        async with other.transaction():
            # runs.set_concurrency, statement by statement, with the delete started between
            for name, args in steps:
                row = await other.fetchrow(QUERIES[name], *args)
                if deleting is not None and name == "runs_set_concurrency":
                    assert row is None  # the delete came first: no pipeline to update
                    break
                if name == delete_after:
                    deleting = asyncio.create_task(pipelines.delete_pipeline(db, pipeline["id"]))
                    await wait_until_blocked(db)  # on the re-keyed run, or on the pipeline row
                    assert not deleting.done()
    assert deleting is not None
    assert await asyncio.wait_for(deleting, 10) is True


async def test_a_repeated_delivery_while_its_pipeline_is_deleted_is_not_a_deadlock(
    client: Any, admin_headers: dict[str, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run insert trigger share-locks the pipeline, and a repeated delivery then waits for
    its original run: with the delete holding that run before the pipeline, the server broke
    the deadlock and the repeat got 503 (with the batcher backing off). Now the delete holds
    the pipeline alone, and cancels the runs after it committed."""
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id, requires_secret=False)
    path = f"/hooks/incoming/{hook['id']}"
    delivery = {"X-GitHub-Delivery": "d-1"}
    first = await client.post(path, json={"a": 1}, headers=delivery)
    assert first.status == 202, await first.text()

    deleted, go_on = asyncio.Event(), asyncio.Event()
    real_fetchval = Session.fetchval

    async def pausing_fetchval(self: Session, name: str, *args: Any) -> Any:
        result = await real_fetchval(self, name, *args)
        if name == "pipeline_delete" and not deleted.is_set():
            deleted.set()  # the delete holds the pipeline (and its hooks) now
            await go_on.wait()
        return result

    monkeypatch.setattr(Session, "fetchval", pausing_fetchval)
    deleting = asyncio.create_task(pipelines.delete_pipeline(db, pipeline_id))
    await deleted.wait()
    repeat = asyncio.create_task(client.post(path, json={"a": 1}, headers=delivery))
    await wait_until_blocked(db)  # its batch waits for the delete's locks
    go_on.set()
    answer = await asyncio.wait_for(repeat, 10)
    assert await asyncio.wait_for(deleting, 10) is True
    assert answer.status in (200, 404), await answer.text()  # a duplicate, or the hook is gone
    row = await db.pool.fetchrow("SELECT status FROM pipeline_runs WHERE delivery_id = 'd-1'")
    assert row is not None and row["status"] == "cancelled"


# --- the order of runs written by the ingest batcher ------------------------------------------


async def _push_concurrently(
    client: Any, admin_headers: dict[str, str], db: Database, policy: str, pushes: int
) -> tuple[int, list[int]]:
    """``pushes`` concurrent calls of one hook (branch main, push n); the pipeline id and the
    pushes in the order the gateway received them (hook_requests.received_at)."""
    pipeline_id = await new_pipeline(client, admin_headers)
    await runs.set_concurrency(db, pipeline_id, policy, "branch", 3)
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        requires_secret=False,
        settings={
            "variables": [
                {"name": "branch", "type": "string"},
                {"name": "push", "type": "integer"},
            ]
        },
    )
    path = f"/hooks/incoming/{hook['id']}"
    answers = await asyncio.gather(
        *(client.post(path, json={"branch": "main", "push": n}) for n in range(1, pushes + 1))
    )
    assert [a.status for a in answers] == [202] * pushes
    rows = await db.pool.fetch(
        "SELECT (r.variables->>'push')::int AS push, r.queued_at, q.received_at "
        "FROM pipeline_runs r JOIN hook_requests q ON q.id = r.request_id "
        "WHERE r.pipeline_id = $1 ORDER BY q.received_at, q.id",
        pipeline_id,
    )
    assert len(rows) == pushes
    # A run is queued when its request was received, not when its batch's transaction began
    # (one value for a whole batch, and batches are written in parallel, out of order).
    assert [r["queued_at"] for r in rows] == [r["received_at"] for r in rows]
    assert len({r["queued_at"] for r in rows}) == pushes
    return pipeline_id, [r["push"] for r in rows]


async def test_cancel_in_progress_starts_the_push_received_last(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    # Before: the claim took whichever push of the last-*written* batch had the greatest
    # random id, and cancelled the newest push as "superseded".
    pipeline_id, arrival = await _push_concurrently(
        client, admin_headers, db, "cancel-in-progress", 40
    )
    [started] = await claim(db, pipeline_id, limit=10)
    assert started["variables"]["push"] == arrival[-1]
    cancelled = await db.pool.fetchval(
        "SELECT count(*) FROM pipeline_runs WHERE pipeline_id = $1 AND status = 'cancelled'",
        pipeline_id,
    )
    assert cancelled == 39


async def test_queue_starts_the_pushes_in_the_order_they_were_received(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    pipeline_id, arrival = await _push_concurrently(client, admin_headers, db, "queue", 12)
    started = []
    for _ in arrival:
        [run] = await claim(db, pipeline_id, limit=10)  # one at a time: the key is busy
        started.append(run["variables"]["push"])
        await runs.report_status(db, run["id"], run["lease_token"], "completed")
    assert started == arrival
