"""The per-process hook cache against a real database: warm hits, negative entries, NOTIFY
invalidation, the TTL safety net, secret rotation expiry and listener reconnection."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway.config import Config
from gateway.ingest import hook_cache
from gateway.ingest.evaluation import CompiledHook, evaluate
from gateway.ingest.hook_cache import MAX_ENTRIES, HookCache
from gateway.storage.database import Database
from tests.integration.ingest_helpers import (
    PR_OPENED,
    execute,
    fetch,
    github_headers,
    hook_path,
    seed_hook,
    wait_for,
)

SECRET = "the current secret"
OLD_SECRET = "the previous secret"


@pytest.fixture
async def pipeline_id(database_dsn: str) -> int:
    rows = await fetch(
        database_dsn,
        "WITH e AS (INSERT INTO environments (name) VALUES ('cache') RETURNING id) "
        "INSERT INTO pipelines (environment_id, name, resource_type, resource_id, action_type) "
        "SELECT id, 'Deploy', 'application', 1, 'deploy' FROM e RETURNING id",
    )
    return int(rows[0]["id"])


async def insert_hook(
    dsn: str, pipeline_id: int, hook_id: uuid.UUID | None = None, **columns: Any
) -> uuid.UUID:
    """Insert an incoming_hooks row directly (what the management API would store)."""
    hook_id = hook_id or uuid.uuid4()
    values: dict[str, Any] = {
        "id": hook_id,
        "pipeline_id": pipeline_id,
        "name": "cached hook",
        "action_type": "deploy",
        "secret": SECRET,
        "settings": {
            "variables": [{"name": "ref", "path": "pull_request.head.ref", "type": "string"}]
        },
        **columns,
    }
    names = list(values)
    params = [orjson.dumps(v).decode() if isinstance(v, dict) else v for v in values.values()]
    placeholders = ", ".join(
        f"${i}::jsonb" if isinstance(values[n], dict) else f"${i}" for i, n in enumerate(names, 1)
    )
    await execute(
        dsn, f"INSERT INTO incoming_hooks ({', '.join(names)}) VALUES ({placeholders})", *params
    )
    return hook_id


Factory = Callable[..., Any]


@pytest.fixture
async def make_cache(config: Config, db: Database) -> AsyncIterator[Factory]:
    caches: list[HookCache] = []

    async def factory(
        database: Database = db, max_entries: int = MAX_ENTRIES, **hooks: Any
    ) -> HookCache:
        cache = HookCache(
            database,
            replace(config, hooks=replace(config.hooks, **hooks)),
            max_entries=max_entries,
        )
        await cache.start()
        caches.append(cache)
        assert cache.listening
        return cache

    yield factory
    for cache in caches:
        await cache.close()


def accepts(hook: CompiledHook | None, secret: str) -> bool:
    assert hook is not None
    return evaluate(hook, github_headers(secret, PR_OPENED), PR_OPENED).status == 202


async def test_warm_and_malformed_lookups_do_not_touch_the_database(
    make_cache: Factory, config: Config, pipeline_id: int, database_dsn: str
) -> None:
    own = await Database.connect(database_dsn, config.database)
    cache = await make_cache(own)
    hook_id = await insert_hook(database_dsn, pipeline_id)
    hook = await cache.get(str(hook_id))
    assert hook is not None and hook.id == hook_id and hook.pipeline_id == pipeline_id
    await own.close()  # from here on, any query would fail
    assert await cache.get(str(hook_id)) is hook
    assert await cache.get(str(hook_id).upper()) is hook  # other spellings share the entry
    for malformed in ("not-a-uuid", "", "../etc", str(hook_id) + "0"):
        assert await cache.get(malformed) is None


async def test_concurrent_misses_compile_once(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache()
    hook_id = await insert_hook(database_dsn, pipeline_id)
    hooks = await asyncio.gather(*(cache.get(str(hook_id)) for _ in range(20)))
    assert hooks[0] is not None and all(h is hooks[0] for h in hooks)


async def test_unknown_ids_are_cached_briefly(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache()
    hook_id = uuid.uuid4()
    assert await cache.get(str(hook_id)) is None
    await insert_hook(database_dsn, pipeline_id, hook_id)  # INSERT does not notify
    assert await cache.get(str(hook_id)) is None  # the negative entry answered
    cache.invalidate(hook_id)
    hook = await cache.get(str(hook_id))
    assert hook is not None and hook.id == hook_id


async def test_a_full_cache_makes_room_for_a_tenth_of_its_size_at_a_time(
    make_cache: Factory, pipeline_id: int, database_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = await make_cache(max_entries=20)
    scans = 0
    evict = cache._evict

    def counting_evict(now: float) -> None:
        nonlocal scans
        scans += 1
        evict(now)

    monkeypatch.setattr(cache, "_evict", counting_evict)
    # The cache's monotonic clock, moved forward by hand below (its wall clock stays real).
    skipped = 0.0
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + skipped, time=time.time)
    monkeypatch.setattr(hook_cache, "time", clock)
    unknown = [str(uuid.uuid4()) for _ in range(5)]
    others = [str(await insert_hook(database_dsn, pipeline_id)) for _ in range(33)]
    # The first hook's entry expires before the others: its previous secret's grace period ends.
    first = await insert_hook(
        database_dsn,
        pipeline_id,
        previous_secret=OLD_SECRET,
        previous_secret_expires_at=datetime.now(UTC) + timedelta(seconds=30),
    )
    hooks = [str(first), *others]
    for raw_id in unknown + hooks[:15]:
        await cache.get(raw_id)
    assert len(cache) == 20 and scans == 0

    # Full: the unknown ids make room first, whatever their age.
    assert await cache.get(hooks[15]) is not None
    assert scans == 1 and len(cache) == 16
    assert not any(raw_id in cache for raw_id in unknown)
    assert all(raw_id in cache for raw_id in hooks[:16])

    # Full of hooks in use: the ones loaded longest ago go, two (a tenth) per scan, so that
    # 18 more misses scan 7 times, and the cache never outgrows its size.
    skipped = 40.0  # past the first hook's 30 s, within the others' cache_ttl (60 s)
    assert hooks[0] not in cache and hooks[1] in cache
    assert await cache.get(hooks[0]) is not None  # loaded again: now the newest
    for raw_id in hooks[16:34]:
        assert await cache.get(raw_id) is not None
        assert len(cache) <= 20
    assert scans == 1 + 7 and len(cache) == 20
    assert hooks[0] in cache and all(raw_id in cache for raw_id in hooks[15:34])
    assert not any(raw_id in cache for raw_id in hooks[1:15])


async def test_an_update_by_sql_invalidates_the_entry_via_notify(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache()  # cache_ttl stays 60 s: only NOTIFY can refresh it in time
    hook_id = await insert_hook(database_dsn, pipeline_id)
    before = await cache.get(str(hook_id))
    assert before is not None and before.active and accepts(before, SECRET)

    await execute(
        database_dsn, "UPDATE incoming_hooks SET active = false, secret = $2 WHERE id = $1",
        hook_id, "rotated",
    )  # fmt: skip
    after = await wait_for(
        lambda: cache.get(str(hook_id)), lambda h: h is not None and not h.active, within=5
    )
    assert after is not None and accepts(replace(after, active=True), "rotated")

    await execute(database_dsn, "DELETE FROM incoming_hooks WHERE id = $1", hook_id)
    await wait_for(lambda: cache.get(str(hook_id)), lambda h: h is None, within=5)


async def test_the_ttl_refreshes_an_entry_whose_notification_was_lost(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache(cache_ttl=0.5)
    hook_id = await insert_hook(database_dsn, pipeline_id)
    assert (await cache.get(str(hook_id))).name == "cached hook"  # type: ignore[union-attr]
    # Triggers off for this one statement (replica role): no NOTIFY is sent.
    await execute(
        database_dsn,
        "BEGIN; SET LOCAL session_replication_role = replica; "
        f"UPDATE incoming_hooks SET name = 'renamed' WHERE id = '{hook_id}'; COMMIT;",
    )
    assert (await cache.get(str(hook_id))).name == "cached hook"  # type: ignore[union-attr]
    await wait_for(
        lambda: cache.get(str(hook_id)),
        lambda h: h is not None and h.name == "renamed",
        within=5,
    )


async def test_rotation_both_secrets_pass_until_the_previous_one_expires(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    hook_id = await insert_hook(
        database_dsn,
        pipeline_id,
        previous_secret=OLD_SECRET,
        previous_secret_expires_at=expires,
    )
    during = await cache.get(str(hook_id))
    assert accepts(during, SECRET) and accepts(during, OLD_SECRET)
    # No change is notified: the entry itself expires with the previous secret.
    after = await wait_for(
        lambda: cache.get(str(hook_id)), lambda h: not accepts(h, OLD_SECRET), within=10
    )
    assert datetime.now(UTC) >= expires
    assert accepts(after, SECRET)


async def test_the_listener_reconnects_and_the_cache_starts_over(
    make_cache: Factory, pipeline_id: int, database_dsn: str
) -> None:
    cache = await make_cache()
    hook_id = await insert_hook(database_dsn, pipeline_id)
    assert await cache.get(str(hook_id)) is not None and len(cache) == 1

    listeners = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = $1"
    name = database_dsn.split("?", 1)[0].rsplit("/", 1)[1]
    [old] = await fetch(database_dsn, listeners, name)
    await execute(database_dsn, "SELECT pg_terminate_backend($1)", old["pid"])

    # Back: a new listening connection, and nothing cached from before the outage.
    await wait_for(
        lambda: fetch(database_dsn, listeners, name),
        lambda rows: len(rows) == 1 and rows[0]["pid"] != old["pid"] and cache.listening,
        within=10,
    )
    assert len(cache) == 0
    assert await cache.get(str(hook_id)) is not None
    await execute(database_dsn, "UPDATE incoming_hooks SET active = false WHERE id = $1", hook_id)
    await wait_for(
        lambda: cache.get(str(hook_id)), lambda h: h is not None and not h.active, within=5
    )


async def test_management_changes_apply_to_the_next_request_in_this_process(
    client: Any, admin_headers: dict[str, str]
) -> None:
    """No NOTIFY round trip needed for the process that made the change (read-your-writes)."""
    hook = await seed_hook(client, admin_headers)
    path, headers = hook_path(hook), {**admin_headers}
    warm = await client.post(
        path, data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert warm.status == 202
    await client.put(f"/hooks/incoming/{hook['id']}", json={"active": False}, headers=headers)
    inactive = await client.post(
        path, data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert inactive.status == 403
    await client.put(f"/hooks/incoming/{hook['id']}", json={"active": True}, headers=headers)
    rotated = await client.post(
        f"/hooks/incoming/{hook['id']}/secret/rotate",
        json={"grace_period_seconds": 0},
        headers=headers,
    )
    new_secret = (await rotated.json())["secret"]
    old = await client.post(path, data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED))
    assert old.status == 401
    new = await client.post(path, data=PR_OPENED, headers=github_headers(new_secret, PR_OPENED))
    assert new.status == 202
    await client.delete(f"/hooks/incoming/{hook['id']}", headers=headers)
    gone = await client.post(path, data=PR_OPENED, headers=github_headers(new_secret, PR_OPENED))
    assert gone.status == 404
