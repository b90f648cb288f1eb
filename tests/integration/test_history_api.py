"""Request history, runs (read side) and replay, after real signed deliveries to the ingest URL."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from gateway.app import create_app
from gateway.config import Config
from gateway.storage.database import Database
from tests.conftest import client_for
from tests.integration.management_helpers import (
    make_environment,
    make_member,
    make_pipeline,
    make_seed_hook,
    parse_links,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PULL_REQUEST = (FIXTURES / "github" / "pull_request.opened.json").read_bytes()
PR = orjson.loads(PULL_REQUEST)["pull_request"]
EXPECTED_VARIABLES = {
    "source_type": "branch",
    "source_ref": PR["head"]["ref"],
    "pull_request_id": PR["number"],
    "pull_request_title": PR["title"],
    "commit_hash": PR["head"]["sha"],
}


def github_headers(secret: str, body: bytes, delivery: str = "") -> dict[str, str]:
    """The headers GitHub sends with a JSON delivery, signed with the hook's secret."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/abc1234",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={digest}",
    }


async def deliver(client: Any, hook: dict[str, Any], body: bytes = PULL_REQUEST, **kw: Any) -> Any:
    """POST a correctly signed GitHub delivery to the hook's URL."""
    headers = github_headers(hook["secret"], body, **kw)
    return await client.post(f"/hooks/incoming/{hook['id']}", data=body, headers=headers)


