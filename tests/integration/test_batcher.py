"""Group commit against a real database: one transaction per batch, duplicates, back-pressure,
a database that goes away and comes back, and the flush on shutdown."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import orjson
import pytest
import zstandard

from gateway.config import Config
from gateway.exceptions import DatabaseUnavailable, Overloaded, TransientConflict
from gateway.ingest import batcher as batcher_module
from gateway.ingest.batcher import (
    WRITERS,
    PendingRequest,
    RequestNotStored,
    RunBatcher,
    Stored,
)
from gateway.storage.database import Database
from gateway.storage.queries import QUERIES
from tests.integration.ingest_helpers import PR_OPENED, execute, fetch, wait_for
from tests.integration.pg_partition import database_through_proxy

Factory = Callable[..., RunBatcher]


@pytest.fixture
async def pipeline_id(database_dsn: str) -> int:
    rows = await fetch(
        database_dsn,
        "WITH e AS (INSERT INTO environments (name) VALUES ('batcher') RETURNING id) "
        "INSERT INTO pipelines (environment_id, name, resource_type, resource_id, action_type) "
        "SELECT id, 'Deploy', 'application', 1, 'deploy' FROM e RETURNING id",
    )
    return int(rows[0]["id"])


@pytest.fixture
async def make_batcher(config: Config, db: Database) -> AsyncIterator[Factory]:
    """Start batchers with batch/hooks settings overridden; all closed at teardown."""
    started: list[RunBatcher] = []

    def factory(
        database: Database = db, store_bodies: str = "all", writers: int = WRITERS, **batch: Any
    ) -> RunBatcher:
        custom = replace(
            config,
            batch=replace(config.batch, **batch),
            hooks=replace(config.hooks, store_bodies=store_bodies),
        )
        batcher = RunBatcher(database, custom, writers=writers)
        batcher.start()
        started.append(batcher)
        return batcher

    yield factory
    for batcher in started:
        await batcher.close()


def request(
    pipeline_id: int,
    *,
    hook_id: uuid.UUID | None = None,
    delivery: str | None = None,
    outcome: str = "accepted",
    status: int = 202,
    body: bytes | None = PR_OPENED,
    variables: dict[str, Any] | None = None,
) -> PendingRequest:
    accepted = outcome == "accepted"
    return PendingRequest(
        id=uuid.uuid4(),
        hook_id=hook_id or uuid.uuid4(),
        pipeline_id=pipeline_id,
        client_ip="192.0.2.10",
        headers={"content-type": "application/json", "x-hub-signature-256": "[redacted]"},
        body=body,
        body_size=len(body or b""),
        outcome=outcome,
        status_code=status,
        message=f"{outcome} by the test",
        delivery_id=delivery,
        run_id=uuid.uuid4() if accepted else None,
        variables=(variables or {"pull_request_id": 2}) if accepted else None,
    )


async def transaction_ids(dsn: str) -> set[str]:
    rows = await fetch(
        dsn,
        "SELECT xmin::text AS xid FROM pipeline_runs UNION SELECT xmin::text FROM hook_requests",
    )
    return {row["xid"] for row in rows}


async def requests_per_transaction(dsn: str) -> list[int]:
    rows = await fetch(dsn, "SELECT count(*) AS n FROM hook_requests GROUP BY xmin::text")
    return sorted(row["n"] for row in rows)


async def submitted_by_handlers(batcher: RunBatcher, items: list[PendingRequest]) -> list[Stored]:
    """Each item submitted by its own concurrent handler, as requests on many connections are."""

    async def handler(item: PendingRequest) -> Stored:
        return await batcher.submit(item)

    return list(await asyncio.gather(*(handler(item) for item in items)))


@pytest.mark.parametrize(("writers", "per_transaction"), [(1, [50]), (2, [25, 25])])
async def test_concurrent_submits_are_committed_together(
    make_batcher: Factory,
    pipeline_id: int,
    database_dsn: str,
    writers: int,
    per_transaction: list[int],
) -> None:
    # One writer: one transaction. Two idle writers share the burst and write in parallel.
    batcher = make_batcher(max_wait_ms=200.0, writers=writers)
    items = [request(pipeline_id, delivery=f"d-{i}") for i in range(50)]

    results = await submitted_by_handlers(batcher, items)
    assert results == [Stored(item.run_id, False) for item in items]
    runs = await fetch(database_dsn, "SELECT id, request_id, variables, status FROM pipeline_runs")
    assert {row["id"] for row in runs} == {item.run_id for item in items}
    assert {row["request_id"] for row in runs} == {item.id for item in items}
    assert all(row["status"] == "queued" for row in runs)
    assert all(orjson.loads(row["variables"]) == {"pull_request_id": 2} for row in runs)
    stored = await fetch(database_dsn, "SELECT id, run_id, outcome FROM hook_requests")
    assert {(r["id"], r["run_id"], r["outcome"]) for r in stored} == {
        (item.id, item.run_id, "accepted") for item in items
    }
    assert await requests_per_transaction(database_dsn) == per_transaction
    assert len(await transaction_ids(database_dsn)) == len(per_transaction)


async def test_a_lone_request_is_written_without_waiting_for_max_wait(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    # Nothing else arrives: waiting for the batch to fill would only delay this request.
    batcher = make_batcher(max_wait_ms=60_000.0)
    item = request(pipeline_id)
    async with asyncio.timeout(10):
        assert await batcher.submit(item) == Stored(item.run_id, False)
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert [row["id"] for row in runs] == [item.run_id]


async def test_requests_still_arriving_join_the_batch(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    # Handlers that submit one event-loop iteration apart are one stream: one transaction.
    batcher = make_batcher(max_wait_ms=60_000.0, writers=1)

    async def handler(item: PendingRequest, iterations: int) -> Stored:
        for _ in range(iterations):
            await asyncio.sleep(0)
        return await batcher.submit(item)

    items = [request(pipeline_id) for _ in range(12)]
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(handler(item, i % 2) for i, item in enumerate(items)))
    assert results == [Stored(item.run_id, False) for item in items]
    assert len(await transaction_ids(database_dsn)) == 1


async def test_batches_are_bounded_by_max_size(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_size=10, max_wait_ms=50.0)
    futures = [batcher.submit(request(pipeline_id)) for _ in range(25)]
    await asyncio.gather(*futures)
    assert len(await transaction_ids(database_dsn)) == 3  # 10 + 10 + 5


async def test_duplicates_within_one_batch_resolve_to_the_first_run(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_wait_ms=100.0, writers=1)
    hook_id = uuid.uuid4()
    first, second, third = (
        request(pipeline_id, hook_id=hook_id, delivery="same") for _ in range(3)
    )
    other_hook = request(pipeline_id, delivery="same")  # same delivery id, another hook
    results = await asyncio.gather(*(batcher.submit(i) for i in (first, second, third, other_hook)))
    assert results == [
        Stored(first.run_id, False),
        Stored(first.run_id, True),
        Stored(first.run_id, True),
        Stored(other_hook.run_id, False),
    ]
    assert len(await transaction_ids(database_dsn)) == 1
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {first.run_id, other_hook.run_id}
    rows = await fetch(
        database_dsn, "SELECT id, outcome, status_code, run_id, message FROM hook_requests"
    )
    by_id = {row["id"]: row for row in rows}
    assert (by_id[second.id]["outcome"], by_id[second.id]["status_code"]) == ("duplicate", 200)
    assert by_id[second.id]["run_id"] == first.run_id
    assert by_id[second.id]["message"] == (
        f"duplicate delivery 'same': already accepted as run {first.run_id}"
    )
    assert by_id[first.id]["outcome"] == "accepted"


async def test_duplicates_across_batches(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_wait_ms=0.0)
    hook_id = uuid.uuid4()
    original = request(pipeline_id, hook_id=hook_id, delivery="gh-1")
    assert await batcher.submit(original) == Stored(original.run_id, False)
    repeat = request(pipeline_id, hook_id=hook_id, delivery="gh-1")
    assert await batcher.submit(repeat) == Stored(original.run_id, True)
    # A second batcher (another worker process) sees the same original.
    other = make_batcher(max_wait_ms=0.0)
    assert await other.submit(request(pipeline_id, hook_id=hook_id, delivery="gh-1")) == Stored(
        original.run_id, True
    )
    # No delivery id: never a duplicate.
    plain = [request(pipeline_id, hook_id=hook_id) for _ in range(2)]
    assert [await batcher.submit(p) for p in plain] == [Stored(p.run_id, False) for p in plain]
    assert len(await fetch(database_dsn, "SELECT id FROM pipeline_runs")) == 3
    assert len(await transaction_ids(database_dsn)) == 5


async def add_outgoing_hook(dsn: str, pipeline_id: int) -> None:
    """An active outgoing hook on ``pipeline_id``, subscribed to run.queued."""
    await execute(
        dsn,
        "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events) "
        "VALUES (gen_random_uuid(), $1, 'notify', 'http://127.0.0.1:9/', '{run.queued}')",
        pipeline_id,
    )


async def test_batches_that_need_more_than_one_statement_are_written_in_a_transaction(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    # Batches are tried as one statement without BEGIN/COMMIT; one that turns out to need more
    # (an outgoing hook to notify, a repeated delivery) must be written whole, in a transaction.
    batcher = make_batcher(max_wait_ms=0.0, writers=1)
    first = request(pipeline_id, delivery="a")
    assert await batcher.submit(first) == Stored(first.run_id, False)
    await add_outgoing_hook(database_dsn, pipeline_id)
    second = request(pipeline_id, delivery="b")
    assert await batcher.submit(second) == Stored(second.run_id, False)
    repeat = request(pipeline_id, hook_id=first.hook_id, delivery="a")
    assert await batcher.submit(repeat) == Stored(first.run_id, True)
    later = [request(pipeline_id) for _ in range(2)]
    for item in later:  # the pipeline is now known to have an outgoing hook
        assert await batcher.submit(item) == Stored(item.run_id, False)

    deliveries = await fetch(database_dsn, "SELECT run_id, event FROM outgoing_deliveries")
    notified = [second.run_id] + [item.run_id for item in later]
    assert sorted((d["run_id"], d["event"]) for d in deliveries) == sorted(
        (run_id, "run.queued") for run_id in notified
    )
    history = await fetch(database_dsn, "SELECT id, outcome, run_id FROM hook_requests")
    assert len(history) == 5
    assert {row["id"]: row["run_id"] for row in history}[repeat.id] == first.run_id
    assert len(await fetch(database_dsn, "SELECT id FROM pipeline_runs")) == 4
    assert len(await transaction_ids(database_dsn)) == 5  # one per batch: none written twice


def logged_statements(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the batcher's writer connections send from now on: queries.sql's by
    name, BEGIN/COMMIT/ROLLBACK, with " failed" appended to those the server refused (asyncpg's
    own type introspection is left out)."""
    names = {text: name for name, text in QUERIES.items()}
    names |= {f"{word};": word for word in ("BEGIN", "COMMIT", "ROLLBACK")}  # asyncpg's text
    statements: list[str] = []
    connect = db.connection

    def record(query: Any) -> None:
        name = names.get(query.query)
        if name is not None:
            statements.append(name + (" failed" if query.exception is not None else ""))

    async def logged_connection(**options: Any) -> Any:
        conn = await connect(**options)
        conn.add_query_logger(record)
        return conn

    monkeypatch.setattr(db, "connection", logged_connection)
    return statements


