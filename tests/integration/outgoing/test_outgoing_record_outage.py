"""An answered delivery while the database is away for longer than a delivery's lease: its
attempt is recorded once the database is back, however long that takes, and is not sent again
by the dispatcher that holds the answer; a stop ends the recording's retries and logs what was
not recorded. The database is cut for real (a TCP proxy between the dispatcher and PostgreSQL);
the target is a real HTTP server on loopback. The lease is made short (1.5 s) so that it runs
out during each outage, as a 10 s lease did during the 15 s outage that sent deliveries twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway import metrics
from gateway.config import Config
from gateway.dispatcher import dispatcher as dispatcher_module
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.shutdown import KILL_GRACE
from gateway.storage import outgoing as store
from gateway.storage.database import Database, Record
from tests.integration.ops_helpers import parse_metrics, sample
from tests.integration.outgoing_helpers import (
    attempts,
    complete_run,
    create_hook,
    deliveries,
    eventually,
    hook_body,
    outgoing_config,
)
from tests.integration.pg_partition import CuttableProxy, database_through_proxy

# Longer than the 7.75 s the dispatcher used to try recording for before it gave up.
LONG_OUTAGE = 9.0
# A path and query that are credentials for some targets: never in a log.
SECRET_PATH = "/services/T0001/B0002/s3cr3tXYZtoken"
SECRET_QUERY = "api_key=k3yABCDEF123"


@pytest.fixture
def config(database_dsn: str) -> Config:
    return outgoing_config(database_dsn, timeout=1.0, poll_interval=0.2)


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases of timeout (1 s) + 0.5 s: they run out during every outage below."""
    monkeypatch.setattr(dispatcher_module, "LEASE_MARGIN", 0.5)


