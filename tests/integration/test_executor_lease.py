"""The executor's own view of its leases (gateway.executor.worker.RunLease): cut off from the
database it stops the command before the lease can expire there, so no other executor ever runs
the same run at the same time; it retries a finished run's report for as long as the lease
lasts; and a run cancelled under it stops at once, not at the next heartbeat, even when its
LISTEN connection was lost meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.executor.command import RunningCommand
from gateway.executor.worker import Executor, ExecutorSettings, RunLease
from gateway.storage import runs
from gateway.storage.database import Database
from tests.integration.ingest_helpers import wait_for
from tests.integration.pg_partition import CuttableProxy
from tests.integration.runs_helpers import enqueue, make_pipeline, run_row

WAIT = 30.0


@pytest.fixture
async def proxy(config: Config) -> AsyncIterator[CuttableProxy]:
    cuttable = CuttableProxy(config.database.dsn)
    yield cuttable
    await cuttable.close()


@pytest.fixture
async def cut_off_db(config: Config, db: Database, proxy: CuttableProxy) -> AsyncIterator[Database]:
    """A Database whose every connection goes through ``proxy`` (short timeouts: a cut shows
    at once)."""
    settings = replace(config.database, connect_timeout=0.5, command_timeout=0.5)
    through = await Database.connect(await proxy.start(), settings)
    through.secret_box = db.secret_box
    yield through
    await through.close()


def _script(log: Path, name: str, seconds: float) -> list[str]:
    """A command that logs its start, and its stop when terminated, with wall-clock times."""
    return [
        "sh",
        "-c",
        f"trap 'echo \"stop {name} $(date +%s.%N)\" >> {log}; exit 143' TERM; "
        f'echo "start {name} $HOOK_ATTEMPT $(date +%s.%N)" >> {log}; sleep {seconds} & wait',
    ]


def _times(log: Path, event: str) -> list[float]:
    if not log.exists():
        return []
    return [
        float(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith(event)
    ]


async def _until(condition: Callable[[], object], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _stop(executor: Executor, task: asyncio.Task[None]) -> None:
    executor.stop()
    executor.stop()
    await asyncio.wait_for(task, WAIT)


async def test_a_cut_off_executor_stops_its_command_before_another_can_claim_the_run(
    db: Database, cut_off_db: Database, proxy: CuttableProxy, tmp_path: Path
) -> None:
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    log = tmp_path / "log"
    lease = 1.5
    a = Executor(
        cut_off_db,
        ExecutorSettings(pipeline["id"], _script(log, "A", 20), lease_seconds=lease, name="A"),
    )
    b = Executor(
        db,
        ExecutorSettings(
            pipeline["id"], _script(log, "B", 0), lease_seconds=lease, poll_interval=0.1, name="B"
        ),
    )
    task_a = asyncio.create_task(a.run())
    task_b: asyncio.Task[None] | None = None
    try:
        await _until(lambda: _times(log, "start A"), "A to start the command")
        proxy.cut()  # A's host loses the database
        task_b = asyncio.create_task(b.run())
        await _until(lambda: _times(log, "start B"), "B to claim the run once its lease expired")
        [a_stopped], [b_started] = _times(log, "stop A"), _times(log, "start B")
        # Never both at once: A's command ended before B's began.
        assert a_stopped < b_started, log.read_text()
        # B's command ends at once; stopping B before its report would release the run.
        deadline = time.monotonic() + WAIT
        while (await run_row(db, run["id"]))["status"] != "completed":
            assert time.monotonic() < deadline, "B never completed the run"
            await asyncio.sleep(0.05)
    finally:
        proxy.heal()
        await _stop(a, task_a)
        if task_b is not None:
            await _stop(b, task_b)
    row = await run_row(db, run["id"])
    assert (row["status"], row["attempt"], row["claimed_by"]) == ("completed", 2, "B")


async def test_a_finished_runs_report_outlasts_a_long_database_outage(
    db: Database, cut_off_db: Database, proxy: CuttableProxy, tmp_path: Path
) -> None:
    """14 s without the database, well inside a 30 s lease: the outcome is recorded once the
    database is back, and the run is not executed again."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    log = tmp_path / "log"
    executor = Executor(
        cut_off_db,
        ExecutorSettings(pipeline["id"], _script(log, "A", 0.3), lease_seconds=30, name="A"),
    )
    task = asyncio.create_task(executor.run())
    try:
        await _until(lambda: _times(log, "start A"), "the command to start")
        proxy.cut()  # the command finishes during the outage
        await asyncio.sleep(14)
        proxy.heal()
        deadline = time.monotonic() + 10
        while (row := await run_row(db, run["id"]))["status"] == "in-progress":
            assert time.monotonic() < deadline, "the report was never recorded"
            await asyncio.sleep(0.1)
    finally:
        proxy.heal()
        await _stop(executor, task)
    assert row["status"] == "completed" and row["attempt"] == 1 and row["exit_code"] == 0
    assert len(_times(log, "start")) == 1  # executed once