@pytest.fixture
async def hook(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    return await make_seed_hook(client, admin_headers, pipeline["id"])


async def _history(
    client: Any, hook: dict[str, Any], headers: dict[str, str], query: str = ""
) -> Any:
    response = await client.get(f"/hooks/incoming/{hook['id']}/requests{query}", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_delivery_is_recorded_with_redacted_headers_and_decoded_body(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    delivery = str(uuid.uuid4())
    response = await deliver(client, hook, delivery=delivery)
    assert response.status == 202, await response.text()
    run_id = (await response.json())["run_id"]
    signature = github_headers(hook["secret"], PULL_REQUEST)["X-Hub-Signature-256"]

    [summary] = await _history(client, hook, admin_headers)
    assert summary["outcome"] == "accepted" and summary["status_code"] == 202
    assert summary["run_id"] == run_id and summary["delivery_id"] == delivery
    assert summary["hook_id"] == hook["id"] and summary["hook_type"] == "incoming"
    assert summary["retry_of"] is None and summary["body_stored"] is True
    assert summary["body_size"] == len(PULL_REQUEST)
    assert summary["client_ip"] == "127.0.0.1"
    assert summary["latency_ms"] >= 0
    assert "headers" not in summary and "body" not in summary

    response = await client.get(f"/hook-requests/{summary['id']}", headers=admin_headers)
    assert response.status == 200
    text = await response.text()
    detail = orjson.loads(text)
    assert {k: detail[k] for k in summary} == summary
    assert detail["headers"]["x-hub-signature-256"] == "[redacted]"
    assert detail["headers"]["x-github-event"] == "pull_request"
    assert detail["headers"]["x-github-delivery"] == delivery
    assert detail["body_format"] == "json"
    assert detail["body"] == orjson.loads(PULL_REQUEST)
    assert detail["pipeline_id"] == hook["pipeline_id"]
    assert detail["environment_id"] == hook["environment_id"]
    assert hook["secret"] not in text and signature.removeprefix("sha256=") not in text


async def test_signatures_and_credentials_under_any_header_name_are_redacted(
    client: Any,
    admin_headers: dict[str, str],
    hook: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
) -> None:
    """Gitea sends its HMAC under four names; any of them in the history would let a hook:read
    member send the body again as a new delivery. Other senders' signatures and credentials
    (svix-signature, X-Api-Key, X-Auth-Token) are not shown either; delivery ids and events
    are."""
    digest = hmac.new(hook["secret"].encode(), PULL_REQUEST, hashlib.sha256).hexdigest()
    sha1 = hmac.new(hook["secret"].encode(), PULL_REQUEST, hashlib.sha1).hexdigest()
    delivery = str(uuid.uuid4())
    secrets = {
        "X-Gitea-Signature": digest,
        "X-Gogs-Signature": digest,
        "X-Hub-Signature": f"sha1={sha1}",
        "X-Hub-Signature-256": f"sha256={digest}",
        "svix-signature": "v1,I5n8AdVzcV0cS4ZtLCpRhTzQ3Ra1UPJ8yvQ0xoYmzVk=",
        "X-Api-Key": "INCOMING_APIKEY_zz",
        "X-Auth-Token": "INCOMING_XAUTHTOKEN_zz",
    }
    visible = {
        "content-type": "application/json",
        "x-gitea-delivery": delivery,
        "x-github-delivery": delivery,
        "x-gitea-event": "pull_request",
        "idempotency-key": "not-a-credential",
    }
    response = await client.post(
        f"/hooks/incoming/{hook['id']}", data=PULL_REQUEST, headers={**secrets, **visible}
    )
    assert response.status == 202, await response.text()
    [summary] = await _history(client, hook, admin_headers)
    assert summary["delivery_id"] == delivery

    # Redacted when recorded: the table holds none of them.
    stored = await db.pool.fetchval(
        "SELECT headers::text FROM hook_requests WHERE id = $1::uuid", summary["id"]
    )
    reader = await make_member(
        client, db, config, database_dsn, hook["environment_id"], ["hook:read"]
    )
    response = await client.get(f"/hook-requests/{summary['id']}", headers=reader)
    assert response.status == 200, await response.text()
    text = await response.text()
    headers = orjson.loads(text)["headers"]
    assert {k: headers[k.lower()] for k in secrets} == dict.fromkeys(secrets, "[redacted]")
    assert {k: headers[k] for k in visible} == visible
    for value in (digest, sha1, *secrets.values()):
        assert value not in stored and value not in text


async def test_a_row_recorded_under_the_narrower_rule_is_redacted_when_shown_and_replayed(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any], db: Database
) -> None:
    """Rows recorded before the rule knew Gitea's signature headers still hold their values
    (no migration rewrites the history): the API redacts them again, and a replay's new row
    does not copy them."""
    response = await deliver(client, hook)
    assert response.status == 202, await response.text()
    [original] = await _history(client, hook, admin_headers)
    signature = "727a9cdc473b541bca6caac4d5c95e755c6b16fe7504ca3941aad8ab89464d81"
    await db.pool.execute(
        "UPDATE hook_requests SET headers = headers || $2::jsonb WHERE id = $1::uuid",
        original["id"],
        {"x-gitea-signature": signature, "x-api-key": "OLD_APIKEY_zz"},
    )

    response = await client.get(f"/hook-requests/{original['id']}", headers=admin_headers)
    assert response.status == 200, await response.text()
    headers = (await response.json())["headers"]
    assert headers["x-gitea-signature"] == headers["x-api-key"] == "[redacted]"
    assert headers["x-github-event"] == "pull_request"

    replay = await client.post(f"/hook-requests/{original['id']}/replay", headers=admin_headers)
    assert replay.status == 202, await replay.text()
    stored = await db.pool.fetchval(
        "SELECT headers FROM hook_requests WHERE id = $1::uuid", (await replay.json())["request_id"]
    )
    assert stored["x-gitea-signature"] == stored["x-api-key"] == "[redacted]"
    assert stored["content-type"] == "application/json"


async def test_run_read_side(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    response = await deliver(client, hook)
    run_id = (await response.json())["run_id"]
    [request] = await _history(client, hook, admin_headers)

    response = await client.get(f"/runs/{run_id}", headers=admin_headers)
    assert response.status == 200
    run = await response.json()
    assert run["variables"] == EXPECTED_VARIABLES
    assert isinstance(run["variables"]["pull_request_id"], int)
    assert run["status"] == "queued" and run["pipeline_id"] == hook["pipeline_id"]
    assert run["triggered_from"] == {
        "type": "incoming_hook",
        "hook_id": hook["id"],
        "request_id": request["id"],
    }
    assert run["attempt"] == 0 and run["exit_code"] is None and run["started_at"] is None
    assert run["output"] == ""

    runs_path = f"/pipelines/{hook['pipeline_id']}/runs"
    response = await client.get(runs_path, headers=admin_headers)
    listed = await response.json()
    assert [r["id"] for r in listed] == [run_id]
    assert {k: v for k, v in run.items() if k != "output"} == listed[0]
    response = await client.get(f"{runs_path}?status=queued", headers=admin_headers)
    assert len(await response.json()) == 1
    response = await client.get(f"{runs_path}?status=completed", headers=admin_headers)
    assert await response.json() == [] and response.headers["X-Total-Count"] == "0"
    response = await client.get(f"{runs_path}?status=done", headers=admin_headers)
    assert response.status == 422
    assert list((await response.json())["errors"]) == ["status"]

    for path in ("/runs/not-a-uuid", f"/runs/{uuid.uuid4()}"):
        response = await client.get(path, headers=admin_headers)
        assert response.status == 404
        assert (await response.json())["message"] == "run not found"


async def test_history_lists_newest_first_with_outcome_filter_and_links(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    statuses = []
    for _ in range(3):
        statuses.append((await deliver(client, hook)).status)
    bad = await client.post(
        f"/hooks/incoming/{hook['id']}",
        data=PULL_REQUEST,
        headers={**github_headers("wrong secret", PULL_REQUEST)},
    )
    statuses.append(bad.status)
    assert statuses == [202, 202, 202, 401]

    everything = await _history(client, hook, admin_headers)
    assert [r["status_code"] for r in everything] == [401, 202, 202, 202]
    received = [r["received_at"] for r in everything]
    assert received == sorted(received, reverse=True)

    rejected = await _history(client, hook, admin_headers, "?outcome=rejected")
    assert [r["id"] for r in rejected] == [everything[0]["id"]]
    assert "invalid signature" in rejected[0]["message"]
    assert len(await _history(client, hook, admin_headers, "?outcome=accepted")) == 3

    response = await client.get(
        f"/hooks/incoming/{hook['id']}/requests?per_page=3&page=1", headers=admin_headers
    )
    assert [r["id"] for r in await response.json()] == [r["id"] for r in everything[:3]]
    assert response.headers["X-Total-Count"] == "4"
    links = parse_links(response.headers["Link"])
    assert links["next"] == {"per_page": "3", "page": "2"}
    assert links["last"] == {"per_page": "3", "page": "2"}

    for typo in ("DROP%20TABLE", "acepted"):  # a typo was a 200 with an empty list
        response = await client.get(
            f"/hooks/incoming/{hook['id']}/requests?outcome={typo}", headers=admin_headers
        )
        assert response.status == 422
        assert (await response.json())["errors"] == {
            "outcome": ["must be one of: accepted, skipped, rejected, duplicate"]
        }
    duplicates = await _history(client, hook, admin_headers, "?outcome=duplicate")
    assert duplicates == []


async def test_form_mode_body_is_shown_as_text(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    body = urlencode({"payload": PULL_REQUEST.decode()}).encode()
    headers = {
        **github_headers(hook["secret"], body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = await client.post(f"/hooks/incoming/{hook['id']}", data=body, headers=headers)
    assert response.status == 202, await response.text()
    [summary] = await _history(client, hook, admin_headers)
    detail = await (
        await client.get(f"/hook-requests/{summary['id']}", headers=admin_headers)
    ).json()
    assert detail["body_format"] == "text"
    assert detail["body"] == body.decode()


async def test_replay_queues_a_new_run_even_for_a_delivered_delivery_id(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    response = await deliver(client, hook)
    original_run = (await response.json())["run_id"]
    [original] = await _history(client, hook, admin_headers)

    replays = []
    for _ in range(2):
        response = await client.post(
            f"/hook-requests/{original['id']}/replay", headers=admin_headers
        )
        assert response.status == 202, await response.text()
        body = await response.json()
        assert body["message"] == "Hook accepted: run queued" and body["errors"] is None
        assert body["retry_of"] == original["id"]
        assert response.headers["X-Run-Id"] == body["run_id"]
        replays.append(body)
    run_ids = {original_run, *(r["run_id"] for r in replays)}
    assert len(run_ids) == 3

    history = await _history(client, hook, admin_headers)
    assert [r["id"] for r in history[:2]] == [r["request_id"] for r in reversed(replays)]
    for row, replay in zip(reversed(history[:2]), replays, strict=True):
        assert row["retry_of"] == original["id"] and row["delivery_id"] is None
        assert row["outcome"] == "accepted" and row["run_id"] == replay["run_id"]
        assert row["body_stored"] is True

    response = await client.get(f"/runs/{replays[0]['run_id']}", headers=admin_headers)
    run = await response.json()
    assert run["variables"] == EXPECTED_VARIABLES
    assert run["triggered_from"]["request_id"] == replays[0]["request_id"]
    response = await client.get(f"/pipelines/{hook['pipeline_id']}/runs", headers=admin_headers)
    assert {r["id"] for r in await response.json()} == run_ids


async def test_replay_uses_the_current_hook_settings(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    await deliver(client, hook)
    [original] = await _history(client, hook, admin_headers)
    replay = f"/hook-requests/{original['id']}/replay"
    hook_path = f"/hooks/incoming/{hook['id']}"

    conditions = {"conditions": [{"path": "action", "accepted_values": ["closed"]}]}
    response = await client.put(hook_path, json={"trigger_when": conditions}, headers=admin_headers)
    assert response.status == 200
    response = await client.post(replay, headers=admin_headers)
    assert response.status == 202
    skipped = await response.json()
    assert skipped["skipped"] is True and skipped["run_id"] is None
    assert skipped["reason"] == 'condition 0: value at \'action\' is "opened", accepted: ["closed"]'

    variables = [{"name": "deploy_key", "path": "deploy.key", "type": "string", "required": True}]
    response = await client.put(
        hook_path,
        json={"trigger_when": None, "settings": {"variables": variables}},
        headers=admin_headers,
    )
    assert response.status == 200
    response = await client.post(replay, headers=admin_headers)
    assert response.status == 422
    rejected = await response.json()
    assert rejected["errors"] == {"deploy_key": ["is required but missing at path 'deploy.key'"]}

    outcomes = [
        (r["outcome"], r["status_code"]) for r in await _history(client, hook, admin_headers)
    ]
    assert outcomes == [("rejected", 422), ("skipped", 202), ("accepted", 202)]
    response = await client.get(f"/pipelines/{hook['pipeline_id']}/runs", headers=admin_headers)
    assert len(await response.json()) == 1


async def test_replay_refusals(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    await client.post(
        f"/hooks/incoming/{hook['id']}",
        data=PULL_REQUEST,
        headers=github_headers("not the secret", PULL_REQUEST),
    )
    await deliver(client, hook)
    accepted, forged = await _history(client, hook, admin_headers)
    assert forged["status_code"] == 401

    # A request that never passed signature verification is not replayed without it.
    response = await client.post(f"/hook-requests/{forged['id']}/replay", headers=admin_headers)
    assert response.status == 409
    assert (await response.json())["message"] == (
        "the original request did not pass signature verification; it cannot be replayed"
    )

    hook_path = f"/hooks/incoming/{hook['id']}"
    await client.put(hook_path, json={"active": False}, headers=admin_headers)
    response = await client.post(f"/hook-requests/{accepted['id']}/replay", headers=admin_headers)
    assert response.status == 409
    assert (await response.json())["message"] == (
        "the hook is inactive; activate it before replaying its requests"
    )

    assert (await client.delete(hook_path, headers=admin_headers)).status == 204
    response = await client.post(f"/hook-requests/{accepted['id']}/replay", headers=admin_headers)
    assert response.status == 409
    assert (await response.json())["message"] == (
        "the hook this request was sent to has been deleted"
    )
    # History outlives the hook; administrators can still read it.
    response = await client.get(f"/hook-requests/{accepted['id']}", headers=admin_headers)
    assert response.status == 200
    assert (await response.json())["environment_id"] is None

    for path in ("/hook-requests/nope", f"/hook-requests/{uuid.uuid4()}"):
        response = await client.get(path, headers=admin_headers)
        assert response.status == 404
        assert (await response.json())["message"] == "hook request not found"
        assert (await client.post(f"{path}/replay", headers=admin_headers)).status == 404


async def test_replay_needs_the_stored_body(
    aiohttp_client: Any, config: Config, db: Database, admin_headers: dict[str, str]
) -> None:
    # A second app on the same database that keeps no bodies (admin_headers' token works).
    no_bodies = replace(config, hooks=replace(config.hooks, store_bodies="none"))
    client = await client_for(create_app(no_bodies, db), aiohttp_client)
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    assert (await deliver(client, hook)).status == 202
    [request] = await _history(client, hook, admin_headers)
    assert request["body_stored"] is False

    detail = await (
        await client.get(f"/hook-requests/{request['id']}", headers=admin_headers)
    ).json()
    assert detail["body"] is None and detail["body_format"] is None
    response = await client.post(f"/hook-requests/{request['id']}/replay", headers=admin_headers)
    assert response.status == 409
    assert (await response.json())["message"] == (
        "the original request body was not stored (refused before it was read, or not "
        "kept by hooks.store_bodies)"
    )


async def test_history_and_runs_permissions(
    client: Any,
    db: Database,
    config: Config,
    database_dsn: str,
    admin_headers: dict[str, str],
    hook: dict[str, Any],
) -> None:
    response = await deliver(client, hook)
    run_id = (await response.json())["run_id"]
    [request] = await _history(client, hook, admin_headers)
    env = hook["environment_id"]

    async def member(environment_id: int, permissions: list[str]) -> dict[str, str]:
        return await make_member(client, db, config, database_dsn, environment_id, permissions)

    hook_reader = await member(env, ["environment:read", "hook:read"])
    pipeline_reader = await member(env, ["environment:read", "pipeline:read"])
    other_env = await make_environment(client, admin_headers)
    outsider = await member(
        other_env["id"], ["environment:read", "hook:read", "hook:update", "pipeline:read"]
    )

    async def check(
        method: str, path: str, headers: dict[str, str], status: int, message: str = ""
    ) -> None:
        response = await client.request(method, path, headers=headers)
        assert response.status == status, (method, path, await response.text())
        if message:
            assert (await response.json())["message"] == message

    missing = "missing permission '{}' in environment " + str(env)
    await check("GET", f"/hooks/incoming/{hook['id']}/requests", hook_reader, 200)
    await check("GET", f"/hook-requests/{request['id']}", hook_reader, 200)
    await check(
        "POST",
        f"/hook-requests/{request['id']}/replay",
        hook_reader,
        403,
        missing.format("hook:update"),
    )
    await check(
        "GET", f"/hook-requests/{request['id']}", pipeline_reader, 403, missing.format("hook:read")
    )
    await check("GET", f"/runs/{run_id}", pipeline_reader, 200)
    await check("GET", f"/pipelines/{hook['pipeline_id']}/runs", pipeline_reader, 200)
    await check("GET", f"/runs/{run_id}", hook_reader, 403, missing.format("pipeline:read"))
    await check(
        "GET",
        f"/pipelines/{hook['pipeline_id']}/runs",
        hook_reader,
        403,
        missing.format("pipeline:read"),
    )
    await check("GET", f"/hook-requests/{request['id']}", outsider, 404, "hook request not found")
    await check("POST", f"/hook-requests/{request['id']}/replay", outsider, 404)
    await check("GET", f"/runs/{run_id}", outsider, 404, "run not found")
    await check(
        "GET", f"/pipelines/{hook['pipeline_id']}/runs", outsider, 404, "pipeline not found"
    )
    await check("GET", f"/hook-requests/{request['id']}", {}, 401)
    await check("GET", f"/runs/{run_id}", {}, 401)

    # Once the pipeline is gone its runs and history have no environment: administrators only.
    assert (
        await client.delete(f"/pipelines/{hook['pipeline_id']}", headers=admin_headers)
    ).status == 204
    await check("GET", f"/runs/{run_id}", pipeline_reader, 404, "run not found")
    await check(
        "GET", f"/hook-requests/{request['id']}", hook_reader, 404, "hook request not found"
    )
    await check("GET", f"/runs/{run_id}", admin_headers, 200)
    await check("GET", f"/hook-requests/{request['id']}", admin_headers, 200)
