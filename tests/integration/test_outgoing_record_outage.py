"""A delivery whose answer a dispatcher still records is left alone by that dispatcher's claims
and due times."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.storage import outgoing as store
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import complete_run, create_hook, deliveries, hook_body


@pytest.fixture
async def pipeline(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    env = await make_environment(client, admin_headers)
    return await make_pipeline(client, admin_headers, env["id"], name="Deploy API")


async def _hook(client: Any, headers: dict[str, str], pipeline_id: int, url: str) -> str:
    return str((await create_hook(client, headers, pipeline_id, hook_body(url)))["id"])


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
