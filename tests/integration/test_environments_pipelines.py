"""Environments and pipelines through the management API, as admins and as team members."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from gateway.config import Config
from gateway.storage.database import Database
from tests.integration.management_helpers import (
    make_environment,
    make_member,
    make_pipeline,
    make_seed_hook,
    parse_links,
)

READER = ["environment:read", "pipeline:read"]
EDITOR = ["environment:read", "pipeline:read", "pipeline:create", "pipeline:update"]


@pytest.fixture
async def member_factory(client: Any, db: Database, config: Config, database_dsn: str) -> Any:
    async def make(environment_id: int | None, permissions: list[str]) -> dict[str, str]:
        return await make_member(client, db, config, database_dsn, environment_id, permissions)

    return make


# Environments ----------------------------------------------------------------------------------


async def test_admin_creates_and_reads_an_environment(
    client: Any, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/environments", json={"name": "production", "description": "live"}, headers=admin_headers
    )
    assert response.status == 201
    created = await response.json()
    assert created["name"] == "production" and created["description"] == "live"
    assert response.headers["Location"] == f"/environments/{created['id']}"

    response = await client.get(f"/environments/{created['id']}", headers=admin_headers)
    assert response.status == 200
    assert await response.json() == created


async def test_environment_names_are_unique(client: Any, admin_headers: dict[str, str]) -> None:
    await make_environment(client, admin_headers, "staging")
    response = await client.post("/environments", json={"name": "staging"}, headers=admin_headers)
    assert response.status == 409
    assert (await response.json())["message"] == "an environment named 'staging' already exists"


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"name": ["is required"]}),
        ({"name": ""}, {"name": ["must not be empty"]}),
        ({"name": "x" * 101}, {"name": ["must be at most 100 characters"]}),
        ({"name": "a", "description": 5}, {"description": ["must be a string, got an integer"]}),
    ],
)
async def test_environment_validation(
    client: Any, admin_headers: dict[str, str], payload: dict[str, Any], errors: Any
) -> None:
    response = await client.post("/environments", json=payload, headers=admin_headers)
    assert response.status == 422
    assert (await response.json())["errors"] == errors


async def test_unknown_environment_field_is_rejected(
    client: Any, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/environments", json={"name": "a", "colour": "red"}, headers=admin_headers
    )
    assert response.status == 422
    body = await response.json()
    assert body["message"] == "The given data was invalid: colour"
    assert body["errors"]["colour"][0].startswith("unknown field")


async def test_only_admins_create_environments(
    client: Any, admin_headers: dict[str, str], member_factory: Any
) -> None:
    environment = await make_environment(client, admin_headers)
    member = await member_factory(environment["id"], READER)
    response = await client.post("/environments", json={"name": "mine"}, headers=member)
    assert response.status == 403
    assert (await response.json())["message"] == "this action requires an administrator"


async def test_requests_without_a_token_get_401(client: Any) -> None:
    for method, path in (
        ("GET", "/environments"),
        ("POST", "/environments"),
        ("GET", "/environments/1"),
        ("GET", "/environments/1/pipelines"),
        ("GET", "/pipelines/1"),
        ("DELETE", "/pipelines/1"),
    ):
        response = await client.request(method, path)
        assert response.status == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_members_list_only_their_environments(
    client: Any, admin_headers: dict[str, str], member_factory: Any
) -> None:
    mine = await make_environment(client, admin_headers, "mine")
    await make_environment(client, admin_headers, "theirs")
    member = await member_factory(mine["id"], READER)

    response = await client.get("/environments", headers=member)
    assert response.status == 200
    assert [e["name"] for e in await response.json()] == ["mine"]
    assert response.headers["X-Total-Count"] == "1"

    response = await client.get("/environments", headers=admin_headers)
    assert [e["name"] for e in await response.json()] == ["mine", "theirs"]


async def test_environment_list_pagination_link_header(
    client: Any, admin_headers: dict[str, str]
) -> None:
    for i in range(5):
        await make_environment(client, admin_headers, f"env-{i}")
    response = await client.get("/environments?page=2&per_page=2", headers=admin_headers)
    assert response.status == 200
    assert [e["name"] for e in await response.json()] == ["env-2", "env-3"]
    assert response.headers["X-Total-Count"] == "5"
    assert parse_links(response.headers["Link"]) == {
        "first": {"page": "1", "per_page": "2"},
        "prev": {"page": "1", "per_page": "2"},
        "next": {"page": "3", "per_page": "2"},
        "last": {"page": "3", "per_page": "2"},
    }

    response = await client.get("/environments?page=9&per_page=2", headers=admin_headers)
    assert await response.json() == []
    assert response.headers["X-Total-Count"] == "5"

    response = await client.get("/environments?per_page=101", headers=admin_headers)
    assert response.status == 422
    assert (await response.json())["errors"] == {
        "per_page": ["must be an integer between 1 and 100"]
    }


async def test_environment_visibility_and_permission(
    client: Any, admin_headers: dict[str, str], member_factory: Any
) -> None:
    mine = await make_environment(client, admin_headers)
    other = await make_environment(client, admin_headers)
    reader = await member_factory(mine["id"], ["environment:read"])
    linked_without_read = await member_factory(mine["id"], ["pipeline:read"])

    assert (await client.get(f"/environments/{mine['id']}", headers=reader)).status == 200

    response = await client.get(f"/environments/{other['id']}", headers=reader)
    assert response.status == 404
    assert (await response.json())["message"] == "environment not found"

    response = await client.get(f"/environments/{mine['id']}", headers=linked_without_read)
    assert response.status == 403
    assert (await response.json())["message"] == (
        f"missing permission 'environment:read' in environment {mine['id']}"
    )


@pytest.mark.parametrize("path", ["/environments/999", "/environments/abc", "/environments/0"])
async def test_unknown_environment_is_404(
    client: Any, admin_headers: dict[str, str], path: str
) -> None:
    response = await client.get(path, headers=admin_headers)
    assert response.status == 404
    assert (await response.json())["message"] == "environment not found"


# Pipelines -------------------------------------------------------------------------------------


async def test_pipeline_crud(client: Any, admin_headers: dict[str, str]) -> None:
    environment = await make_environment(client, admin_headers)
    response = await client.post(
        f"/environments/{environment['id']}/pipelines",
        json={
            "name": "Deploy API",
            "resource_type": "application",
            "resource_id": 7,
            "action_type": "deploy",
        },
        headers=admin_headers,
    )
    assert response.status == 201
    pipeline = await response.json()
    assert response.headers["Location"] == f"/pipelines/{pipeline['id']}"
    assert {k: pipeline[k] for k in ("environment_id", "name", "resource_type")} == {
        "environment_id": environment["id"],
        "name": "Deploy API",
        "resource_type": "application",
    }
    assert pipeline["resource_id"] == 7 and pipeline["action_type"] == "deploy"

    response = await client.get(f"/pipelines/{pipeline['id']}", headers=admin_headers)
    assert await response.json() == pipeline

    response = await client.put(
        f"/pipelines/{pipeline['id']}", json={"name": "Deploy web"}, headers=admin_headers
    )
    assert response.status == 200
    updated = await response.json()
    assert updated["name"] == "Deploy web"
    assert updated["resource_id"] == 7 and updated["action_type"] == "deploy"
    assert updated["updated_at"] > pipeline["updated_at"]

    response = await client.get(
        f"/environments/{environment['id']}/pipelines", headers=admin_headers
    )
    assert [p["name"] for p in await response.json()] == ["Deploy web"]

    response = await client.delete(f"/pipelines/{pipeline['id']}", headers=admin_headers)
    assert response.status == 204
    response = await client.get(f"/pipelines/{pipeline['id']}", headers=admin_headers)
    assert response.status == 404
    assert (await response.json())["message"] == "pipeline not found"
    response = await client.delete(f"/pipelines/{pipeline['id']}", headers=admin_headers)
    assert response.status == 404


async def test_deleting_a_pipeline_deletes_its_hooks(
    client: Any, admin_headers: dict[str, str]
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    assert (
        await client.delete(f"/pipelines/{pipeline['id']}", headers=admin_headers)
    ).status == 204
    response = await client.get(f"/hooks/incoming/{hook['id']}", headers=admin_headers)
    assert response.status == 404


async def test_deleting_a_pipeline_cancels_its_unfinished_runs_and_keeps_the_rest(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    other = await make_pipeline(client, admin_headers, environment["id"], name="other")
    conn = await asyncpg.connect(db.dsn)
    try:
        for pipeline_id, status in [
            (pipeline["id"], "queued"),
            (pipeline["id"], "in-progress"),
            (pipeline["id"], "completed"),
            (other["id"], "queued"),
        ]:
            await conn.execute(
                "INSERT INTO pipeline_runs (id, pipeline_id, status) VALUES ($1, $2, $3)",
                uuid.uuid4(),
                pipeline_id,
                status,
            )
        response = await client.delete(f"/pipelines/{pipeline['id']}", headers=admin_headers)
        assert response.status == 204
        rows = await conn.fetch(
            "SELECT pipeline_id, status, message, finished_at IS NOT NULL AS finished"
            " FROM pipeline_runs ORDER BY pipeline_id, status"
        )
    finally:
        await conn.close()
    assert [(r["pipeline_id"], r["status"], r["finished"]) for r in rows] == [
        (pipeline["id"], "cancelled", True),
        (pipeline["id"], "cancelled", True),
        (pipeline["id"], "completed", False),
        (other["id"], "queued", False),
    ]
    cancelled = [r["message"] for r in rows if r["status"] == "cancelled"]
    assert cancelled == ["cancelled: the pipeline was deleted"] * 2


async def test_pipeline_validation_names_every_bad_field(
    client: Any, admin_headers: dict[str, str]
) -> None:
    environment = await make_environment(client, admin_headers)
    response = await client.post(
        f"/environments/{environment['id']}/pipelines",
        json={"resource_type": "Application!", "resource_id": "7", "action_type": "", "x": 1},
        headers=admin_headers,
    )
    assert response.status == 422
    body = await response.json()
    assert body["errors"] == {
        "x": [
            "unknown field; allowed: action_type, name, resource_id, resource_type",
        ],
        "name": ["is required"],
        "resource_type": [
            "must start with a lower-case letter and contain only a-z, 0-9, '_' and '-'"
        ],
        "resource_id": ["must be an integer, got a string"],
        "action_type": ["must not be empty"],
    }
    assert body["message"] == (
        "The given data was invalid: x, name, resource_id, action_type, resource_type"
    )


async def test_pipeline_update_validation(client: Any, admin_headers: dict[str, str]) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    response = await client.put(
        f"/pipelines/{pipeline['id']}",
        json={"name": None, "resource_id": 0, "environment_id": 2},
        headers=admin_headers,
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert errors["name"] == ["must not be null"]
    assert errors["resource_id"] == ["must be >= 1"]
    assert errors["environment_id"][0].startswith("unknown field")


async def test_pipeline_permissions(
    client: Any, admin_headers: dict[str, str], member_factory: Any
) -> None:
    environment = await make_environment(client, admin_headers)
    other = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    foreign = await make_pipeline(client, admin_headers, other["id"])
    reader = await member_factory(environment["id"], READER)
    editor = await member_factory(environment["id"], EDITOR)
    env_id = environment["id"]

    async def status(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        response = await client.request(method, path, headers=headers, **kw)
        return response.status, (await response.json())["message"] if response.status >= 400 else ""

    new = {"name": "n", "resource_type": "application", "resource_id": 1, "action_type": "deploy"}
    assert await status("GET", f"/pipelines/{pipeline['id']}", reader) == (200, "")
    assert await status("GET", f"/environments/{env_id}/pipelines", reader) == (200, "")
    assert await status("POST", f"/environments/{env_id}/pipelines", reader, json=new) == (
        403,
        f"missing permission 'pipeline:create' in environment {env_id}",
    )
    assert await status("PUT", f"/pipelines/{pipeline['id']}", reader, json={"name": "x"}) == (
        403,
        f"missing permission 'pipeline:update' in environment {env_id}",
    )
    assert (await status("POST", f"/environments/{env_id}/pipelines", editor, json=new))[0] == 201
    assert (await status("PUT", f"/pipelines/{pipeline['id']}", editor, json={"name": "x"}))[
        0
    ] == 200
    assert await status("DELETE", f"/pipelines/{pipeline['id']}", editor) == (
        403,
        f"missing permission 'pipeline:delete' in environment {env_id}",
    )
    # Another environment's pipeline does not exist as far as this member can tell.
    for method, path in (
        ("GET", f"/pipelines/{foreign['id']}"),
        ("DELETE", f"/pipelines/{foreign['id']}"),
        ("GET", f"/environments/{other['id']}/pipelines"),
    ):
        assert (await status(method, path, editor))[0] == 404, path
    assert await status("POST", f"/environments/{other['id']}/pipelines", editor, json=new) == (
        404,
        "environment not found",
    )


async def test_pipeline_list_pagination(client: Any, admin_headers: dict[str, str]) -> None:
    environment = await make_environment(client, admin_headers)
    for i in range(3):
        await make_pipeline(client, admin_headers, environment["id"], name=f"p{i}")
    response = await client.get(
        f"/environments/{environment['id']}/pipelines?per_page=2", headers=admin_headers
    )
    assert [p["name"] for p in await response.json()] == ["p0", "p1"]
    assert response.headers["X-Total-Count"] == "3"
    links = parse_links(response.headers["Link"])
    assert links["next"] == {"per_page": "2", "page": "2"} and "prev" not in links
