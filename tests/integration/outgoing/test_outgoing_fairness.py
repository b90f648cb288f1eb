"""One environment does not take every delivery slot of a dispatcher: a claim takes no more
of an environment's deliveries than it has room for. Real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.storage import outgoing as store
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import complete_run, create_hook, hook_body


async def _hook_id(client: Any, headers: dict[str, str], pipeline_id: int, url: str) -> uuid.UUID:
    created = await create_hook(client, headers, pipeline_id, hook_body(url, name=url))
    return uuid.UUID(created["id"])


async def _other_pipeline(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    environment = await make_environment(client, headers, "other tenant")
    return await make_pipeline(client, headers, environment["id"], name="Other")


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
