"""The executor's claim loop in process: it outlives an unexpected failure of one claim."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.executor.worker import Executor, ExecutorSettings
from gateway.storage import runs
from gateway.storage.database import Database
from tests.integration.outgoing_helpers import eventually
from tests.integration.runs_helpers import enqueue, make_pipeline, run_row


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
    executor = Executor(db, settings)
    loop = asyncio.create_task(executor.run())
    try:

        async def completed() -> bool:
            return (await run_row(db, run["id"]))["status"] == "completed"

        await eventually(completed)
    finally:
        executor.stop()
        await asyncio.wait_for(loop, timeout=30)
    assert len(calls) >= 2