async def test_a_batch_is_one_statement_unless_it_needs_a_transaction(
    make_batcher: Factory,
    pipeline_id: int,
    db: Database,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batcher_module, "TRANSACTION_STREAK", 0)  # what the batcher learns, alone
    statements = logged_statements(db, monkeypatch)
    batcher = make_batcher(max_wait_ms=0.0, writers=1)

    async def sent_for(item: PendingRequest) -> list[str]:
        statements.clear()
        assert await batcher.submit(item) == Stored(item.run_id, False)
        await asyncio.sleep(0)  # query loggers are called with call_soon
        return list(statements)

    # A new writer connection first asks who it is on the server (see test_a_write_still_...).
    assert await sent_for(request(pipeline_id)) == ["ingest_writer_backend", "ingest_insert_batch"]
    assert await sent_for(request(pipeline_id)) == ["ingest_insert_batch"]
    await add_outgoing_hook(database_dsn, pipeline_id)
    in_transaction = ["BEGIN", "ingest_insert_batch", "outgoing_enqueue_run_events", "COMMIT"]
    # The single statement finds the hook and aborts; the batch is written in a transaction.
    assert await sent_for(request(pipeline_id)) == ["ingest_insert_batch failed", *in_transaction]
    # Known now: straight to a transaction.
    assert await sent_for(request(pipeline_id)) == in_transaction
    await execute(database_dsn, "UPDATE outgoing_hooks SET active = false")
    assert await sent_for(request(pipeline_id)) == ["BEGIN", "ingest_insert_batch", "COMMIT"]
    assert await sent_for(request(pipeline_id)) == ["ingest_insert_batch"]
    deliveries = await fetch(database_dsn, "SELECT count(*) AS n FROM outgoing_deliveries")
    assert deliveries[0]["n"] == 2


