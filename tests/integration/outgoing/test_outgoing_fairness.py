"""One environment does not take every delivery slot of a dispatcher
(``[outgoing] per_environment_concurrency``): its many slow targets, each within
``per_target_concurrency``, hold at most that many requests, and other environments' deliveries
go on meanwhile. Real PostgreSQL, real loopback targets."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway import metrics
from gateway.dispatcher import dispatcher as dispatcher_module
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.storage import outgoing as store
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import (
    Receiver,
    attempts,
    complete_run,
    create_hook,
    deliveries,
    eventually,
    hook_body,
    outgoing_config,
)


@dataclass
class Gate:
    """A target holding every request until the test releases it; counts those it holds."""

    held: int = 0
    most: int = 0  # the most held at once
    answered: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.held += 1
        self.most = max(self.most, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        self.answered += 1
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def _outgoing_gauges() -> dict[str, float]:
    """This process's dispatcher gauges, as a scrape of /metrics shows them."""
    found: dict[str, float] = {}
    for line in metrics.render(None).decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == "hookgate_outgoing_in_flight":
            found["in_flight"] = float(value)
        elif name.startswith("hookgate_outgoing_at_limit{"):
            found[name.split('"')[1]] = float(value)
    return found


async def _hook_id(client: Any, headers: dict[str, str], pipeline_id: int, url: str) -> uuid.UUID:
    created = await create_hook(client, headers, pipeline_id, hook_body(url, name=url))
    return uuid.UUID(created["id"])


async def _other_pipeline(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    environment = await make_environment(client, headers, "other tenant")
    return await make_pipeline(client, headers, environment["id"], name="Other")


async def test_an_environment_of_hanging_targets_leaves_room_for_the_others(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    aiohttp_server: Any,
) -> None:
    # Four targets of one environment, each within its per-target limit, would take all four
    # slots of the process: the other environment's delivery would wait for them.
    gate = Gate()
    config = outgoing_config(
        database_dsn,
        timeout=30,
        concurrency=4,
        per_target_concurrency=1,
        per_environment_concurrency=2,
    )
    for _ in range(4):
        server = await aiohttp_server(gate.app())  # a port of its own: a target of its own
        await _hook_id(client, admin_headers, pipeline["id"], f"http://127.0.0.1:{server.port}/")
    for _ in range(2):
        await complete_run(db, pipeline["id"])  # 8 deliveries
    other = await _other_pipeline(client, admin_headers)
    target, base = receiver
    other_hook = await _hook_id(client, admin_headers, other["id"], base + "/other")
    running = Dispatcher(db, config)
    await running.start()
    try:
        await eventually(lambda: gate.held >= 2)
        await complete_run(db, other["id"])
        await eventually(lambda: target.successes == 1)
        assert (gate.held, gate.most) == (2, 2)
        # Operators see the saturation: two requests in flight, the environment and both
        # targets (one slot each) at their limit. (The other delivery's task ends just after
        # its target answered.)
        busy = {"in_flight": 2.0, "target": 2.0, "environment": 1.0}
        await eventually(lambda: _outgoing_gauges() == busy)
        gate.release.set()
        await eventually(lambda: gate.answered == 8)
        idle = {"in_flight": 0.0, "target": 0.0, "environment": 0.0}
        await eventually(lambda: _outgoing_gauges() == idle)
    finally:
        gate.release.set()
        await running.stop(5)
    assert gate.most == 2
    assert [d["status"] for d in await deliveries(db, other_hook)] == ["succeeded"]


async def test_a_delivery_claimed_past_its_environments_limit_is_handed_back_unchanged(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A claim that does not know the environment's room (as if it raced) takes all three: the
    # dispatcher starts one and gives the other two back, their attempt not used up.
    gate = Gate()
    server = await aiohttp_server(gate.app())
    config = outgoing_config(
        database_dsn, timeout=30, poll_interval=3600, per_environment_concurrency=1
    )
    hook = await _hook_id(client, admin_headers, pipeline["id"], f"http://127.0.0.1:{server.port}/")
    for _ in range(3):
        await complete_run(db, pipeline["id"])
    real_claim = store.claim_deliveries

    async def unaware_claim(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("per_environment", None)
        kwargs.pop("environment_room", None)
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(dispatcher_module.store, "claim_deliveries", unaware_claim)

    async def one_sent_two_handed_back() -> bool:
        states = sorted((d["status"], d["attempt"]) for d in await deliveries(db, hook))
        return states == [("delivering", 1), ("pending", 0), ("pending", 0)]

    running = Dispatcher(db, config)
    await running.start()
    try:
        await eventually(lambda: gate.held == 1)
        await eventually(one_sent_two_handed_back)
        assert (gate.held, gate.most) == (1, 1)
        assert await attempts(db, hook) == []
    finally:
        gate.release.set()
        await running.stop(5)


async def test_a_claim_takes_no_more_of_an_environment_than_it_has_room_for(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    # Environment "one": hook a with a backlog (8 deliveries, the oldest), then hook b (2);
    # environment "two": hook c (3).
    one = pipeline["environment_id"]
    a = await _hook_id(client, admin_headers, pipeline["id"], "http://t/a")
    for _ in range(6):
        await complete_run(db, pipeline["id"])
    b = await _hook_id(client, admin_headers, pipeline["id"], "http://t/b")
    for _ in range(2):
        await complete_run(db, pipeline["id"])
    other = await _other_pipeline(client, admin_headers)
    two = other["environment_id"]
    c = await _hook_id(client, admin_headers, other["id"], "http://t/c")
    for _ in range(3):
        await complete_run(db, other["id"])
    hooks = {"a": a, "b": b, "c": c}

    async def claim(**kwargs: Any) -> dict[str, int]:
        rows = await store.claim_deliveries(db, 64, 60, [], 4, **kwargs)
        await store.release_deliveries(db, [(r["id"], r["attempt"]) for r in rows])
        expected = {a: one, b: one, c: two}
        assert all(r["environment_id"] == expected[r["hook_id"]] for r in rows)
        return {name: sum(r["hook_id"] == hook for r in rows) for name, hook in hooks.items()}

    assert await claim() == {"a": 4, "b": 2, "c": 3}
    # Ranked after each hook's own limit: a's backlog beyond 4 does not use up one's room.
    assert await claim(per_environment=6) == {"a": 4, "b": 2, "c": 3}
    assert await claim(per_environment=5) == {"a": 4, "b": 1, "c": 3}
    assert await claim(per_environment=5, environment_room={one: 2}) == {"a": 2, "b": 0, "c": 3}
    assert await claim(per_environment=5, environment_room={one: 0}) == {"a": 0, "b": 0, "c": 3}
    assert await claim(per_environment=1, environment_room={two: 3}) == {"a": 1, "b": 0, "c": 3}

    # A busy environment's due deliveries, and its expired leases, wake no one: only a finished
    # delivery of its own frees room for them.
    assert await _due_now(db, [one])  # two's are
    assert await store.seconds_until_due(db, [], (), [one, two]) is None
    assert await store.seconds_until_due(db, [c], (), [one]) is None
    await store.claim_deliveries(db, 64, 0.0, [], 64)  # every lease is over at once
    assert await _due_now(db, [one])
    assert await store.seconds_until_due(db, [], (), [one, two]) is None


async def _due_now(db: Database, busy_environments: list[int]) -> bool:
    due = await store.seconds_until_due(db, [], (), busy_environments)
    return due is not None and due <= 0
