"""The executor HTTP API: claim, status transitions, heartbeat, permissions, concurrency PUT."""

from __future__ import annotations

import io
from typing import Any

import orjson

from gateway.config import Config
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_member, make_pipeline
from tests.integration.runs_helpers import enqueue, run_row


async def _setup(client: Any, headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    env = await make_environment(client, headers)
    pipeline = await make_pipeline(client, headers, env["id"])
    return env, pipeline


async def _claim(client: Any, headers: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    response = await client.post("/runs/claim", json=body, headers=headers)
    assert response.status == 200, await response.text()
    claimed: list[dict[str, Any]] = await response.json()
    return claimed


async def test_claim_then_complete_and_illegal_moves_name_both_states(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"], source_ref="main", pull_request_id=7)

    [claimed] = await _claim(client, admin_headers, pipeline_id=pipeline["id"], lease_seconds=30)

    assert claimed["id"] == str(run["id"])
    assert claimed["status"] == "in-progress"
    assert claimed["attempt"] == 1
    assert claimed["variables"] == {"source_ref": "main", "pull_request_id": 7}
    assert claimed["lease_token"] and claimed["lease_expires_at"]
    url = f"/runs/{run['id']}/status"
    token = claimed["lease_token"]
    response = await client.post(
        url,
        json={
            "status": "completed",
            "lease_token": token,
            "exit_code": 0,
            "message": "deployed",
            "output": "line 1\nline 2\n",
        },
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "completed"
    assert body["exit_code"] == 0
    assert body["message"] == "deployed"
    assert body["finished_at"] is not None
    assert (await run_row(db, run["id"]))["output"] == "line 1\nline 2\n"

    for status in ("in-progress", "queued"):
        response = await client.post(
            url, json={"status": status, "lease_token": token}, headers=admin_headers
        )
        assert response.status == 409
        assert (await response.json())["message"] == f"cannot move run from completed to {status}"
    # Another outcome under the same lease names the one recorded (test_status_reports.py).
    response = await client.post(
        url, json={"status": "failed", "lease_token": token}, headers=admin_headers
    )
    assert response.status == 409
    assert "already ended completed with exit code 0" in (await response.json())["message"]


async def test_a_run_can_be_cancelled_without_a_lease_and_nothing_else_can(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    queued = await enqueue(db, pipeline["id"], source_ref="main")
    response = await client.post(
        f"/runs/{queued['id']}/status",
        json={"status": "cancelled", "message": "not today"},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "cancelled"
    assert (await run_row(db, queued["id"]))["message"] == "not today"

    running = await enqueue(db, pipeline["id"], source_ref="dev")
    [claimed] = await _claim(client, admin_headers, pipeline_id=pipeline["id"])
    assert claimed["id"] == str(running["id"])
    response = await client.post(
        f"/runs/{running['id']}/status", json={"status": "completed"}, headers=admin_headers
    )
    assert response.status == 422
    assert (await response.json())["errors"] == {"lease_token": ["is required"]}
    response = await client.post(
        f"/runs/{running['id']}/status", json={"status": "cancelled"}, headers=admin_headers
    )
    assert response.status == 200, await response.text()
    response = await client.post(
        f"/runs/{running['id']}/status",
        json={"status": "completed", "lease_token": claimed["lease_token"]},
        headers=admin_headers,
    )
    assert response.status == 409
    assert (await response.json())["message"] == "cannot move run from cancelled to completed"


async def test_wrong_lease_token_is_a_conflict(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])
    await _claim(client, admin_headers, pipeline_id=pipeline["id"])

    for path, extra in (("status", {"status": "completed"}), ("heartbeat", {})):
        response = await client.post(
            f"/runs/{run['id']}/{path}",
            json={"lease_token": "00000000-0000-4000-8000-000000000000", **extra},
            headers=admin_headers,
        )
        assert response.status == 409
        assert "lease token does not match" in (await response.json())["message"]
    assert (await run_row(db, run["id"]))["status"] == "in-progress"


async def test_queued_run_cannot_be_started_by_a_status_call(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])

    response = await client.post(
        f"/runs/{run['id']}/status",
        json={"status": "in-progress", "lease_token": "00000000-0000-4000-8000-000000000000"},
        headers=admin_headers,
    )

    assert response.status == 409
    assert "from queued to in-progress" in (await response.json())["message"]


async def test_failed_with_a_long_output_keeps_its_tail(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await _claim(client, admin_headers, pipeline_id=pipeline["id"])
    # ~2.4 MB: past the 1 MiB other management bodies may have (a 413 here lost the report,
    # and the run ran again when its lease expired).
    output = "".join(f"line {i:06d}\n" for i in range(200_000)) + "the end\n"

    report = {
        "status": "failed",
        "lease_token": claimed["lease_token"],
        "exit_code": 2,
        "output": output,
    }
    response = await client.post(
        f"/runs/{run['id']}/status",
        data=io.BytesIO(orjson.dumps(report)),  # a large body: streamed, as aiohttp advises
        headers={**admin_headers, "Content-Type": "application/json"},
    )

    assert response.status == 200, await response.text()
    stored = (await run_row(db, run["id"]))["output"]
    assert stored.startswith("[output truncated: first ")
    assert stored.endswith("line 199999\nthe end\n")
    assert len(stored.encode()) < 64 * 1024 + 100
    got = await client.get(f"/runs/{run['id']}", headers=admin_headers)
    assert (await got.json())["exit_code"] == 2


async def test_heartbeat_extends_and_release_requeues(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])
    [claimed] = await _claim(client, admin_headers, pipeline_id=pipeline["id"], lease_seconds=5)
    token = claimed["lease_token"]

    response = await client.post(
        f"/runs/{run['id']}/heartbeat",
        json={"lease_token": token, "lease_seconds": 600},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["lease_expires_at"] > claimed["lease_expires_at"]

    response = await client.post(
        f"/runs/{run['id']}/status",
        json={"status": "queued", "lease_token": token, "message": "shutting down"},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["attempt"] == 0
    response = await client.post(
        f"/runs/{run['id']}/heartbeat", json={"lease_token": token}, headers=admin_headers
    )
    assert response.status == 409
    assert "queued" in (await response.json())["message"]
    response = await client.post(  # the release repeated, as after a lost answer
        f"/runs/{run['id']}/status",
        json={"status": "queued", "lease_token": token, "message": "shutting down"},
        headers=admin_headers,
    )
    assert response.status == 409
    assert (await response.json())["message"] == (
        "cannot move run from queued to queued: it is queued already, and its lease ended "
        "with the release (a release cannot be repeated)"
    )


async def test_executor_endpoints_need_a_token_and_run_execute(
    client: Any, db: Database, config: Config, database_dsn: str, admin_headers: dict[str, str]
) -> None:
    env, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])
    status_body = {"status": "completed", "lease_token": "00000000-0000-4000-8000-000000000000"}
    reader = await make_member(
        client, db, config, database_dsn, env["id"], ["environment:read", "run:read"]
    )
    stranger = await make_member(
        client, db, config, database_dsn, None, ["environment:read", "run:read", "run:execute"]
    )

    response = await client.post(f"/runs/{run['id']}/status", json=status_body)
    assert response.status == 401
    response = await client.post("/runs/claim", json={"pipeline_id": pipeline["id"]})
    assert response.status == 401
    response = await client.post(f"/runs/{run['id']}/status", json=status_body, headers=reader)
    assert response.status == 403
    assert "run:execute" in (await response.json())["message"]
    response = await client.post(
        "/runs/claim", json={"pipeline_id": pipeline["id"]}, headers=reader
    )
    assert response.status == 403
    response = await client.post(f"/runs/{run['id']}/status", json=status_body, headers=stranger)
    assert response.status == 404
    # No environment where they may execute: 403, not [] for ever (an executor given the
    # wrong token would poll without a sign that it never can claim anything).
    for caller in (stranger, reader):
        response = await client.post("/runs/claim", headers=caller)
        assert response.status == 403
        assert (await response.json())["message"] == (
            "missing permission 'run:execute' in every environment"
        )
    assert (await run_row(db, run["id"]))["status"] == "queued"
    response = await client.post(
        f"/runs/{run['id']}/status", json=status_body, headers=admin_headers
    )
    assert response.status == 409  # admin passes permissions; the run is merely not claimed


async def test_claim_without_pipeline_takes_only_environments_with_run_execute(
    client: Any, db: Database, config: Config, database_dsn: str, admin_headers: dict[str, str]
) -> None:
    env, pipeline = await _setup(client, admin_headers)
    _, elsewhere = await _setup(client, admin_headers)
    mine = await enqueue(db, pipeline["id"])
    other = await enqueue(db, elsewhere["id"])
    executor = await make_member(
        client, db, config, database_dsn, env["id"], ["environment:read", "run:read", "run:execute"]
    )

    claimed = await _claim(client, executor, limit=10)

    assert [r["id"] for r in claimed] == [str(mine["id"])]
    assert (await run_row(db, other["id"]))["status"] == "queued"
    response = await client.post(
        f"/runs/{mine['id']}/status",
        json={"status": "completed", "lease_token": claimed[0]["lease_token"]},
        headers=executor,
    )
    assert response.status == 200, await response.text()
    assert [r["id"] for r in await _claim(client, admin_headers, limit=10)] == [str(other["id"])]


async def test_claim_and_status_bodies_are_validated(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"])

    response = await client.post(
        "/runs/claim", json={"limit": 0, "lease_seconds": 2, "colour": "red"}, headers=admin_headers
    )
    assert response.status == 422
    assert set((await response.json())["errors"]) == {"limit", "lease_seconds", "colour"}
    response = await client.post("/runs/claim", json={"pipeline_id": 999999}, headers=admin_headers)
    assert response.status == 404
    response = await client.post(
        f"/runs/{run['id']}/status",
        json={"status": "done", "lease_token": "nope", "exit_code": "1"},
        headers=admin_headers,
    )
    assert response.status == 422
    assert set((await response.json())["errors"]) == {"status", "lease_token", "exit_code"}
    response = await client.post(
        "/runs/not-a-uuid/status", json={"status": "completed"}, headers=admin_headers
    )
    assert response.status == 404


async def test_put_concurrency_sets_policy_and_checks_input(
    client: Any, db: Database, config: Config, database_dsn: str, admin_headers: dict[str, str]
) -> None:
    env, pipeline = await _setup(client, admin_headers)
    url = f"/pipelines/{pipeline['id']}/concurrency"

    response = await client.put(
        url,
        json={"policy": "cancel-in-progress", "key": "source_ref", "max_attempts": 5},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert await response.json() == {
        "pipeline_id": pipeline["id"],
        "policy": "cancel-in-progress",
        "key": "source_ref",
        "max_attempts": 5,
        "rekeyed_runs": 0,
    }
    got = await client.get(url, headers=admin_headers)
    assert (await got.json())["policy"] == "cancel-in-progress"

    response = await client.put(
        url, json={"policy": "sometimes", "key": "a b", "max_attempts": 0}, headers=admin_headers
    )
    assert response.status == 422
    assert set((await response.json())["errors"]) == {"policy", "key", "max_attempts"}

    reader = await make_member(
        client, db, config, database_dsn, env["id"], ["environment:read", "pipeline:read"]
    )
    response = await client.put(url, json={"policy": "queue"}, headers=reader)
    assert response.status == 403
    assert "pipeline:update" in (await response.json())["message"]
    response = await client.put(url, json={"policy": "queue"}, headers=admin_headers)
    assert (await response.json())["key"] is None


async def test_the_lease_holder_repeating_its_recorded_report_gets_200_and_changes_nothing(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """An executor whose report committed but whose answer was lost retries it: that must not
    be a 409 (it would log its own success as refused), and must not record anything twice."""
    _, pipeline = await _setup(client, admin_headers)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    [claimed] = await _claim(client, admin_headers, pipeline_id=pipeline["id"], lease_seconds=30)
    url, token = f"/runs/{run['id']}/status", claimed["lease_token"]
    report = {"status": "failed", "lease_token": token, "exit_code": 3, "output": "boom\n"}
    first = await client.post(url, json=report, headers=admin_headers)
    assert first.status == 200, await first.text()
    recorded = await run_row(db, run["id"])

    again = await client.post(url, json=report, headers=admin_headers)
    assert again.status == 200, await again.text()
    assert (await again.json())["finished_at"] == (await first.json())["finished_at"]
    assert await run_row(db, run["id"]) == recorded

    for different in (
        {**report, "exit_code": 4},
        {**report, "status": "completed", "exit_code": 0},
        {**report, "lease_token": "00000000-0000-4000-8000-000000000000"},
    ):
        refused = await client.post(url, json=different, headers=admin_headers)
        assert refused.status == 409, different
    assert await run_row(db, run["id"]) == recorded
