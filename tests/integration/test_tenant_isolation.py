"""Ids in request bodies never reach another environment: a member who may change hooks in
environment A cannot move a hook to a pipeline of environment B (hooks have no such field), nor
claim B's runs by naming B's pipeline. The per-route 404/403 answers are in
test_permissions_matrix.py; these are the cases where the id comes in the body."""

from __future__ import annotations

from typing import Any

from gateway.permissions_catalog import PERMISSIONS
from gateway.storage.database import Database
from tests.integration.access_helpers import call, create_environment, grant, make_user, ok
from tests.integration.access_world import OUTGOING_HOOK_BODY
from tests.integration.management_helpers import make_pipeline, make_seed_hook


async def test_a_body_cannot_move_a_hook_or_claim_in_another_environment(
    client: Any, db: Database
) -> None:
    _, admin = await make_user(db, "root@example.com", is_admin=True)
    mine, theirs = await create_environment(client, admin), await create_environment(client, admin)
    member_id, member = await make_user(db, "member@example.com")
    await grant(client, admin, mine, member_id, list(PERMISSIONS))  # everything, in A only
    pipeline = (await make_pipeline(client, admin, mine))["id"]
    foreign = (await make_pipeline(client, admin, theirs))["id"]
    incoming = await make_seed_hook(client, admin, pipeline)
    outgoing = await ok(
        client, "POST", f"/pipelines/{pipeline}/hooks/outgoing", admin, OUTGOING_HOOK_BODY
    )

    for kind, hook in (("incoming", incoming), ("outgoing", outgoing)):
        for field in ("pipeline_id", "environment_id"):
            status, body = await call(
                client, "PUT", f"/hooks/{kind}/{hook['id']}", member, {field: foreign}
            )
            assert status == 422, body
            assert body["errors"][field][0].startswith("unknown field")
        shown = await ok(client, "GET", f"/hooks/{kind}/{hook['id']}", admin, status=200)
        assert (shown["pipeline_id"], shown["environment_id"]) == (pipeline, mine)

    status, body = await call(client, "POST", "/runs/claim", member, {"pipeline_id": foreign})
    assert (status, body["message"]) == (404, "pipeline not found")


async def test_narrowing_a_role_removing_a_member_or_demoting_an_admin_acts_at_once(
    client: Any, db: Database
) -> None:
    """The same token, the next request: nothing about rights is cached."""
    _, admin = await make_user(db, "root@example.com", is_admin=True)
    env = await create_environment(client, admin)
    member_id, member = await make_user(db, "member@example.com")
    ids = await grant(client, admin, env, member_id, ["environment:read", "pipeline:read"])
    pipelines = f"/environments/{env}/pipelines"
    assert (await call(client, "GET", pipelines, member))[0] == 200

    narrowed = {"name": "narrowed", "permissions": ["environment:read"]}
    await ok(client, "PUT", f"/roles/{ids['role_id']}", admin, narrowed, status=200)
    assert (await call(client, "GET", pipelines, member))[0] == 403

    removed = await call(client, "DELETE", f"/teams/{ids['team_id']}/members/{member_id}", admin)
    assert removed == (204, None)
    assert (await call(client, "GET", f"/environments/{env}", member))[0] == 404

    other_admin_id, other_admin = await make_user(db, "second@example.com", is_admin=True)
    assert (await call(client, "GET", "/roles", other_admin))[0] == 200
    await ok(client, "PUT", f"/users/{other_admin_id}", admin, {"is_admin": False}, status=200)
    assert (await call(client, "GET", "/roles", other_admin))[0] == 403
    assert (await call(client, "GET", f"/environments/{env}", other_admin))[0] == 404
