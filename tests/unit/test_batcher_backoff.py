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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import asyncpg
import pytest

from gateway.config import build_config
from gateway.exceptions import DatabaseUnavailable, TransientConflict
from gateway.ingest import batcher as batcher_module
from gateway.ingest.batcher import PendingRequest, RequestNotStored, RunBatcher, Stored
from gateway.storage.database import Database
from tests.unit.test_database_errors import server_error

BASE = build_config({}, {})
CONFIG = replace(BASE, batch=replace(BASE.batch, max_wait_ms=0.0, retry_after=60))


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


@asynccontextmanager
async def running(
    monkeypatch: pytest.MonkeyPatch, first_backoff: float
) -> AsyncIterator[HandAnsweredBatcher]:
    """A started batcher whose first back-off lasts ``first_backoff`` seconds (long enough in
    each test that no assertion depends on how fast this machine is)."""
    monkeypatch.setattr(batcher_module, "_FIRST_BACKOFF", first_backoff)
    batcher = HandAnsweredBatcher()
    batcher.start()
    try:
        yield batcher
    finally:
        for answer in batcher.writes:
            if not answer.done():
                answer.set_result(None)
        await batcher.close()


DOWN = DatabaseUnavailable("connection refused")


async def fail_one_batch(batcher: HandAnsweredBatcher) -> None:
    """One batch finds the database down."""
    failing = batcher.submit(request())
    await batcher.writes_started(len(batcher.writes) + 1)
    batcher.writes[-1].set_result(DOWN)
    with pytest.raises(DatabaseUnavailable):
        await failing


async def store_one(batcher: HandAnsweredBatcher) -> None:
    """One request is accepted and its batch committed."""
    item = request()
    stored = batcher.submit(item)
    await batcher.writes_started(len(batcher.writes) + 1)
    batcher.writes[-1].set_result(None)
    assert await stored == Stored(item.run_id, False)


async def test_a_batch_in_flight_before_the_outage_does_not_end_the_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(monkeypatch, 30.0) as batcher:
        before = request()
        in_flight = batcher.submit(before)
        await batcher.writes_started(1)
        await fail_one_batch(batcher)  # started later than the batch in flight
        batcher.writes[0].set_result(None)  # committed just before the database went away
        assert await in_flight == Stored(before.run_id, False)
        with pytest.raises(DatabaseUnavailable):  # still backing off
            batcher.submit(request())


async def test_a_batch_in_flight_before_the_database_answered_does_not_start_a_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(monkeypatch, 30.0) as batcher:
        stuck = batcher.submit(request())
        await batcher.writes_started(1)
        await store_one(batcher)  # a later batch reaches the database
        batcher.writes[0].set_result(DOWN)  # e.g. a connection that died long ago timed out
        with pytest.raises(DatabaseUnavailable):
            await stuck
        await store_one(batcher)  # no back-off


async def test_one_batch_probes_after_the_back_off_and_its_answer_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    async with running(monkeypatch, 0.5) as batcher:
        await fail_one_batch(batcher)
        await asyncio.sleep(0.6)  # the first back-off is over

        probe = batcher.submit(request())
        await batcher.writes_started(2)
        with pytest.raises(DatabaseUnavailable):  # refused while the probe waits for its answer
            batcher.submit(request())
        batcher.writes[1].set_result(DOWN)
        with pytest.raises(DatabaseUnavailable):
            await probe
        with pytest.raises(DatabaseUnavailable):  # backing off again
            batcher.submit(request())
        assert batcher._down_until - loop.time() > 0.75  # twice the first back-off (1 s)

        await asyncio.sleep(1.1)
        await store_one(batcher)  # the second probe finds the database back
        await store_one(batcher)  # and requests are accepted again


async def test_batches_taken_with_the_probe_wait_for_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests accepted once the back-off is over are shared among the idle writers: the first
    batch probes, the others wait for its answer instead of failing."""
    async with running(monkeypatch, 0.2) as batcher:
        await fail_one_batch(batcher)
        await asyncio.sleep(0.3)
        items = [request() for _ in range(3)]
        futures = [batcher.submit(item) for item in items]  # one per idle writer
        await batcher.writes_started(2)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(batcher.writes) == 2  # the probe alone is writing
        batcher.writes[1].set_result(None)
        await batcher.writes_started(4)
        for answer in batcher.writes[2:]:
            answer.set_result(None)
        assert await asyncio.gather(*futures) == [Stored(i.run_id, False) for i in items]


async def test_a_probe_that_fails_before_reaching_the_database_does_not_end_the_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure of the gateway's own (a bug building the rows, say) tells nothing about the
    database: the back-off keeps growing instead of starting over."""
    loop = asyncio.get_running_loop()
    async with running(monkeypatch, 0.5) as batcher:
        await fail_one_batch(batcher)  # back-off 0.5 s, the next one 1 s
        await asyncio.sleep(0.6)
        not_sent = batcher.submit(request())
        await batcher.writes_started(2)
        batcher.writes[1].set_result(ValueError("a bug before the statement was sent"))
        with pytest.raises(RequestNotStored):
            await not_sent
        await fail_one_batch(batcher)  # the next probe finds the database still down
        assert batcher._down_until - loop.time() > 0.75  # 1 s: the back-off was not reset

        await asyncio.sleep(1.1)
        answered = batcher.submit(request())
        await batcher.writes_started(4)
        batcher.writes[3].set_result(server_error(asyncpg.exceptions.NotNullViolationError, "x"))
        with pytest.raises(RequestNotStored):
            await answered
        assert batcher._down_until == 0  # the database answered: the back-off is over
        await store_one(batcher)


async def test_a_deadlock_is_a_503_for_its_request_but_no_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server rolled the batch back to break a deadlock: it answered, so it is not down.
    conflict = TransientConflict("a concurrent write conflicted: DeadlockDetectedError")
    conflict.__cause__ = server_error(asyncpg.exceptions.DeadlockDetectedError, "deadlock")
    async with running(monkeypatch, 30.0) as batcher:
        failing = batcher.submit(request())
        await batcher.writes_started(1)
        batcher.writes[-1].set_result(conflict)
        with pytest.raises(TransientConflict):  # the trigger answers it 503 + Retry-After
            await failing
        await store_one(batcher)  # no back-off: the next request is written at once


@pytest.mark.parametrize("settled", ["unknown", "unreachable", "not-found"])
async def test_a_lost_write_whose_outcome_is_not_found_committed_is_a_503(
    monkeypatch: pytest.MonkeyPatch, settled: str
) -> None:
    """WriteInDoubt: only requests found stored may be answered as stored. A settle that
    cannot tell (writer still running, database unreachable) or finds nothing must fail them."""
    from types import SimpleNamespace

    from gateway.exceptions import WriteInDoubt
    from gateway.storage import ingest as store

    async def settle(db: object, lost: object, ids: list[uuid.UUID], wait: float) -> object:
        if settled == "unreachable":
            raise DatabaseUnavailable("connection refused")
        return None if settled == "unknown" else {}

    monkeypatch.setattr(store, "settle_lost_write", settle)
    async with running(monkeypatch, 30.0) as batcher:
        batcher._db = cast(Database, SimpleNamespace(config=SimpleNamespace(connect_timeout=1.0)))
        pending = batcher.submit(request())
        await batcher.writes_started(1)
        batcher.writes[0].set_result(WriteInDoubt("lost in commit", (1, datetime.now(UTC))))
        with pytest.raises(DatabaseUnavailable):
            await pending
