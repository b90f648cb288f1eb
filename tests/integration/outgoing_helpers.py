"""Helpers for outgoing-hook tests: a real HTTP receiver, run life cycles, waiting on state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from gateway.config import Config, build_config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.storage import runs
from gateway.storage.database import Database, Record
from tests.conftest import TEST_SECRET_KEY

HANG = "hang"  # a planned response that never comes (until the receiver is shut down)
SLOW_BODY = "slow-body"  # 200 and headers at once, then a body that never finishes


def outgoing_config(database_dsn: str, **outgoing: Any) -> Config:
    """Test config: this database, no dispatcher inside the app (tests run their own), loopback
    targets allowed and a short exact retry schedule unless overridden."""
    settings = {
        "dispatcher_in_serve": False,
        "allow_private_targets": True,
        "retry_schedule": [0.1, 0.1],
        "retry_jitter": 0.0,
        "poll_interval": 0.5,
        **outgoing,
    }
    base = build_config({"outgoing": settings}, {})
    return replace(
        base,
        database=replace(base.database, dsn=database_dsn, pool_min_size=1, pool_max_size=8),
        server=replace(base.server, public_url="http://hooks.test"),
        security=replace(base.security, secret_keys=(TEST_SECRET_KEY,), key_file=""),
    )


@dataclass
class Seen:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An aiohttp app that records requests and answers from a per-path plan of statuses.

    A plan entry is a status, ``(status, headers)``, :data:`HANG` or :data:`SLOW_BODY` (200
    and the start of a body, then nothing); the last entry repeats. ``successes`` counts 2xx
    answers actually returned.
    """

    plans: dict[str, list[Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    successes: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def plan(self, path: str, *responses: Any) -> None:
        self.plans[path] = list(responses)

    def on(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.path, dict(request.headers), body))
        plan = self.plans.get(request.path, [200])
        step = plan.pop(0) if len(plan) > 1 else plan[0]
        if step == HANG:
            await asyncio.Event().wait()  # cancelled when the server shuts down
        if step == SLOW_BODY:
            self.successes += 1
            response = web.StreamResponse(status=200, headers={"Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b"accepted, more to come")
            await asyncio.Event().wait()
        if step == "wait-release":
            await self.release.wait()
            step = 200
        status, headers = step if isinstance(step, tuple) else (step, {})
        if 200 <= status < 300:
            self.successes += 1
        return web.Response(status=status, text=f"answer {status}", headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], limit: float = 15.0
) -> None:
    """Wait until ``check()`` is true; fail after ``limit`` seconds (a hang guard, not a
    timing assertion)."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def complete_run(db: Database, pipeline_id: int, **variables: Any) -> uuid.UUID:
    """Queue, claim and complete one run through the runs storage (each step in its own
    transaction, as an executor would); return its id."""
    async with db.transaction() as session:
        run = await runs.enqueue(session, pipeline_id, variables)
    claimed = await runs.claim(
        db, limit=1, lease_seconds=60, claimed_by="test", pipeline_id=pipeline_id
    )
    assert [r["id"] for r in claimed] == [run["id"]]
    await runs.report_status(
        db, run["id"], claimed[0]["lease_token"], "completed", message="deployed", exit_code=0
    )
    run_id: uuid.UUID = run["id"]
    return run_id


async def deliveries(db: Database, hook_id: str | uuid.UUID) -> list[Record]:
    """A hook's deliveries, oldest first."""
    return list(
        await db.pool.fetch(
            "SELECT * FROM outgoing_deliveries WHERE hook_id = $1 ORDER BY created_at, id",
            uuid.UUID(str(hook_id)),
        )
    )


async def attempts(db: Database, hook_id: str | uuid.UUID) -> list[Record]:
    """A hook's recorded attempts, oldest first."""
    return list(
        await db.pool.fetch(
            "SELECT * FROM hook_requests WHERE hook_id = $1 AND hook_type = 'outgoing' "
            "ORDER BY received_at, attempt",
            uuid.UUID(str(hook_id)),
        )
    )


def hook_body(target_url: str, *events: str, **extra: Any) -> dict[str, Any]:
    """A create body for an outgoing hook."""
    return {
        "name": extra.pop("name", "notify"),
        "target_url": target_url,
        "trigger_when": {"events": list(events or ("run.completed",))},
        **extra,
    }


async def create_hook(
    client: Any, headers: dict[str, str], pipeline_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Create an outgoing hook through the API (201 expected); its JSON."""
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/outgoing", json=body, headers=headers
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def dispatch_until(db: Database, config: Config, hook_id: str, statuses: list[str]) -> None:
    """Run a Dispatcher (started only now, after the test's own set-up) until the hook's
    deliveries have ``statuses`` (in any order)."""

    async def settled() -> bool:
        return sorted(d["status"] for d in await deliveries(db, hook_id)) == sorted(statuses)

    running = Dispatcher(db, config)
    await running.start()
    try:
        await eventually(settled)
    finally:
        await running.stop(0)