async def test_batches_in_flight_at_once_share_delivery_ids_in_opposite_orders(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    # max_size 2: [d1, d2] and [d2, d1] are two batches written concurrently by two writers;
    # each delivery id gets one run, and its repeat resolves to it (whichever batch wins).
    batcher = make_batcher(max_size=2, max_wait_ms=0.0)
    hook_id = uuid.uuid4()
    items = [request(pipeline_id, hook_id=hook_id, delivery=d) for d in ("d1", "d2", "d2", "d1")]
    results = await asyncio.gather(*(batcher.submit(item) for item in items))
    runs = await fetch(database_dsn, "SELECT id, delivery_id FROM pipeline_runs")
    run_of = {row["delivery_id"]: row["id"] for row in runs}
    assert len(runs) == 2
    assert [r.run_id for r in results] == [run_of[item.delivery_id] for item in items]
    assert sorted(r.duplicate for r in results) == [False, False, True, True]
    history = await fetch(database_dsn, "SELECT outcome, run_id FROM hook_requests")
    assert sorted(row["outcome"] for row in history) == [
        "accepted", "accepted", "duplicate", "duplicate"
    ]  # fmt: skip
    assert {row["run_id"] for row in history} == set(run_of.values())


async def test_full_queue_raises_overloaded_at_once_and_keeps_what_was_queued(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_queue=3, max_wait_ms=10.0)
    queued = [batcher.submit(request(pipeline_id)) for _ in range(3)]
    with pytest.raises(Overloaded, match="the gateway is overloaded; retry later"):
        batcher.submit(request(pipeline_id))
    await asyncio.gather(*queued)
    assert len(await fetch(database_dsn, "SELECT id FROM hook_requests")) == 3
    await batcher.submit(request(pipeline_id))  # room again once the batch is written


@pytest.mark.parametrize("compressed_on", ["event loop", "helper thread"])
async def test_requests_without_a_run_and_body_storage_settings(
    make_batcher: Factory,
    pipeline_id: int,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    compressed_on: str,
) -> None:
    if compressed_on == "helper thread":  # what a batch of large bodies takes
        monkeypatch.setattr(batcher_module, "INLINE_COMPRESSION_BYTES", 0)
    incompressible = os.urandom(512)
    for setting in ("all", "failures", "none"):
        batcher = make_batcher(store_bodies=setting, max_wait_ms=0.0)
        accepted = request(pipeline_id)
        rejected = request(pipeline_id, outcome="rejected", status=401)
        skipped = request(pipeline_id, outcome="skipped")
        random_body = request(pipeline_id, outcome="rejected", status=400, body=incompressible)
        not_read = request(pipeline_id, outcome="rejected", status=413, body=None)
        items = [accepted, rejected, skipped, random_body, not_read]
        results = await asyncio.gather(*(batcher.submit(i) for i in items))
        assert results == [Stored(accepted.run_id, False)] + [Stored(None, False)] * 4
        rows = await fetch(
            database_dsn,
            "SELECT id, body, body_encoding, body_size, run_id FROM hook_requests "
            "WHERE id = ANY($1::uuid[])",
            [i.id for i in items],
        )
        by_id = {row["id"]: row for row in rows}
        stored = {
            name: by_id[item.id]["body_encoding"]
            for name, item in zip(("acc", "rej", "skip", "rand", "unread"), items, strict=True)
        }
        expected = {
            "all": {
                "acc": "zstd",
                "rej": "zstd",
                "skip": "zstd",
                "rand": "identity",
                "unread": None,
            },
            "failures": {
                "acc": None,
                "rej": "zstd",
                "skip": None,
                "rand": "identity",
                "unread": None,
            },
            "none": dict.fromkeys(("acc", "rej", "skip", "rand", "unread")),
        }[setting]
        assert stored == expected, setting
        if setting != "none":
            assert zstandard.ZstdDecompressor().decompress(by_id[rejected.id]["body"]) == PR_OPENED
            assert by_id[random_body.id]["body"] == incompressible
        assert by_id[rejected.id]["body_size"] == len(PR_OPENED)
        assert by_id[rejected.id]["run_id"] is None
    assert len(await fetch(database_dsn, "SELECT id FROM pipeline_runs")) == 3


async def test_a_row_the_database_refuses_fails_only_its_own_request(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_wait_ms=100.0)
    good = [request(pipeline_id) for _ in range(3)]
    poison = request(pipeline_id, variables={"title": "nul \u0000 byte"})  # jsonb refuses U+0000
    futures = [batcher.submit(item) for item in (good[0], poison, good[1], good[2])]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], RequestNotStored)
    assert [results[0], results[2], results[3]] == [Stored(g.run_id, False) for g in good]
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {g.run_id for g in good}


