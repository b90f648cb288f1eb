"""Outgoing hooks with the rest of the gateway: the ingest path, request history, redelivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.storage import outgoing
from gateway.storage.database import Database
from tests.integration.ingest_helpers import PR_OPENED, github_headers, hook_path
from tests.integration.management_helpers import (
    make_environment,
    make_member,
    make_pipeline,
    make_seed_hook,
)
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


@pytest.fixture
def config(database_dsn: str) -> Config:
    return outgoing_config(database_dsn)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    target = Receiver()
    server = await aiohttp_server(target.app())
    return target, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def dispatcher(db: Database, config: Config) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(db, config)
    await running.start()
    yield running
    await running.stop(0)


@pytest.fixture
async def pipeline(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    env = await make_environment(client, admin_headers)
    return await make_pipeline(client, admin_headers, env["id"])


async def recorded_attempts(db: Database, hook_id: str, count: int) -> bool:
    return len(await attempts(db, hook_id)) == count


async def test_a_signed_github_delivery_queues_a_run_that_notifies_run_queued(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    incoming = await make_seed_hook(client, admin_headers, pipeline["id"])
    outgoing = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(
            base + "/queued/{{ run.variables.pull_request_id }}",
            "run.queued",
            settings={
                "request_body": {
                    "ref": "{{ run.variables.source_ref }}",
                    "title": "{{ run.variables.pull_request_title }}",
                    "from": "{{ run.triggered_from.type }}",
                    "status": "{{ run.status }}",
                }
            },
        ),
    )
    response = await client.post(
        hook_path(incoming), data=PR_OPENED, headers=github_headers(incoming["secret"], PR_OPENED)
    )
    assert response.status == 202, await response.text()
    run_id = (await response.json())["run_id"]

    await eventually(lambda: recorded_attempts(db, outgoing["id"], 1))
    [seen] = target.seen
    assert seen.path == "/queued/2"
    assert Webhook(outgoing["secret"]).verify(seen.body, seen.headers) == {
        "ref": "changes",
        "title": "Update the README with new information.",
        "from": "incoming_hook",
        "status": "queued",
    }
    requests = await (
        await client.get(f"/hooks/outgoing/{outgoing['id']}/requests", headers=admin_headers)
    ).json()
    assert [r["run_id"] for r in requests] == [run_id]


async def test_redelivery_of_a_recorded_attempt(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/again"))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: recorded_attempts(db, hook["id"], 1))
    [original] = await attempts(db, hook["id"])

    # The attempt is part of the shared request history, visible with hook:read in its env.
    reader = await make_member(
        client, db, config, database_dsn, pipeline["environment_id"], ["hook:read"]
    )
    outsider = await make_member(client, db, config, database_dsn, None, ["hook:update"])
    shown = await client.get(f"/hook-requests/{original['id']}", headers=reader)
    assert shown.status == 200, await shown.text()
    detail = await shown.json()
    assert (detail["hook_type"], detail["environment_id"]) == (
        "outgoing",
        pipeline["environment_id"],
    )
    assert detail["headers"]["webhook-signature"] == "[redacted]"
    assert (await client.get(f"/hook-requests/{original['id']}", headers=outsider)).status == 404
    denied = await client.post(f"/hook-requests/{original['id']}/replay", headers=reader)
    assert denied.status == 403

    replay = await client.post(f"/hook-requests/{original['id']}/replay", headers=admin_headers)
    assert replay.status == 202, await replay.text()
    queued = await replay.json()
    assert queued["retry_of"] == str(original["id"])
    await eventually(lambda: recorded_attempts(db, hook["id"], 2))
    first, second = target.seen
    assert second.body == first.body  # the same event snapshot, rendered again
    assert second.headers["webhook-id"] == queued["delivery_id"] != first.headers["webhook-id"]
    assert Webhook(hook["secret"]).verify(second.body, second.headers)["type"] == "run.completed"
    recorded = await attempts(db, hook["id"])
    assert recorded[-1]["retry_of"] == original["id"]
    assert recorded[-1]["delivery_id"] == queued["delivery_id"]

    await client.put(f"/hooks/outgoing/{hook['id']}", json={"active": False}, headers=admin_headers)
    inactive = await client.post(f"/hook-requests/{original['id']}/replay", headers=admin_headers)
    assert inactive.status == 409
    assert "inactive" in (await inactive.json())["message"]


async def test_prune_removes_only_old_finished_deliveries(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body("https://x.example/", "run.status_changed")
    )
    await complete_run(db, pipeline["id"])  # queued, started, completed: three deliveries
    await db.pool.execute(
        "UPDATE outgoing_deliveries SET status = 'succeeded', "
        "updated_at = now() - interval '40 days' WHERE event IN ('run.queued', 'run.started')"
    )
    removed = await outgoing.prune_deliveries(db, datetime.now(UTC) - timedelta(days=30), batch=1)
    assert removed == 2
    assert [d["event"] for d in await deliveries(db, hook["id"])] == ["run.completed"]
