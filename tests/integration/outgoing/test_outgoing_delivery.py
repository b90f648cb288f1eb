"""Outgoing deliveries end to end: runs change state, a real local receiver gets signed requests.

The receiver is an aiohttp server on 127.0.0.1, so these tests allow private targets (the guard
itself is tested with it switched on). Each test runs its own Dispatcher (none runs inside the
app), so it controls when dispatching starts and stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.dispatcher import client as client_module
from gateway.dispatcher import dispatcher as dispatcher_module
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.dispatcher.templates import MAX_RENDERED_BODY
from gateway.logs import configure_logging
from gateway.storage import outgoing as store
from gateway.storage import runs
from gateway.storage.database import Database
from tests.integration.management_helpers import make_member
from tests.integration.outgoing_helpers import (
    SLOW_BODY,
    Receiver,
    attempts,
    complete_run,
    create_hook,
    deliveries,
    dispatch_until,
    eventually,
    hook_body,
    outgoing_config,
)


async def delivery_status(db: Database, hook_id: str) -> list[str]:
    return [d["status"] for d in await deliveries(db, hook_id)]


async def test_a_completed_run_sends_one_signed_rendered_request(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    hook = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(
            base + "/repos/o/r/issues/{{ run.variables.pull_request_id }}/comments"
            "?ref={{ run.variables.source_ref }}",
            "run.completed",
            name="PR comment",
            settings={
                "request_headers": [
                    {"name": "Authorization", "value": "Bearer ghp_token"},
                    {"name": "X-Run-Status", "value": "{{ run.status }}"},
                ],
                "request_body": {
                    "body": "Deploy of {{ pipeline.name }} is {{ run.status }} ({{ event }})",
                    "pr": "{{ run.variables.pull_request_id }}",
                    "ref": "{{ run.variables.source_ref }}",
                    "missing": "{{ run.variables.not_there }}",
                    "hook": "{{ hook.name }}",
                },
                "signature_header": "X-Hub-Signature-256",
            },
        ),
    )
    run_id = await complete_run(db, pipeline["id"], pull_request_id=42, source_ref="feat/a b")

    await eventually(lambda: len(target.seen) == 1)
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    [seen] = target.seen
    assert seen.path == "/repos/o/r/issues/42/comments"
    payload = Webhook(hook["secret"]).verify(seen.body, seen.headers)
    assert payload == {
        "body": "Deploy of Deploy API is completed (run.completed)",
        "pr": 42,
        "ref": "feat/a b",
        "missing": None,
        "hook": "PR comment",
    }
    [delivery] = await deliveries(db, hook["id"])
    assert seen.headers["webhook-id"] == str(delivery["id"])
    assert seen.headers["Authorization"] == "Bearer ghp_token"
    assert seen.headers["X-Run-Status"] == "completed"
    assert seen.headers["Content-Type"] == "application/json"
    expected = hmac.new(hook["secret"].encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["X-Hub-Signature-256"] == f"sha256={expected}"

    [attempt] = await attempts(db, hook["id"])
    assert (attempt["outcome"], attempt["status_code"], attempt["attempt"]) == ("succeeded", 200, 1)
    assert attempt["run_id"] == run_id and attempt["delivery_id"] == str(delivery["id"])
    assert attempt["target_url"].endswith("/comments?ref=feat%2Fa%20b")
    assert attempt["response_excerpt"] == "answer 200"
    assert attempt["headers"]["Authorization"] == "[redacted]"
    assert attempt["headers"]["webhook-signature"] == "[redacted]"
    assert attempt["headers"]["X-Hub-Signature-256"] == "[redacted]"
    assert bytes(attempt["body"]) == seen.body
    # The run's other state changes (queued, started) matched no subscription of this hook.
    assert len(target.seen) == 1


async def _statuses_are(db: Database, hook_id: str, expected: list[str]) -> bool:
    return await delivery_status(db, hook_id) == expected


async def test_two_failures_then_success_records_three_attempts(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    target.plan("/flaky", 500, 500, 200)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/flaky"))
    await complete_run(db, pipeline["id"])

    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    assert len(target.on("/flaky")) == 3 and target.successes == 1
    assert len({s.headers["webhook-id"] for s in target.seen}) == 1  # one message, retried
    response = await client.get(f"/hooks/outgoing/{hook['id']}/requests", headers=admin_headers)
    listed = await response.json()
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in listed] == [
        (3, "succeeded", 200),
        (2, "failed", 500),
        (1, "failed", 500),
    ]
    assert listed[1]["message"] == "HTTP 500"
    [delivery] = await deliveries(db, hook["id"])
    assert delivery["attempt"] == 3 and delivery["last_status_code"] == 200


async def test_retries_stop_after_the_schedule(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    target.plan("/down", 503)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/down"))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["failed"]))
    recorded = await attempts(db, hook["id"])
    assert [a["attempt"] for a in recorded] == [1, 2, 3]  # the first try + two scheduled retries
    assert recorded[-1]["message"] == "HTTP 503; gave up after 3 attempts"
    stored = await db.pool.fetchrow(
        "SELECT active, consecutive_failures FROM outgoing_hooks WHERE id = $1::uuid", hook["id"]
    )
    assert (stored["active"], stored["consecutive_failures"]) == (True, 1)


async def test_410_disables_the_hook(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    target.plan("/gone", 410)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/gone"))
    await complete_run(db, pipeline["id"])

    async def disabled() -> bool:
        got = await (
            await client.get(f"/hooks/outgoing/{hook['id']}", headers=admin_headers)
        ).json()
        return got["active"] is False

    await eventually(disabled)
    got = await (await client.get(f"/hooks/outgoing/{hook['id']}", headers=admin_headers)).json()
    assert "410 Gone" in got["disabled_reason"]
    assert len(target.seen) == 1  # no retry after 410
    assert await delivery_status(db, hook["id"]) == ["failed"]
    # A disabled hook gets no new deliveries; re-activating it clears the reason.
    await complete_run(db, pipeline["id"])
    assert len(await deliveries(db, hook["id"])) == 1
    again = await client.put(
        f"/hooks/outgoing/{hook['id']}", json={"active": True}, headers=admin_headers
    )
    assert (await again.json())["disabled_reason"] is None


async def test_consecutive_failed_deliveries_disable_the_hook(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    target.plan("/broken", 500)
    config = outgoing_config(database_dsn, retry_schedule=[], disable_after_failures=2)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/broken"))
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _statuses_are(db, hook["id"], ["failed"]))
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _statuses_are(db, hook["id"], ["failed", "failed"]))
        await eventually(lambda: _is_inactive(db, hook["id"]))
    finally:
        await running.stop(0)
    row = await db.pool.fetchrow(
        "SELECT active, disabled_reason FROM outgoing_hooks WHERE id = $1::uuid", hook["id"]
    )
    assert row["active"] is False
    assert row["disabled_reason"] == "disabled after 2 consecutive failed deliveries"


async def _is_inactive(db: Database, hook_id: str) -> bool:
    active = await db.pool.fetchval(
        "SELECT active FROM outgoing_hooks WHERE id = $1::uuid", hook_id
    )
    return active is False


async def test_restarting_the_dispatcher_mid_retry_still_delivers_exactly_once(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    target.plan("/restart", 500, 200)
    # A long first delay: the first dispatcher is stopped while the retry is still pending.
    config = outgoing_config(database_dsn, retry_schedule=[3600])
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/restart"))
    first = Dispatcher(db, config)
    await first.start()
    await complete_run(db, pipeline["id"])
    await eventually(lambda: len(target.seen) == 1)
    await eventually(lambda: _statuses_are(db, hook["id"], ["pending"]))
    await first.stop(5)

    # Time passes: the retry falls due while no dispatcher runs; a new one picks it up.
    await db.pool.execute(
        "UPDATE outgoing_deliveries SET next_attempt_at = now() WHERE hook_id = $1::uuid",
        hook["id"],
    )
    second = Dispatcher(db, config)
    await second.start()
    try:
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await second.stop(5)
    assert len(target.seen) == 2 and target.successes == 1
    assert [a["outcome"] for a in await attempts(db, hook["id"])] == ["failed", "succeeded"]


async def test_stopping_mid_request_hands_the_delivery_to_the_next_dispatcher(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    target.plan("/stuck", "hang", 200)
    config = outgoing_config(database_dsn, timeout=30)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/stuck"))
    first = Dispatcher(db, config)
    await first.start()
    await complete_run(db, pipeline["id"])
    await eventually(lambda: len(target.seen) == 1)
    await first.stop(0)  # cuts the hanging request off and hands the delivery back

    [handed_back] = await deliveries(db, hook["id"])
    assert (handed_back["status"], handed_back["attempt"]) == ("pending", 0)
    second = Dispatcher(db, config)
    await second.start()
    try:
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await second.stop(5)
    assert target.successes == 1
    assert len({s.headers["webhook-id"] for s in target.seen}) == 1


async def test_a_crashed_dispatchers_lease_expires_and_another_delivers(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    config: Config,
) -> None:
    target, base = receiver
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/late"))
    await complete_run(db, pipeline["id"])
    # A dispatcher that died right after claiming: the row is 'delivering' under its lease.
    await db.pool.execute(
        "UPDATE outgoing_deliveries SET status = 'delivering', attempt = 1, "
        "locked_until = now() + interval '1 hour' WHERE hook_id = $1::uuid",
        hook["id"],
    )
    running = Dispatcher(db, config)
    await running.start()
    try:
        assert await delivery_status(db, hook["id"]) == ["delivering"]
        assert target.seen == []  # the lease is respected
        await db.pool.execute(
            "UPDATE outgoing_deliveries SET locked_until = now() - interval '1 second' "
            "WHERE hook_id = $1::uuid",
            hook["id"],
        )
        running._wake.set()  # the poll would notice too; don't wait for it
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await running.stop(5)
    [attempt] = await attempts(db, hook["id"])
    assert attempt["attempt"] == 2  # the crashed attempt counts


async def test_state_changes_write_deliveries_in_their_transaction(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    hook = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body("https://example.com/x", "run.status_changed"),
    )
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await runs.enqueue(session, pipeline["id"], {})
            raise RuntimeError("roll back")
    assert await deliveries(db, hook["id"]) == []
    run_id = await complete_run(db, pipeline["id"], source_ref="main")
    found = await deliveries(db, hook["id"])
    assert [d["event"] for d in found] == ["run.queued", "run.started", "run.completed"]
    snapshot = found[-1]["payload"]
    assert snapshot["run"]["id"] == str(run_id)
    assert snapshot["run"]["status"] == "completed"
    assert snapshot["run"]["previous_status"] == "in-progress"
    assert snapshot["run"]["variables"] == {"source_ref": "main"}
    assert snapshot["pipeline"]["name"] == "Deploy API"
    assert snapshot["hook"] == {"id": hook["id"], "name": "notify"}
    assert found[0]["payload"]["run"]["status"] == "queued"


async def test_unmatched_conditions_skip_the_delivery(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    body = hook_body(base + "/main-only")
    body["trigger_when"]["conditions"] = [
        {"path": "run.variables.source_ref", "accepted_values": ["main"]}
    ]
    hook = await create_hook(client, admin_headers, pipeline["id"], body)
    await complete_run(db, pipeline["id"], source_ref="feature")
    await complete_run(db, pipeline["id"], source_ref="main")
    await eventually(lambda: _sorted_statuses_are(db, hook["id"], ["skipped", "succeeded"]))
    assert len(target.seen) == 1
    assert orjson.loads(target.seen[0].body)["data"]["run"]["variables"] == {"source_ref": "main"}
    skipped = [d for d in await deliveries(db, hook["id"]) if d["status"] == "skipped"]
    assert "value at 'run.variables.source_ref' is \"feature\"" in skipped[0]["last_error"]


async def test_an_event_the_hook_stopped_subscribing_to_is_not_sent(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    receiver: tuple[Receiver, str],
) -> None:
    # Like `active` and the conditions, the hook's subscription is read again when a pending
    # delivery is sent: before, an edit dropping run.queued still let its backlog go out.
    target, base = receiver
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base, "run.queued", "run.completed")
    )
    await complete_run(db, pipeline["id"])  # queued, started, completed: 2 deliveries wait
    response = await client.put(
        f"/hooks/outgoing/{hook['id']}",
        json={"trigger_when": {"events": ["run.completed"]}},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    await dispatch_until(db, config, hook["id"], ["skipped", "succeeded"])
    assert [orjson.loads(r.body)["type"] for r in target.seen] == ["run.completed"]
    [skipped] = [d for d in await deliveries(db, hook["id"]) if d["status"] == "skipped"]
    assert skipped["last_error"] == "the hook no longer subscribes to run.queued"


async def test_a_hook_subscribed_to_every_change_gets_each_event_sent(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    receiver: tuple[Receiver, str],
) -> None:
    # The send-time subscription check must count run.status_changed as covering every event
    # (the deliveries carry run.queued, run.started, run.completed).
    target, base = receiver
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base, "run.status_changed")
    )
    await complete_run(db, pipeline["id"])
    await dispatch_until(db, config, hook["id"], ["succeeded"] * 3)
    assert sorted(orjson.loads(r.body)["type"] for r in target.seen) == [
        "run.completed",
        "run.queued",
        "run.started",
    ]


async def test_a_dot_segment_value_in_the_url_path_skips_the_delivery(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    # "/refs/../status" would reach /status, a path the hook's author never named.
    target, base = receiver
    url = base + "/refs/{{ run.variables.source_ref }}/status?ref={{ run.variables.source_ref }}"
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(url))
    await complete_run(db, pipeline["id"], source_ref="..")
    await complete_run(db, pipeline["id"], source_ref="main")
    await eventually(lambda: _sorted_statuses_are(db, hook["id"], ["skipped", "succeeded"]))
    assert [seen.path for seen in target.seen] == ["/refs/main/status"]
    skipped = [d for d in await deliveries(db, hook["id"]) if d["status"] == "skipped"]
    assert skipped[0]["last_error"] == (
        "target URL: {{ run.variables.source_ref }} is '..' in the URL path: a dot-segment "
        "would leave its path segment"
    )


async def test_a_body_rendering_past_its_bound_skips_the_delivery_instead_of_building_it(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    # An author of hooks names a run's variables as often as a template's length allows:
    # unbounded, 64 KiB of them over the 1 MiB an ingested body may be rendered 4 GB in the
    # dispatcher (of `gateway serve`), again after each restart. Here 5 MB, past the bound.
    target, base = receiver
    times = MAX_RENDERED_BODY // 5000 + 1
    body = {"request_body": " ".join(["{{ run.variables.blob }}"] * times)}
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/big", settings=body)
    )
    await complete_run(db, pipeline["id"], blob="v" * 5000)
    await complete_run(db, pipeline["id"], blob="small")
    await eventually(lambda: _sorted_statuses_are(db, hook["id"], ["skipped", "succeeded"]))
    assert [len(seen.body) for seen in target.on("/big")] == [times * 6 - 1]
    skipped = [d for d in await deliveries(db, hook["id"]) if d["status"] == "skipped"]
    assert skipped[0]["last_error"] == (
        f"request body: renders to more than {MAX_RENDERED_BODY} characters, the most it may "
        "(its placeholders' values are too large)"
    )


async def _sorted_statuses_are(db: Database, hook_id: str, expected: list[str]) -> bool:
    return sorted(await delivery_status(db, hook_id)) == expected


async def test_default_body_is_a_standard_webhooks_envelope(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    target, base = receiver
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/plain"))
    run_id = await complete_run(db, pipeline["id"], pull_request_id=7)
    await eventually(lambda: len(target.seen) == 1)
    envelope = Webhook(hook["secret"]).verify(target.seen[0].body, target.seen[0].headers)
    assert envelope["type"] == "run.completed"
    assert envelope["data"]["run"]["id"] == str(run_id)
    assert envelope["data"]["run"]["exit_code"] == 0
    assert envelope["data"]["pipeline"]["action_type"] == "deploy"
    assert envelope["data"]["hook"]["id"] == hook["id"]


@pytest.mark.parametrize(
    ("schedule", "retry_after_max", "retry_after", "delay"),
    [
        # Longer than the schedule's 0.1 s: the target's wish wins.
        ([0.1, 0.1], 3600, "30", 30.0),
        # Capped at [outgoing] retry_after_max.
        ([0.1, 0.1], 7, "3600", 7.0),
        # Shorter than the schedule: Retry-After only lengthens a delay, never shortens it.
        ([5, 5], 3600, "1", 5.0),
    ],
)
async def test_retry_after_on_a_503_sets_the_next_attempt_time(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    schedule: list[float],
    retry_after_max: float,
    retry_after: str,
    delay: float,
) -> None:
    target, base = receiver
    target.plan("/busy", (503, {"Retry-After": retry_after}), 200)
    config = outgoing_config(
        database_dsn, retry_schedule=schedule, retry_jitter=0.0, retry_after_max=retry_after_max
    )
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/busy"))
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _has_attempts(db, hook["id"], 1))
        await eventually(lambda: _statuses_are(db, hook["id"], ["pending"]))

        [first] = await attempts(db, hook["id"])
        assert (first["outcome"], first["status_code"], first["attempt"]) == ("failed", 503, 1)
        assert first["message"] == "HTTP 503"
        assert first["response_excerpt"] == "answer 503"
        assert isinstance(first["latency_ms"], float) and first["latency_ms"] >= 0
        [delivery] = await deliveries(db, hook["id"])
        assert (delivery["status"], delivery["attempt"]) == ("pending", 1)
        assert delivery["last_status_code"] == 503
        # Both set by now() in the statement that recorded the attempt: the exact delay.
        assert delivery["next_attempt_at"] - delivery["updated_at"] == timedelta(seconds=delay)
        # And at least that long after the request was sent.
        assert delivery["next_attempt_at"] - first["received_at"] >= timedelta(seconds=delay)

        # Not retried early (the next attempt is not due yet); then it falls due and succeeds.
        await asyncio.sleep(1.0)
        assert len(target.on("/busy")) == 1
        await db.pool.execute(
            "UPDATE outgoing_deliveries SET next_attempt_at = now() WHERE hook_id = $1::uuid",
            hook["id"],
        )
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await running.stop(0)
    assert len(target.on("/busy")) == 2 and target.successes == 1
    recorded = await attempts(db, hook["id"])
    assert [(a["attempt"], a["status_code"]) for a in recorded] == [(1, 503), (2, 200)]
    [delivery] = await deliveries(db, hook["id"])
    assert delivery["attempt"] == 2  # Retry-After adds no attempts


async def test_a_hanging_target_times_out_and_is_retried_later(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    target.plan("/slow", "hang")
    config = outgoing_config(database_dsn, timeout=0.3, retry_schedule=[3600])
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/slow"))
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _has_attempts(db, hook["id"], 1))
    finally:
        await running.stop(0)
    [attempt] = await attempts(db, hook["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("failed", 0)
    assert attempt["message"] == "timed out after 0.3s"
    # Retried later: pending again, due the schedule's hour after the attempt was recorded (in
    # the same statement). Waiting for "pending" before the attempt proved nothing: the
    # delivery is pending from its creation until the dispatcher claims it.
    [delivery] = await deliveries(db, hook["id"])
    assert (delivery["status"], delivery["attempt"]) == ("pending", 1)
    assert delivery["next_attempt_at"] - delivery["updated_at"] == timedelta(seconds=3600)


async def test_an_answer_whose_body_never_ends_keeps_its_status(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    # The target said 200: a body still arriving at the timeout must not turn that into a
    # failure that is sent again.
    target, base = receiver
    target.plan("/slow-body", SLOW_BODY)
    config = outgoing_config(database_dsn, timeout=0.3, retry_schedule=[0.1])
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/slow-body"))
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await running.stop(0)
    [attempt] = await attempts(db, hook["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("succeeded", 200)
    assert attempt["response_excerpt"] == "accepted, more to come"
    assert len(target.seen) == 1
    # Bodies come back as sent: a compressed answer would make the excerpt unreadable.
    assert target.seen[0].headers["Accept-Encoding"] == "identity"


async def test_a_stop_while_the_body_of_an_answer_arrives_records_the_answer(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The target said 200 and its body trickles: a stop whose grace ends then (serve's drain
    # can leave it none) cut the delivery off and handed it back, so a target that had
    # accepted it got it again. The answer is in hand: the body is cut short, the attempt
    # recorded with the excerpt read so far.
    target, base = receiver
    target.plan("/slow-body", SLOW_BODY)
    config = outgoing_config(database_dsn, timeout=30)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/slow-body"))
    reading = asyncio.Event()
    read_excerpt = client_module._read_excerpt

    async def read_noticed(response: Any, limit: int, deadline: float) -> str | None:
        reading.set()  # called once the status has arrived
        return await read_excerpt(response, limit, deadline)

    monkeypatch.setattr(client_module, "_read_excerpt", read_noticed)
    running = Dispatcher(db, config)
    await running.start()
    await complete_run(db, pipeline["id"])
    await asyncio.wait_for(reading.wait(), 15)
    await running.stop(0)

    [delivery] = await deliveries(db, hook["id"])
    assert (delivery["status"], delivery["attempt"]) == ("succeeded", 1)
    [attempt] = await attempts(db, hook["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("succeeded", 200)
    assert attempt["response_excerpt"] == "accepted, more to come"
    assert len(target.seen) == 1


async def _has_attempts(db: Database, hook_id: str, count: int) -> bool:
    return len(await attempts(db, hook_id)) == count


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_ssrf_guard_refuses_loopback_targets_and_records_why(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    host: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, base = receiver
    port = base.rsplit(":", 1)[1]
    config = outgoing_config(database_dsn, allow_private_targets=False)
    configure_logging("info", "json")
    capsys.readouterr()
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(f"http://{host}:{port}/internal")
    )
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _statuses_are(db, hook["id"], ["failed"]))
    finally:
        await running.stop(0)
    assert target.seen == []  # nothing reached the receiver
    [attempt] = await attempts(db, hook["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("refused", 0)
    assert attempt["message"].startswith("target resolves to ")
    assert "(loopback), refused: set outgoing.allow_private_targets to allow" in attempt["message"]
    if host == "127.0.0.1":
        assert attempt["message"].startswith(
            "target resolves to 127.0.0.1 (loopback), refused: set "
            "outgoing.allow_private_targets to allow"
        )
    # The operator reading the log learns why too, at warning level (the delivery is given up).
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    [logged] = [line for line in lines if line["event"] == "outgoing_delivery_attempt"]
    assert (logged["level"], logged["outcome"], logged["next"]) == ("warning", "refused", "failed")
    assert logged["error"] == attempt["message"]


async def test_a_slow_target_does_not_hold_up_a_fast_one(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    aiohttp_server: Any,
) -> None:
    slow, fast = Receiver(), Receiver()
    slow.plan("/slow", "wait-release")
    slow_server = await aiohttp_server(slow.app())
    fast_server = await aiohttp_server(fast.app())
    config = outgoing_config(database_dsn, timeout=30, concurrency=4, per_target_concurrency=1)
    await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(f"http://127.0.0.1:{slow_server.port}/slow", name="slow"),
    )
    for _ in range(3):
        await complete_run(db, pipeline["id"])
    running = Dispatcher(db, config)
    await running.start()
    try:
        # The slow target holds its first request (and has more waiting) ...
        await eventually(lambda: len(slow.seen) == 1)
        await create_hook(
            client,
            admin_headers,
            pipeline["id"],
            hook_body(f"http://127.0.0.1:{fast_server.port}/fast", name="fast"),
        )
        for _ in range(6):
            await complete_run(db, pipeline["id"])
        # ... while every fast delivery, all queued after it, gets through.
        await eventually(lambda: fast.successes == 6)
        assert len(slow.seen) == 1 and not slow.release.is_set()
        slow.release.set()
        await eventually(lambda: slow.successes == 9)
    finally:
        slow.release.set()
        await running.stop(5)
    assert len(fast.seen) == 6


async def test_a_claim_takes_no_more_of_a_hook_than_its_target_has_room_for(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    # A busy target's backlog is not claimed only to be handed back (each finished delivery
    # used to claim a full batch of it and release all but one).
    names = ("a", "b")
    hooks = {
        name: uuid.UUID(
            (
                await create_hook(
                    client, admin_headers, pipeline["id"], hook_body(f"http://t/{name}", name=name)
                )
            )["id"]
        )
        for name in names
    }
    for _ in range(6):
        await complete_run(db, pipeline["id"])  # one delivery per hook and run

    async def claim(**kwargs: Any) -> dict[str, int]:
        rows = await store.claim_deliveries(db, 64, 60, **kwargs)
        await store.release_deliveries(db, [(r["id"], r["attempt"]) for r in rows])
        return {name: sum(r["hook_id"] == hook for r in rows) for name, hook in hooks.items()}

    assert await claim(busy_hook_ids=[], per_hook=4) == {"a": 4, "b": 4}
    assert await claim(busy_hook_ids=[], per_hook=4, room={hooks["a"]: 1}) == {"a": 1, "b": 4}
    assert await claim(busy_hook_ids=[hooks["a"]], per_hook=10) == {"a": 0, "b": 6}
    assert await claim(busy_hook_ids=[], per_hook=4, room={hooks["b"]: 0}) == {"a": 4, "b": 0}


async def test_notifications_and_due_times_drive_an_otherwise_idle_dispatcher(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    target.plan("/woken", 500, 200)
    # Polling would take an hour: the new delivery arrives through LISTEN/NOTIFY, and the retry
    # runs when it falls due because the dispatcher sleeps only until then.
    config = outgoing_config(database_dsn, poll_interval=3600, retry_schedule=[0.2])
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/woken"))
    running = Dispatcher(db, config)
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    finally:
        await running.stop(5)
    assert len(target.seen) == 2


async def test_a_dispatcher_whose_listen_connection_dropped_listens_again_at_once(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    # Its LISTEN backend is terminated (as in a database restart): polling would take an hour,
    # so the delivery written right after arrives only because the dispatcher noticed the loss,
    # listened again and (its notification may have gone to nobody) woke up then.
    target, base = receiver
    config = outgoing_config(database_dsn, poll_interval=3600)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/again"))
    running = Dispatcher(db, config)
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN %hookgate_delivery_due%'"
    )
    with capture_logs() as logs:
        await running.start()
        try:
            [old] = await db.pool.fetch(listeners)
            await db.pool.execute("SELECT pg_terminate_backend($1)", old["pid"])
            await complete_run(db, pipeline["id"])
            await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
        finally:
            await running.stop(5)
    assert len(target.seen) == 1
    events = [e["event"] for e in logs]
    assert events.index("dispatcher_listener_lost") < events.index("dispatcher_listening")


async def test_a_reload_switching_the_guard_on_applies_to_the_next_request(
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
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/reload"))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))

    guarded = outgoing_config(database_dsn, allow_private_targets=False)
    dispatcher.apply_config(config, guarded, frozenset({"outgoing.allow_private_targets"}))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded", "failed"]))
    assert len(target.seen) == 1
    assert (await attempts(db, hook["id"]))[-1]["outcome"] == "refused"


async def test_a_session_a_reload_replaced_serves_its_requests_then_is_closed(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request in flight when a reload switches the guard finishes on the session it was
    sent on; that session is closed afterwards, not kept (with its resolver's thread and
    descriptors) until the dispatcher stops, once per such reload."""
    monkeypatch.setattr(dispatcher_module, "RETIRED_SESSION_LIFE", 1.0)
    target, base = receiver
    target.plan("/held", "wait-release")
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/held"))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: len(target.seen) == 1)
    replaced = dispatcher._session
    assert replaced is not None
    guarded = outgoing_config(database_dsn, allow_private_targets=False)
    dispatcher.apply_config(config, guarded, frozenset({"outgoing.allow_private_targets"}))
    assert dispatcher._session is not replaced and not replaced.closed
    target.release.set()  # answered on the replaced session
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    await eventually(lambda: replaced.closed)


