"""A create that refers to a row another request deletes meanwhile (after the view found it,
before its insert commits) is answered as if the row had been gone from the start: the 404 or
422 the view's own check gives, in plain words, never the foreign key's constraint name. A run's
state change, which writes the deliveries of its pipeline's outgoing hooks, skips a hook deleted
meanwhile rather than failing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import pytest

from gateway.storage.database import Database
from gateway.storage.references import FOREIGN_KEYS
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import create_hook, deliveries, hook_body
from tests.integration.race_helpers import behind_a_concurrent_change
from tests.integration.runs_helpers import claim, enqueue


async def _while_deleted(
    database_dsn: str, delete: str, row_id: Any, request: Awaitable[Any]
) -> tuple[int, dict[str, Any]]:
    """Run ``request`` while another transaction has deleted the row ``row_id`` with
    ``delete`` without committing; commit once the request's insert waits for that row (its
    foreign key check), and return the request's status and body."""
    response = await behind_a_concurrent_change(database_dsn, delete, (row_id,), request)
    return response.status, await response.json()


async def test_a_hook_created_on_a_pipeline_deleted_meanwhile_is_a_404_naming_the_pipeline(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    bodies = {
        "incoming": {"name": "h", "action_type": "deploy"},
        "outgoing": {
            "name": "o",
            "target_url": "https://example.com/hook",
            "trigger_when": {"events": ["run.completed"]},
        },
    }
    for kind, body in bodies.items():
        pipeline = await make_pipeline(client, admin_headers, environment["id"])
        status, answer = await _while_deleted(
            database_dsn,
            "DELETE FROM pipelines WHERE id = $1",
            pipeline["id"],
            client.post(
                f"/pipelines/{pipeline['id']}/hooks/{kind}", json=body, headers=admin_headers
            ),
        )
        # As a create on a pipeline deleted before it began (gateway.management.resources).
        assert (status, answer) == (404, {"message": "pipeline not found", "errors": None}), kind


async def _team(client: Any, admin_headers: dict[str, str], name: str) -> int:
    response = await client.post("/teams", json={"name": name}, headers=admin_headers)
    assert response.status == 201
    return int((await response.json())["id"])


async def _role(client: Any, admin_headers: dict[str, str], name: str) -> int:
    body = {"name": name, "permissions": ["environment:read"]}
    response = await client.post("/roles", json=body, headers=admin_headers)
    assert response.status == 201
    return int((await response.json())["id"])


async def test_a_member_added_to_a_team_deleted_meanwhile_is_a_404_naming_the_team(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    team_id = await _team(client, admin_headers, "ops")
    status, answer = await _while_deleted(
        database_dsn,
        "DELETE FROM teams WHERE id = $1",
        team_id,
        client.post(f"/teams/{team_id}/members", json={"user_id": 1}, headers=admin_headers),
    )
    assert (status, answer) == (404, {"message": f"team {team_id} not found", "errors": None})


@pytest.mark.parametrize("deleted", ["teams", "roles"])
async def test_a_link_to_a_team_or_role_deleted_meanwhile_is_answered_as_after_the_delete(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database, deleted: str
) -> None:
    environment = await make_environment(client, admin_headers)
    team_id = await _team(client, admin_headers, "ops")
    role_id = await _role(client, admin_headers, "reader")
    status, answer = await _while_deleted(
        database_dsn,
        f"DELETE FROM {deleted} WHERE id = $1",
        team_id if deleted == "teams" else role_id,
        client.post(
            f"/environments/{environment['id']}/teams/{team_id}/link",
            json={"role_id": role_id},
            headers=admin_headers,
        ),
    )
    if deleted == "teams":  # in the path: 404
        assert (status, answer) == (404, {"message": f"team {team_id} not found", "errors": None})
    else:  # in the body: the 422 of an unknown role
        assert (status, answer) == (
            422,
            {
                "message": "The given data was invalid: role_id",
                "errors": {"role_id": [f"no role with id {role_id}"]},
            },
        )


async def test_every_foreign_key_of_the_schema_is_named_in_words(db: Database) -> None:
    rows = await db.pool.fetch(
        "SELECT conname, conrelid::regclass::text AS referring FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
    )
    assert {r["conname"]: r["referring"] for r in rows} == {
        name: referring for name, (referring, _) in FOREIGN_KEYS.items()
    }


async def test_a_status_report_while_an_outgoing_hook_is_deleted_is_recorded_without_it(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    """The report writes a delivery for each hook of the pipeline subscribed to the event, in
    its transaction: a hook deleted meanwhile gets none, and the report is not refused."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    body = hook_body("https://example.com/notify", "run.completed")
    hook = await create_hook(client, admin_headers, pipeline["id"], body)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await claim(db, pipeline["id"])
    report = {"status": "completed", "lease_token": str(claimed["lease_token"]), "exit_code": 0}
    status, answer = await _while_deleted(
        database_dsn,
        "DELETE FROM outgoing_hooks WHERE id = $1",
        uuid.UUID(hook["id"]),
        client.post(f"/runs/{run['id']}/status", json=report, headers=admin_headers),
    )
    assert status == 200, answer
    assert answer["status"] == "completed"
    assert await deliveries(db, hook["id"]) == []