async def test_a_run_cancelled_under_the_executor_stops_at_once_not_at_the_next_heartbeat(
    db: Database, tmp_path: Path
) -> None:
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    log = tmp_path / "log"
    # Heartbeats every 20 s: only the notification can stop the command sooner.
    executor = Executor(
        db, ExecutorSettings(pipeline["id"], _script(log, "A", 60), lease_seconds=60, name="A")
    )
    task = asyncio.create_task(executor.run())
    try:
        await _until(lambda: _times(log, "start A"), "the command to start")
        cancelled_at = time.time()
        await runs.report_status(db, run["id"], None, "cancelled", message="called off")
        await _until(lambda: _times(log, "stop A"), "the command to stop", within=10)
        assert _times(log, "stop A")[0] - cancelled_at < 5
    finally:
        await _stop(executor, task)
    assert (await run_row(db, run["id"]))["status"] == "cancelled"


async def test_a_heartbeat_refused_after_the_command_ended_stops_nothing(db: Database) -> None:
    """The notification of the executor's own report can wake one last heartbeat, which the
    finished run refuses: that is no lost lease, and the exited command's process group (whose
    id may be reused by then) must not be signalled."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    sent = time.monotonic()
    [claimed] = await runs.claim(
        db, pipeline_id=pipeline["id"], limit=1, lease_seconds=30, claimed_by="A"
    )
    command = await RunningCommand.start(["true"], {})
    await command.wait()
    await runs.report_status(db, run["id"], claimed["lease_token"], "completed", exit_code=0)
    executor = Executor(db, ExecutorSettings(pipeline["id"], ["true"], lease_seconds=30))
    lease = RunLease(30, sent)
    lease.check_now.set()  # as the notification of the report would
    lost: list[str] = []
    with capture_logs() as logs:
        await asyncio.wait_for(
            executor._heartbeats(run["id"], claimed["lease_token"], lease, command, lost), 10
        )
    assert lost == [] and not command.terminated
    assert [e for e in logs if e["event"] == "run_lease_lost"] == []


_RUN_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query LIKE 'LISTEN %hookgate_run_changed%'"
)


async def test_a_lost_listen_connection_is_reopened_and_a_new_run_claimed_at_once(
    db: Database, tmp_path: Path
) -> None:
    """The executor's LISTEN backend is terminated (a database restart or failover looks the
    same): the loss is logged, the connection opened again, and a run queued right after is
    claimed at once, not at the next poll 60 s later (its notification may have been sent
    before the new connection listened: the executor claims when it listens again)."""
    pipeline = await make_pipeline(db)
    log = tmp_path / "log"
    executor = Executor(
        db,
        ExecutorSettings(pipeline["id"], _script(log, "A", 0), poll_interval=60, name="A"),
    )
    with capture_logs() as logs:
        task = asyncio.create_task(executor.run())
        try:
            await _until(lambda: any(e["event"] == "executor_started" for e in logs), "start")
            deadline = time.monotonic() + WAIT
            while not (listeners := [r["pid"] for r in await db.pool.fetch(_RUN_LISTENERS)]):
                assert time.monotonic() < deadline, "the executor never listened"
                await asyncio.sleep(0.05)
            [listener] = listeners
            await db.pool.execute("SELECT pg_terminate_backend($1)", listener)

            run = await enqueue(db, pipeline["id"], source_ref="main")

            await _until(lambda: _times(log, "start A"), "the run to start", within=10)
            # Its report, before the stop below: a second stop releases an unreported run.
            await wait_for(
                lambda: run_row(db, run["id"]),
                lambda r: r["status"] not in ("queued", "in-progress"),
            )
        finally:
            await _stop(executor, task)
    assert (await run_row(db, run["id"]))["status"] == "completed"
    [lost] = [e for e in logs if e["event"] == "executor_listener_lost"]
    assert lost["log_level"] == "warning" and lost["error"] == "the connection was closed"
    assert "polling" not in lost["fallback"] and "claims every 60 s" in lost["fallback"]
    assert [e["event"] for e in logs].count("executor_listening") == 1


async def test_a_cancel_missed_while_the_listener_was_cut_off_stops_the_command_once_back(
    db: Database, cut_off_db: Database, proxy: CuttableProxy, tmp_path: Path
) -> None:
    """The run is cancelled while the executor's host is cut off from the database, so its
    notification is lost. Once the connection is back, the executor heartbeats every lease at
    once: the command stops then, not at the next heartbeat (every 20 s)."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    log = tmp_path / "log"
    executor = Executor(
        cut_off_db,
        ExecutorSettings(
            pipeline["id"], _script(log, "A", 60), lease_seconds=60, poll_interval=60, name="A"
        ),
    )
    with capture_logs() as logs:
        task = asyncio.create_task(executor.run())
        try:
            await _until(lambda: _times(log, "start A"), "the command to start")
            proxy.cut()  # the executor's connections are dropped, its listener's among them
            await runs.report_status(db, run["id"], None, "cancelled", message="called off")
            proxy.heal()
            healed_at = time.time()
            await _until(lambda: _times(log, "stop A"), "the command to stop", within=15)
            assert _times(log, "stop A")[0] - healed_at < 10
        finally:
            proxy.heal()
            await _stop(executor, task)
    assert (await run_row(db, run["id"]))["status"] == "cancelled"
    events = [e["event"] for e in logs]
    assert events.index("executor_listener_lost") < events.index("executor_listening")
    assert "run_lease_lost" in events