async def test_a_locked_pipeline_fails_only_its_own_requests(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    # A lock on one pipeline's row (its deletion, a concurrency change re-keying a backlog, any
    # long transaction) used to hold every batch with one of its requests until the statement
    # timeout (8 s), and then fail the worker's requests for every pipeline as an outage.
    [other] = await fetch(
        database_dsn,
        "INSERT INTO pipelines (environment_id, name, resource_type, resource_id, action_type) "
        "SELECT environment_id, 'Other', 'application', 2, 'deploy' FROM pipelines WHERE id = $1 "
        "RETURNING id",
        pipeline_id,
    )
    batcher = make_batcher(max_wait_ms=100.0)
    locker = await asyncpg.connect(database_dsn)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE", pipeline_id)
            locked = [request(pipeline_id) for _ in range(3)]
            free = [request(other["id"]) for _ in range(6)]
            mixed = [locked[0], *free[:3], locked[1], *free[3:], locked[2]]
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                *(batcher.submit(item) for item in mixed), return_exceptions=True
            )
            waited = asyncio.get_running_loop().time() - started
            by_item = dict(zip((item.id for item in mixed), results, strict=True))
            assert [by_item[item.id] for item in free] == [Stored(f.run_id, False) for f in free]
            assert all(isinstance(by_item[item.id], TransientConflict) for item in locked)
            assert waited < 7.5, waited  # the lock timeout, not the statement timeout
            # Not an outage: a request of another pipeline is written at once, lock still held.
            later = request(other["id"])
            assert await batcher.submit(later) == Stored(later.run_id, False)
    finally:
        await locker.close()
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {item.run_id for item in [*free, later]}


