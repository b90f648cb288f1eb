"""The executor's claim loop in process: it outlives an unexpected failure of one claim, and
ends, saying why, once its pipeline is deleted."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.executor.worker import Executor, ExecutorSettings
from gateway.storage import pipelines, runs
from gateway.storage.database import Database
from tests.integration.outgoing_helpers import eventually
from tests.integration.runs_helpers import enqueue, make_pipeline, run_row


async def _run_until(executor: Executor, db: Database, run_id: uuid.UUID, status: str) -> None:
    """Run ``executor`` until the run has ``status``, then stop it and wait for its end."""
    loop = asyncio.create_task(executor.run())
    try:

        async def reached() -> bool:
            return bool((await run_row(db, run_id))["status"] == status)

        await eventually(reached)
    finally:
        executor.stop()
        await asyncio.wait_for(loop, timeout=30)


async def test_an_unexpected_claim_error_is_logged_and_the_loop_goes_on(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the first claim raises what the loop did not expect (it used to end
    # the executor, abandoning the commands it was running); the next one claims the run.
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    real_claim, calls = runs.claim, []

    async def claim_failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected")
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(runs, "claim", claim_failing_once)
    settings = ExecutorSettings(pipeline["id"], ["true"], poll_interval=0.1, name="test")
    await _run_until(Executor(db, settings), db, run["id"], "completed")
    assert len(calls) >= 2


async def test_an_executor_whose_pipeline_is_deleted_says_so_and_stops(db: Database) -> None:
    # It used to poll the deleted pipeline for ever without a word (an executor started for a
    # missing pipeline refuses to start): its run is stopped by the delete's cancel, and then
    # the executor, having nothing left it could ever claim, logs why and ends on its own.
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    settings = ExecutorSettings(pipeline["id"], ["sleep", "60"], poll_interval=0.1, name="test")
    executor = Executor(db, settings)
    with capture_logs() as logs:
        loop = asyncio.create_task(executor.run())
        try:

            async def running() -> bool:
                return (await run_row(db, run["id"]))["status"] == "in-progress"

            await eventually(running)
            assert await pipelines.delete_pipeline(db, pipeline["id"])
            await asyncio.wait_for(asyncio.shield(loop), timeout=30)
        finally:
            executor.stop()
            await asyncio.wait_for(loop, timeout=30)
    assert executor.pipeline_deleted
    assert (await run_row(db, run["id"]))["status"] == "cancelled"
    [deleted] = [e for e in logs if e["event"] == "executor_pipeline_deleted"]
    assert deleted["log_level"] == "error"
    assert deleted["pipeline_id"] == pipeline["id"]
    finished = [e for e in logs if e["event"] == "run_finished"]
    assert [(e["status"], e["recorded"]) for e in finished] == [("abandoned", False)]


async def test_a_variable_too_long_for_the_environment_fails_the_run_naming_it(
    db: Database,
) -> None:
    # Linux refuses one environment string over 128 KiB (E2BIG): a payload's long string or
    # large array variable cannot reach the command. The run used to fail with only "cannot
    # start 'sh': Argument list too long", pointing at the command's arguments.
    pipeline = await make_pipeline(db)
    body = "é" * 70_000  # 140,000 bytes of UTF-8
    run = await enqueue(db, pipeline["id"], pr_body=body, source_ref="main")
    settings = ExecutorSettings(pipeline["id"], ["sh", "-c", "true"], poll_interval=0.1)
    await _run_until(Executor(db, settings), db, run["id"], "failed")
    row = await run_row(db, run["id"])
    assert row["exit_code"] == 127
    assert row["message"] == (
        "cannot start 'sh': Argument list too long: HOOK_VAR_PR_BODY (140017 bytes) longer "
        "than the 131071 bytes the system allows one environment variable"
    )


async def test_a_run_gone_before_its_report_is_a_refused_report_not_a_crash(
    db: Database, database_dsn: str
) -> None:
    # The run's row disappears while its command runs (a prune racing a cancel; here the
    # command deletes it itself, so the order is certain): the report finds no run. That
    # escaped the report's handling as NotFound: an error-level run_task_crashed traceback.
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    delete = (
        "import asyncio, os, sys, asyncpg\n"
        "async def main():\n"
        "    db = await asyncpg.connect(sys.argv[1])\n"
        "    run_id = os.environ['HOOK_RUN_ID']\n"
        "    await db.execute('DELETE FROM pipeline_runs WHERE id = $1', run_id)\n"
        "asyncio.run(main())\n"
    )
    command = [sys.executable, "-c", delete, database_dsn]
    settings = ExecutorSettings(pipeline["id"], command, poll_interval=0.1)
    executor = Executor(db, settings)
    with capture_logs() as logs:
        loop = asyncio.create_task(executor.run())
        try:

            async def reported() -> bool:
                return any(e["event"] == "run_finished" for e in logs)

            await eventually(reported)
        finally:
            executor.stop()
            await asyncio.wait_for(loop, timeout=30)
    assert [e for e in logs if e["event"] == "run_task_crashed"] == []
    gone = await db.pool.fetchval("SELECT count(*) FROM pipeline_runs WHERE id = $1", run["id"])
    assert gone == 0
    [refused] = [e for e in logs if e["event"] == "run_report_refused"]
    assert refused["reason"] == "run not found"
    [finished] = [e for e in logs if e["event"] == "run_finished"]
    assert (finished["status"], finished["recorded"]) == ("completed", False)