def _finished(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["status"], e["recorded"]) for e in logs if e["event"] == "run_finished"]


async def test_run_finished_says_recorded_false_for_a_run_it_abandoned(
    db: Database, tmp_path: Path
) -> None:
    """Cancelled under the executor: the command is stopped and nothing of its outcome is
    written, which run_finished must not call recorded."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    log = tmp_path / "log"
    executor = Executor(
        db, ExecutorSettings(pipeline["id"], _script(log, "A", 60), lease_seconds=60, name="A")
    )
    with capture_logs() as logs:
        task = asyncio.create_task(executor.run())
        try:
            await _until(lambda: _times(log, "start A"), "the command to start")
            await runs.report_status(db, run["id"], None, "cancelled", message="called off")
            await _until(lambda: _finished(logs), "run_finished")
        finally:
            await _stop(executor, task)
    assert _finished(logs) == [("abandoned", False)]


async def test_run_finished_says_whether_a_stopping_executors_release_was_recorded(
    db: Database, cut_off_db: Database, proxy: CuttableProxy, tmp_path: Path
) -> None:
    """Stopped with its command running, the executor releases the run: recorded when the
    release was written, not when the database was away and the release failed."""
    log = tmp_path / "log"
    for name, reachable, recorded in (("A", True, True), ("B", False, False)):
        pipeline = await make_pipeline(db)  # one each: B must not claim the run A released
        run = await enqueue(db, pipeline["id"], source_ref=name)
        settings = ExecutorSettings(
            pipeline["id"], _script(log, name, 60), lease_seconds=30, grace_seconds=0, name=name
        )
        executor = Executor(cut_off_db, settings)
        with capture_logs() as logs:
            task = asyncio.create_task(executor.run())
            try:
                await _until(lambda n=name: _times(log, f"start {n}"), "the command to start")
                if not reachable:
                    proxy.cut()
                executor.stop()
                await asyncio.wait_for(task, WAIT)
            finally:
                proxy.heal()
                await _stop(executor, task)
        assert _finished(logs) == [("queued", recorded)], logs
        expected = "queued" if reachable else "in-progress"
        assert (await run_row(db, run["id"]))["status"] == expected