class Target:
    """A loopback receiver that counts requests per delivery (``webhook-id``) and cuts the
    dispatcher's database just as it answers the first one."""

    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.sent: list[str] = []  # webhook-id of each request, in order
        self.on_request: list[Any] = []  # coroutines run before answering (one per request)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.sent.append(request.headers["webhook-id"])
        if len(self.sent) == 1:
            self.proxy.cut()  # the database goes away as the target answers 200
        if self.on_request:
            await self.on_request.pop(0)(request)
        return web.Response(text="ok")

    async def start(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_post(SECRET_PATH, self.handle)
        server = await aiohttp_server(app)
        return f"http://127.0.0.1:{server.port}{SECRET_PATH}?{SECRET_QUERY}"


async def _hook(client: Any, headers: dict[str, str], pipeline_id: int, url: str) -> str:
    return str((await create_hook(client, headers, pipeline_id, hook_body(url)))["id"])


@dataclass
class Delivering:
    """A running dispatcher whose database connections go through ``proxy``; a hook of the
    pipeline that sends to ``target``."""

    proxy: CuttableProxy
    target: Target
    hook_id: str
    dispatcher: Dispatcher


@pytest.fixture
async def delivering(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    aiohttp_server: Any,
) -> AsyncIterator[Delivering]:
    async with database_through_proxy(config, db, config.database.dsn) as (proxy, through):
        target = Target(proxy)
        url = await target.start(aiohttp_server)
        hook_id = await _hook(client, admin_headers, pipeline["id"], url)
        dispatcher = Dispatcher(through, config)
        await dispatcher.start()
        try:
            yield Delivering(proxy, target, hook_id, dispatcher)
        finally:
            proxy.heal()
            await dispatcher.stop(0)


async def _delivery(db: Database, delivery_id: str) -> Record:
    row = await db.pool.fetchrow(
        "SELECT *, locked_until < now() AS lease_over FROM outgoing_deliveries WHERE id = $1",
        uuid.UUID(delivery_id),
    )
    assert row is not None
    return row


def _count_failed_recordings(monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    """The failures of the dispatcher's tries to record an attempt, as they happen (its later
    tries log at debug level, which an earlier test's log configuration may drop)."""
    failed: list[Exception] = []
    record = store.record_attempt

    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return await record(*args, **kwargs)
        except Exception as exc:
            failed.append(exc)
            raise

    monkeypatch.setattr(dispatcher_module.store, "record_attempt", counted)
    return failed


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_an_answer_is_recorded_once_through_an_outage_longer_than_its_lease(
    pipeline: dict[str, Any], db: Database, delivering: Delivering
) -> None:
    proxy, target, hook_id = delivering.proxy, delivering.target, delivering.hook_id
    with capture_logs() as logs:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: len(target.sent) == 1)
        # Cut as the target answered; back after LONG_OUTAGE seconds.
        asyncio.get_running_loop().call_later(LONG_OUTAGE, proxy.heal)

        async def finished() -> bool:
            return [d["status"] for d in await deliveries(db, hook_id)] == ["succeeded"]

        await eventually(finished, limit=LONG_OUTAGE + 20)
        # The attempt is logged once its record has committed, when the dispatcher's task next
        # runs: the delivery can read succeeded a moment before.
        await eventually(lambda: _events(logs, "outgoing_delivery_attempt") != [])
    # Sent once (a resend would have come before the delivery could end succeeded).
    assert len(target.sent) == 1
    [recorded] = await attempts(db, hook_id)
    assert (recorded["outcome"], recorded["status_code"], recorded["attempt"]) == (
        "succeeded",
        200,
        1,
    )
    [delivery] = await deliveries(db, hook_id)
    assert delivery["attempt"] == 1
    # Tried again for the whole outage, past the old 7.75 s, and never given up.
    assert _events(logs, "outgoing_attempt_not_recorded") == []
    [logged] = _events(logs, "outgoing_delivery_attempt")
    assert (logged["attempt"], logged["lease_lost"]) == (1, False)
    # One warning for the outage, not one per try (each delivery in flight tries every 2 s;
    # the later tries are debug lines); the late record says how long it took.
    tries = _events(logs, "outgoing_attempt_record_failed")
    warned = [e for e in tries if e["log_level"] == "warning"]
    assert [e["retry_in"] for e in warned] == [0.25], tries
    [late] = _events(logs, "outgoing_attempt_recorded_late")
    assert late["failed_tries"] >= 5 and late["waited_s"] > 7.75, late


async def test_the_claim_skips_a_delivery_whose_answer_this_dispatcher_still_records(
    pipeline: dict[str, Any],
    db: Database,
    delivering: Delivering,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, target, hook_id = delivering.proxy, delivering.target, delivering.hook_id
    first_seen: list[Record] = []
    failed_tries = _count_failed_recordings(monkeypatch)

    async def note_the_first(_request: web.Request) -> None:
        first_seen.append(await _delivery(db, target.sent[0]))

    with capture_logs() as logs:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: len(target.sent) == 1)
        # While the database is away for the dispatcher, a second delivery is written.
        target.on_request = [note_the_first]
        await complete_run(db, pipeline["id"])

        # The database comes back at the start of a 2 s pause of the recording, after the
        # first delivery's lease ran out: the claim loop (every 0.2 s) claims before the
        # recording is tried again.
        def long_pause_began() -> bool:  # tries failed: 0.25, 0.5, 1, 2, 2 s pauses begun
            return len(failed_tries) >= 5

        await eventually(long_pause_began)
        assert (await _delivery(db, target.sent[0]))["lease_over"]
        proxy.heal()

        async def both_finished() -> bool:
            statuses = [d["status"] for d in await deliveries(db, hook_id)]
            return statuses == ["succeeded", "succeeded"]

        await eventually(both_finished)
    # The second delivery was claimed (and sent) while the first, its lease over, was still
    # being recorded: that claim left the first alone.
    assert sorted(Counter(target.sent).values()) == [1, 1]
    first, second = target.sent
    [seen] = first_seen
    assert (seen["status"], seen["attempt"], seen["lease_over"]) == ("delivering", 1, True)
    assert {(a["delivery_id"], a["attempt"]) for a in await attempts(db, hook_id)} == {
        (first, 1),
        (second, 1),
    }
    assert _events(logs, "outgoing_attempt_not_recorded") == []


async def test_a_stop_ends_the_retries_of_a_recording_and_logs_what_was_not_recorded(
    pipeline: dict[str, Any], db: Database, delivering: Delivering
) -> None:
    proxy, target, hook_id = delivering.proxy, delivering.target, delivering.hook_id
    before = _attempts_counted()
    with capture_logs() as logs:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _events(logs, "outgoing_attempt_record_failed") != [])
        # The database stays away. A stop must end within its bound (grace, here 0, plus the
        # KILL_GRACE a supervisor allows before it kills), not wait for the database.
        await asyncio.wait_for(delivering.dispatcher.stop(0), KILL_GRACE)
    proxy.heal()
    # The request went out and was answered: the metric counts it, recorded or not.
    assert _attempts_counted() - before == 1
    [delivery_id] = target.sent
    [lost] = _events(logs, "outgoing_attempt_not_recorded")
    assert (lost["delivery_id"], lost["hook_id"], lost["attempt"]) == (delivery_id, hook_id, 1)
    assert (lost["outcome"], lost["status_code"]) == ("succeeded", 200)
    assert lost["log_level"] == "error"
    # Not recorded: the delivery is sent again once its lease runs out (same webhook-id).
    assert await attempts(db, hook_id) == []
    [delivery] = await deliveries(db, hook_id)
    assert (delivery["status"], delivery["attempt"]) == ("delivering", 1)
    # No log line holds the target URL's path or query.
    for event in logs:
        text = repr(event)
        assert "s3cr3tXYZtoken" not in text and "k3yABCDEF123" not in text, event


def _attempts_counted() -> float:
    """hookgate_outgoing_attempts_total{outcome="succeeded"} of this process."""
    parsed = parse_metrics(metrics.render(None).decode())
    return sample(parsed, "hookgate_outgoing_attempts_total", outcome="succeeded")


async def test_claims_and_due_times_leave_the_deliveries_being_recorded_alone(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    hook_id = await _hook(client, admin_headers, pipeline["id"], "http://127.0.0.1:9/x")
    await complete_run(db, pipeline["id"])
    [claimed] = await store.claim_deliveries(db, 10, 0.0, [], 10)  # its lease is over at once
    recording = [claimed["id"]]
    assert await store.claim_deliveries(db, 10, 60.0, [], 10, recording=recording) == []
    # Its lease does not make the caller's loop wake at once (and again and again).
    assert await store.seconds_until_due(db, [], recording) is None
    due = await store.seconds_until_due(db, [])
    assert due is not None and due <= 0
    [again] = await store.claim_deliveries(db, 10, 60.0, [], 10)  # anyone else's claim
    assert (again["id"], again["attempt"]) == (claimed["id"], 2)
    assert [d["attempt"] for d in await deliveries(db, hook_id)] == [2]