@pytest.mark.parametrize("algorithm", ["sha1", "sha384", "sha512"])
async def test_a_custom_signature_header_uses_the_hooks_algorithm_and_is_never_stored(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
    algorithm: str,
) -> None:
    """A header name the generic rules do not recognise as secret (``X-Sig``) is redacted in
    the attempt history because it is the hook's signature header, and its HMAC uses the
    configured algorithm over the exact body sent."""
    target, base = receiver
    settings = {"signature_header": "X-Sig", "signature_algorithm": algorithm}
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/signed", settings=settings)
    )
    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    [seen] = target.seen
    digest = hmac.new(hook["secret"].encode(), seen.body, getattr(hashlib, algorithm)).hexdigest()
    assert seen.headers["X-Sig"] == f"{algorithm}={digest}"

    [attempt] = await attempts(db, hook["id"])
    assert attempt["headers"]["X-Sig"] == "[redacted]"
    assert digest not in repr(dict(attempt))
    shown = await client.get(f"/hooks/outgoing/{hook['id']}/requests", headers=admin_headers)
    assert shown.status == 200
    text = await shown.text()
    assert digest not in text and '"X-Sig":"[redacted]"' in text.replace(" ", "")


@pytest.fixture
async def echo_target(aiohttp_server: Any) -> tuple[list[dict[str, str]], str]:
    """A target that answers with the headers it got (JSON), and records them; its URL."""
    sent: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        sent.append(dict(request.headers))
        return web.json_response({"you_sent": dict(request.headers)})

    target = web.Application()
    target.router.add_post("/echo", echo)
    server = await aiohttp_server(target)
    return sent, f"http://127.0.0.1:{server.port}/echo"