async def test_database_down_fails_fast_then_recovers_by_itself(
    make_batcher: Factory,
    config: Config,
    pipeline_id: int,
    database_dsn: str,
    server_dsn: str,
    template_database: str,
) -> None:
    database = await Database.connect(database_dsn, replace(config.database, pool_min_size=1))
    try:
        batcher = make_batcher(database, max_wait_ms=20.0, retry_after=1)
        assert await batcher.submit(request(pipeline_id)) is not None
        name = database_dsn.split("?", 1)[0].rsplit("/", 1)[1]
        await execute(server_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')

        batch = [batcher.submit(request(pipeline_id)) for _ in range(5)]
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        # Fail fast while it is down: refused at submit, nothing queued, no connection attempt.
        with pytest.raises(DatabaseUnavailable):
            batcher.submit(request(pipeline_id))
        assert len(batcher) == 0

        await execute(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        item = request(pipeline_id)

        async def attempt() -> Stored | None:
            try:
                return await batcher.submit(item)
            except DatabaseUnavailable:
                return None

        assert await wait_for(attempt, lambda stored: stored is not None) == Stored(
            item.run_id, False
        )
        [row] = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
        assert row["id"] == item.run_id
    finally:
        await database.close()


async def test_a_read_only_database_is_unavailable_not_a_bad_row(
    make_batcher: Factory,
    config: Config,
    pipeline_id: int,
    database_dsn: str,
    server_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a failover to a server that is still read-only, every statement fails the same
    way: the batch gets 503s and the back-off starts, instead of one transaction per request
    and a 500 each (each row taken for a bad one)."""
    # A first back-off long enough that the check below falls inside it on a loaded machine
    # (the default 50 ms could pass between the failed batch and the next submit).
    monkeypatch.setattr(batcher_module, "_FIRST_BACKOFF", 5.0)
    name = database_dsn.split("?", 1)[0].rsplit("/", 1)[1]
    await execute(server_dsn, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    database = await Database.connect(database_dsn, replace(config.database, pool_min_size=1))
    try:
        batcher = make_batcher(database, max_wait_ms=50.0, retry_after=1)
        results = await asyncio.gather(
            *(batcher.submit(request(pipeline_id)) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        with pytest.raises(DatabaseUnavailable):  # backing off: refused at once
            batcher.submit(request(pipeline_id))
    finally:
        await database.close()
        await execute(server_dsn, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    assert await fetch(database_dsn, "SELECT id FROM pipeline_runs") == []


async def test_close_flushes_everything_queued(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_size=8, max_wait_ms=5000.0)
    items = [request(pipeline_id) for _ in range(20)]
    futures = [batcher.submit(item) for item in items]
    await batcher.close()
    assert all(f.done() and not f.exception() for f in futures)
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {item.run_id for item in items}
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit(request(pipeline_id))


async def test_a_writer_connection_dropped_while_idle_is_replaced_not_a_503(
    make_batcher: Factory, pipeline_id: int, database_dsn: str
) -> None:
    batcher = make_batcher(max_wait_ms=0)
    first = request(pipeline_id)
    assert await batcher.submit(first) == Stored(first.run_id, False)  # opens a writer
    # The server drops every other connection of this database (as a restart would).
    await execute(
        database_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    await asyncio.sleep(0.2)  # the event loop sees the idle connection close
    second = request(pipeline_id)
    assert await batcher.submit(second) == Stored(second.run_id, False)


@pytest.fixture
async def through_proxy(config: Config, db: Database, database_dsn: str) -> AsyncIterator[Any]:
    """A Database whose connections (pool and writers) go through a CuttableProxy."""
    async with database_through_proxy(config, db, database_dsn) as pair:
        yield pair


async def test_a_batch_that_committed_as_its_connection_was_lost_is_answered_as_stored(
    make_batcher: Factory, pipeline_id: int, database_dsn: str, through_proxy: Any
) -> None:
    """The single statement commits but its answer never arrives: the sender must get its 202
    (a 503 has it deliver again, and without a delivery id that queues a second run)."""
    proxy, database = through_proxy
    batcher = make_batcher(database, max_wait_ms=0)
    warm = request(pipeline_id)
    assert await batcher.submit(warm) == Stored(warm.run_id, False)  # opens a writer
    proxy.hold_replies()
    item = request(pipeline_id)
    pending = batcher.submit(item)
    await wait_for(
        lambda: fetch(database_dsn, "SELECT 1 FROM pipeline_runs WHERE id = $1", item.run_id),
        bool,
    )
    assert proxy.sever_held() == 1  # the writer's answer was the one lost
    assert await pending == Stored(item.run_id, False)
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {warm.run_id, item.run_id}


async def test_a_transaction_lost_after_commit_resolves_duplicates_to_their_original_run(
    make_batcher: Factory, pipeline_id: int, database_dsn: str, through_proxy: Any
) -> None:
    proxy, database = through_proxy
    batcher = make_batcher(database, max_wait_ms=50.0)
    hook_id = uuid.uuid4()
    original = request(pipeline_id, hook_id=hook_id, delivery="d-1")
    assert await batcher.submit(original) == Stored(original.run_id, False)
    proxy.hold_replies(after=b"COMMIT")  # the repeat needs a transaction; its COMMIT is lost
    repeat = request(pipeline_id, hook_id=hook_id, delivery="d-1")
    fresh = request(pipeline_id, hook_id=hook_id, delivery="d-2")
    pending = [batcher.submit(repeat), batcher.submit(fresh)]
    await wait_for(
        lambda: fetch(
            database_dsn,
            "SELECT 1 FROM hook_requests WHERE id = ANY($1::uuid[])",
            [repeat.id, fresh.id],
        ),
        lambda rows: len(rows) == 2,
    )
    assert proxy.sever_held() == 1  # the writer's answer was the one lost
    assert await asyncio.gather(*pending) == [
        Stored(original.run_id, True),
        Stored(fresh.run_id, False),
    ]


async def test_a_write_still_waiting_when_its_connection_is_lost_is_ended_not_left_to_commit(
    make_batcher: Factory, pipeline_id: int, database_dsn: str, through_proxy: Any
) -> None:
    """The server has not noticed the loss and would commit once the lock it waits for is
    released: looking at the rows before ending it would answer 503 for a run stored later."""
    proxy, database = through_proxy
    batcher = make_batcher(database, max_wait_ms=0)
    warm = request(pipeline_id)
    assert await batcher.submit(warm) == Stored(warm.run_id, False)
    locker = await asyncpg.connect(database_dsn)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE pipeline_runs IN ACCESS EXCLUSIVE MODE")
        proxy.hold_replies()
        item = request(pipeline_id)
        pending = batcher.submit(item)
        await wait_for(
            lambda: fetch(
                database_dsn,
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'",
            ),
            bool,
        )
        assert proxy.sever_held() == 1  # the writer's statement was the one cut off
        with pytest.raises(DatabaseUnavailable):
            await pending
        await transaction.rollback()
    finally:
        await locker.close()
    # A writer left running would commit now that the lock is gone: give it the time to.
    await wait_for(
        lambda: fetch(
            database_dsn,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'WITH runs AS%'",
        ),
        lambda rows: not rows,
    )
    await asyncio.sleep(0.2)
    assert await fetch(database_dsn, "SELECT id FROM hook_requests WHERE id = $1", item.id) == []
    runs = await fetch(database_dsn, "SELECT id FROM pipeline_runs")
    assert {row["id"] for row in runs} == {warm.run_id}
