"""The group-commit writer's back-off after the database went away: which batch may end it.

The timing these tests need (a batch still in flight while another finds the database gone, a
probe still waiting for its answer) cannot be arranged reliably with a real server, so here the
real :class:`RunBatcher` runs with its one database call, ``_write``, replaced by a write that
the test answers by hand. The database side of the same paths (a dropped database, a read-only
one) is tested in ``tests/integration/test_batcher.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway.config import build_config
from gateway.exceptions import DatabaseUnavailable
from gateway.ingest.batcher import PendingRequest, RunBatcher, Stored
from gateway.storage.database import Database

BASE = build_config({}, {})
CONFIG = replace(BASE, batch=replace(BASE.batch, max_wait_ms=0.0, retry_after=1))
FIRST_BACKOFF = 0.05  # batcher._FIRST_BACKOFF


class HandAnsweredBatcher(RunBatcher):
    """The real batcher; each batch's write waits until the test answers it."""

    def __init__(self) -> None:
        super().__init__(cast(Database, None), CONFIG, writers=3)
        self.writes: list[asyncio.Future[Exception | None]] = []

    async def _write(self, batch: list[PendingRequest]) -> list[Stored]:
        answer: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.writes.append(answer)
        failure = await answer
        if failure is not None:
            raise failure
        return [Stored(item.run_id, False) for item in batch]

    async def writes_started(self, count: int) -> None:
        for _ in range(100):
            if len(self.writes) >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{len(self.writes)} writes started, expected {count}")


def request() -> PendingRequest:
    return PendingRequest(
        id=uuid.uuid4(),
        hook_id=uuid.uuid4(),
        pipeline_id=1,
        received_at=datetime.now(UTC),
        client_ip=None,
        headers={},
        body=b"{}",
        body_size=2,
        outcome="accepted",
        status_code=202,
        message="accepted by the test",
        run_id=uuid.uuid4(),
        variables={},
    )


@pytest.fixture
async def batcher() -> Any:
    started = HandAnsweredBatcher()
    started.start()
    yield started
    for answer in started.writes:
        if not answer.done():
            answer.set_result(None)
    await started.close()


async def test_a_batch_in_flight_before_the_outage_does_not_end_the_back_off(
    batcher: HandAnsweredBatcher,
) -> None:
    before = request()
    in_flight = batcher.submit(before)
    await batcher.writes_started(1)
    failing = batcher.submit(request())
    await batcher.writes_started(2)

    batcher.writes[1].set_result(DatabaseUnavailable("connection refused"))
    with pytest.raises(DatabaseUnavailable):
        await failing
    batcher.writes[0].set_result(None)  # committed just before the database went away
    assert await in_flight == Stored(before.run_id, False)

    with pytest.raises(DatabaseUnavailable):  # still backing off
        batcher.submit(request())


async def test_one_batch_probes_after_the_back_off_and_its_answer_decides(
    batcher: HandAnsweredBatcher,
) -> None:
    failing = batcher.submit(request())
    await batcher.writes_started(1)
    batcher.writes[0].set_result(DatabaseUnavailable("connection refused"))
    with pytest.raises(DatabaseUnavailable):
        await failing
    await asyncio.sleep(FIRST_BACKOFF * 1.5)

    probe = batcher.submit(request())
    await batcher.writes_started(2)
    with pytest.raises(DatabaseUnavailable):  # refused while the probe waits for its answer
        batcher.submit(request())
    batcher.writes[1].set_result(DatabaseUnavailable("connection refused"))
    with pytest.raises(DatabaseUnavailable):
        await probe
    await asyncio.sleep(FIRST_BACKOFF * 1.5)
    with pytest.raises(DatabaseUnavailable):  # the back-off doubled after a failed probe
        batcher.submit(request())
    await asyncio.sleep(FIRST_BACKOFF)

    second_probe = request()
    answered = batcher.submit(second_probe)
    await batcher.writes_started(3)
    batcher.writes[2].set_result(None)
    assert await answered == Stored(second_probe.run_id, False)
    after = request()
    accepted = batcher.submit(after)  # back: accepted again
    await batcher.writes_started(4)
    batcher.writes[3].set_result(None)
    assert await accepted == Stored(after.run_id, False)