async def test_a_target_that_echoes_the_request_does_not_put_its_credentials_in_the_history(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    dispatcher: Dispatcher,
    echo_target: tuple[list[dict[str, str]], str],
) -> None:
    """The excerpt of the answer is shown to everyone with hook:read; the credential and the
    signatures sent are not (an echo service, a misdirected hook)."""
    sent, echo_url = echo_target
    hook = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(
            echo_url,
            settings={
                "request_headers": [{"name": "Authorization", "value": "Bearer ghp_echoed_token"}],
                "signature_header": "X-Sig",
            },
        ),
    )
    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    [attempt] = await attempts(db, hook["id"])
    [headers] = sent
    excerpt = orjson.loads(attempt["response_excerpt"])["you_sent"]
    assert excerpt["Authorization"] == "[redacted]"
    assert excerpt["webhook-signature"] == "[redacted]"
    assert excerpt["X-Sig"] == "[redacted]"
    assert excerpt["webhook-id"] == headers["webhook-id"]  # the rest as the target answered
    for secret in ("ghp_echoed_token", headers["webhook-signature"], headers["X-Sig"]):
        assert secret not in attempt["response_excerpt"]


async def test_credential_headers_outside_the_old_name_list_are_masked_sealed_and_redacted(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
    dispatcher: Dispatcher,
    echo_target: tuple[list[dict[str, str]], str],
) -> None:
    """Azure's X-Functions-Key and Ocp-Apim-Subscription-Key are credentials like
    Authorization: never shown by the API (to a hook:read member either), sealed in the table,
    sent in clear to the target only, and redacted in the attempt and its echoed excerpt."""
    credentials = {
        "X-Functions-Key": "FUNCKEY_s3cr3t_0123456789",
        "Ocp-Apim-Subscription-Key": "APIMKEY_s3cr3t_0123456789",
    }
    sent, echo_url = echo_target
    request_headers = [{"name": k, "value": v} for k, v in credentials.items()]
    request_headers.append({"name": "X-Run-Status", "value": "{{ run.status }}"})
    hook = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(echo_url, settings={"request_headers": request_headers}),
    )
    reader = await make_member(
        client, db, config, database_dsn, pipeline["environment_id"], ["hook:read"]
    )
    shown = await client.get(f"/hooks/outgoing/{hook['id']}", headers=reader)
    assert shown.status == 200, await shown.text()
    for shape in (hook, await shown.json()):  # the create response, then a reader's GET
        assert shape["settings"]["request_headers"] == [
            {"name": "X-Functions-Key", "value": "********"},
            {"name": "Ocp-Apim-Subscription-Key", "value": "********"},
            {"name": "X-Run-Status", "value": "{{ run.status }}"},
        ]
    stored = await db.pool.fetchval(
        "SELECT settings::text FROM outgoing_hooks WHERE id = $1::uuid", hook["id"]
    )
    assert stored.count('"enc:v1:') == 2
    assert not any(value in stored for value in credentials.values())

    await complete_run(db, pipeline["id"])
    await eventually(lambda: _statuses_are(db, hook["id"], ["succeeded"]))
    [received] = sent
    assert {k: received[k] for k in credentials} == credentials  # the target gets them
    assert received["X-Run-Status"] == "completed"
    [attempt] = await attempts(db, hook["id"])
    redacted = dict.fromkeys(credentials, "[redacted]")
    assert {k: attempt["headers"][k] for k in credentials} == redacted
    assert attempt["headers"]["X-Run-Status"] == "completed"
    excerpt = orjson.loads(attempt["response_excerpt"])["you_sent"]
    assert {k: excerpt[k] for k in credentials} == redacted
    for path in (f"/hooks/outgoing/{hook['id']}/requests", f"/hook-requests/{attempt['id']}"):
        response = await client.get(path, headers=reader)
        assert response.status == 200, await response.text()
        text = await response.text()
        assert not any(value in text for value in credentials.values()), path
