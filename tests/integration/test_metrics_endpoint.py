"""``GET /metrics`` on the ingest table: real requests and deliveries move the right series."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.storage.database import Database
from tests.integration.ingest_helpers import create_hook, new_pipeline
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.ops_helpers import call_hook, sample, scrape
from tests.integration.outgoing_helpers import (
    Receiver,
    complete_run,
    deliveries,
    eventually,
    hook_body,
    outgoing_config,
)

REQUESTS = "hookgate_ingest_requests_total"


@pytest.fixture
def config(database_dsn: str) -> Config:
    return outgoing_config(database_dsn)  # no dispatcher inside the app: the test runs one


async def test_ingest_requests_are_counted_by_outcome_and_status(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hook = await create_hook(client, admin_headers, await new_pipeline(client, admin_headers))
    before = await scrape(client)
    delivery = str(uuid.uuid4())
    assert (await call_hook(client, hook, delivery=delivery)).status == 202
    assert (await call_hook(client, hook, delivery=delivery)).status == 200
    assert (await call_hook(client, hook, "wrong secret")).status == 401
    assert (await client.post(f"/hooks/incoming/{uuid.uuid4()}", data=b"{}")).status == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta(REQUESTS, outcome="accepted", status="202") == 1
    assert delta(REQUESTS, outcome="duplicate", status="200") == 1
    assert delta(REQUESTS, outcome="rejected", status="401") == 1
    assert delta(REQUESTS, outcome="rejected", status="404") == 1
    assert delta("hookgate_ingest_latency_seconds_count") == 4
    # Three history rows were written (the 404 has no hook to record it under).
    assert delta("hookgate_batch_size_sum") == 3
    assert delta("hookgate_batch_size_count") >= 1
    assert sample(after, "hookgate_batch_queue_depth") == 0
    assert sample(after, "hookgate_db_pool_size") >= 1


async def test_management_requests_are_counted_by_route_template_and_status(
    client: Any, admin_headers: dict[str, str]
) -> None:
    pipeline = await new_pipeline(client, admin_headers)
    before = await scrape(client)
    assert (await client.get(f"/pipelines/{pipeline}", headers=admin_headers)).status == 200
    assert (await client.get("/pipelines/999999", headers=admin_headers)).status == 404
    assert (await client.get(f"/pipelines/{pipeline}")).status == 401  # no token
    assert (await client.get("/no/such/route", headers=admin_headers)).status == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    # The route's template, never the path asked for: the label set stays bounded (and an
    # unknown path, answered by the router, is not counted here at all).
    route = {"method": "GET", "route": "/pipelines/{pipeline_id}"}
    assert delta("hookgate_management_requests_total", **route, status="200") == 1
    assert delta("hookgate_management_requests_total", **route, status="404") == 1
    assert delta("hookgate_management_requests_total", **route, status="401") == 1
    assert delta("hookgate_management_latency_seconds_count", **route) == 3
    names = {name for name, labels in after if name.startswith("hookgate_management_")}
    routes = {dict(labels).get("route") for name, labels in after if name in names}
    assert routes and all(r is not None and str(pipeline) not in r for r in routes), routes
    assert not any("/no/such/route" in str(r) for r in routes)


async def test_outgoing_attempts_and_give_ups_are_counted(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    config: Config,
    aiohttp_server: Any,
) -> None:
    target = Receiver()
    target.plan("/gone", 410)  # gives up at once (and disables the hook)
    base = f"http://127.0.0.1:{(await aiohttp_server(target.app())).port}"
    env = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, env["id"])
    ids = []
    for path in ("/ok", "/gone"):
        response = await client.post(
            f"/pipelines/{pipeline['id']}/hooks/outgoing",
            json=hook_body(base + path, requires_secret=True),
            headers=admin_headers,
        )
        assert response.status == 201, await response.text()
        ids.append((await response.json())["id"])
    before = await scrape(client)

    dispatcher = Dispatcher(db, config)
    await dispatcher.start()
    try:
        await complete_run(db, pipeline["id"])

        async def finished() -> bool:
            states = [d["status"] for hook_id in ids for d in await deliveries(db, hook_id)]
            return states == ["succeeded", "failed"]

        await eventually(finished)
    finally:
        await dispatcher.stop(0)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("hookgate_outgoing_attempts_total", outcome="succeeded") == 1
    assert delta("hookgate_outgoing_attempts_total", outcome="failed") == 1
    assert delta("hookgate_outgoing_failures_total") == 1


async def test_a_blocked_event_loop_shows_in_the_lag_histogram(client: Any) -> None:
    lag = "hookgate_event_loop_lag_seconds"

    def over_quarter_second(parsed: dict[Any, float]) -> float:
        return sample(parsed, f"{lag}_count") - sample(parsed, f"{lag}_bucket", le="0.25")

    before = await scrape(client)
    assert (f"{lag}_count", ()) in before  # the series is there from the start
    # Holds the loop the app and its watcher run on, as a blocking call would: whenever in its
    # 0.1 s sleep the watcher was, it wakes at least 0.4 s late.
    time.sleep(0.5)  # noqa: ASYNC251

    async def counted() -> bool:
        return over_quarter_second(await scrape(client)) > over_quarter_second(before)

    await eventually(counted)
