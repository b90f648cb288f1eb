"""Outgoing hooks with the rest of the gateway: the ingest path, request history, redelivery,
secrets at rest, and the sequence by which receivers order a run's events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from standardwebhooks import Webhook

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.security.secret_box import SecretBox, key_id_of
from gateway.security.secret_keys import load_keys, new_key_line
from gateway.storage import outgoing, runs
from gateway.storage.database import Database
from gateway.storage.secret_rotation import OUTGOING, rotate_secrets
from tests.conftest import TEST_SECRET_KEY
from tests.integration.ingest_helpers import PR_OPENED, github_headers, hook_path
from tests.integration.management_helpers import (
    make_member,
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
)
from tests.integration.runs_helpers import enqueue


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
    # The attempt's own shape, as its hook's attempts list shows it, plus where and the body:
    # it was shown in an incoming request's (no method, target URL, answer or attempt number).
    listed = await (
        await client.get(f"/hooks/outgoing/{hook['id']}/requests", headers=reader)
    ).json()
    assert {k: v for k, v in detail.items() if k in listed[0]} == listed[0]
    assert set(detail) - set(listed[0]) == {"pipeline_id", "environment_id", "body_format", "body"}
    assert (detail["method"], detail["target_url"], detail["attempt"]) == (
        "POST",
        base + "/again",
        1,
    )
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


async def test_an_attempt_recorded_under_the_narrower_rule_is_redacted_when_shown(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    """An attempt recorded before X-Functions-Key counted as a credential holds its value;
    neither the hook's attempt list nor GET /hook-requests/{id} shows it."""
    _, base = receiver
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/f"))
    await complete_run(db, pipeline["id"])
    await eventually(lambda: recorded_attempts(db, hook["id"], 1))
    [attempt] = await attempts(db, hook["id"])
    await db.pool.execute(
        "UPDATE hook_requests SET headers = headers || $2::jsonb WHERE id = $1",
        attempt["id"],
        {"X-Functions-Key": "OLD_FUNCKEY_zz"},
    )
    listed = await client.get(f"/hooks/outgoing/{hook['id']}/requests", headers=admin_headers)
    shown = await client.get(f"/hook-requests/{attempt['id']}", headers=admin_headers)
    for response in (listed, shown):
        assert response.status == 200, await response.text()
        assert "OLD_FUNCKEY_zz" not in await response.text()
    [item] = await listed.json()
    for headers in (item["headers"], (await shown.json())["headers"]):
        assert headers["X-Functions-Key"] == "[redacted]"
        assert headers["webhook-id"] == attempt["delivery_id"]


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


async def stored_outgoing(db: Database) -> dict[uuid.UUID, dict[str, Any]]:
    rows = await db.pool.fetch("SELECT id, name, secret, settings FROM outgoing_hooks")
    return {row["id"]: dict(row) for row in rows}


async def test_a_sealed_secret_from_a_dump_is_refused_and_the_stored_credential_kept(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    """The stop-20 secrets review, finding 2: the dispatcher decrypts a credential header's
    stored value before sending it, so a sealed value taken from a client as it is would let
    anyone holding one (a database dump) and hook:create have any hook secret decrypted and
    sent to a target of their choice."""
    target, base = receiver
    incoming = await make_seed_hook(client, admin_headers, pipeline["id"])
    # A hook the attacker may update, with a credential of its own, and a signed one.
    credential = {"request_headers": [{"name": "Authorization", "value": "Bearer ok"}]}
    hook = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(base + "/legit", requires_secret=False, settings=credential),
    )
    signed = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/signed", "run.failed")
    )

    # What a database dump holds (the review's reproduction): the sealed values of any row.
    dumped = await db.pool.fetchval(
        "SELECT secret FROM incoming_hooks WHERE id = $1", uuid.UUID(incoming["id"])
    )
    before = await stored_outgoing(db)
    sealed_header = before[uuid.UUID(hook["id"])]["settings"]["request_headers"][0]["value"]
    sealed_values = (dumped, before[uuid.UUID(signed["id"])]["secret"], sealed_header)
    assert all(value.startswith("enc:v1:") for value in sealed_values)

    for sealed in sealed_values:
        for name in ("Authorization", "X-Api-Key"):
            headers = {"request_headers": [{"name": name, "value": sealed}]}
            refused = {
                "settings.request_headers.0.value": [
                    "must be the plaintext secret, not a stored (encrypted) value: "
                    f"{name!r} is a credential header, and its value cannot start with 'enc:'"
                ]
            }
            created = await client.post(
                f"/pipelines/{pipeline['id']}/hooks/outgoing",
                json=hook_body(base + "/oracle", requires_secret=False, settings=headers),
                headers=admin_headers,
            )
            assert created.status == 422, await created.text()
            assert (await created.json())["errors"] == refused
            updated = await client.put(
                f"/hooks/outgoing/{hook['id']}", json={"settings": headers}, headers=admin_headers
            )
            assert updated.status == 422, await updated.text()
            assert (await updated.json())["errors"] == refused
        # The outgoing secret is generated by the gateway: no body may set it, sealed or not.
        for method, url in (
            ("post", f"/pipelines/{pipeline['id']}/hooks/outgoing"),
            ("put", f"/hooks/outgoing/{hook['id']}"),
        ):
            body = {**hook_body(base + "/oracle"), "secret": sealed}
            response = await getattr(client, method)(url, json=body, headers=admin_headers)
            assert response.status == 422
            assert "secret" in (await response.json())["errors"]
    assert await stored_outgoing(db) == before  # nothing stored, nothing changed

    # The mask sent back still keeps the stored value, byte for byte.
    read = await (await client.get(f"/hooks/outgoing/{hook['id']}", headers=admin_headers)).json()
    assert read["settings"]["request_headers"] == [{"name": "Authorization", "value": "********"}]
    kept = await client.put(
        f"/hooks/outgoing/{hook['id']}",
        json={"name": "renamed", "settings": read["settings"]},
        headers=admin_headers,
    )
    assert kept.status == 200, await kept.text()
    after = (await stored_outgoing(db))[uuid.UUID(hook["id"])]
    assert after["settings"] == before[uuid.UUID(hook["id"])]["settings"]

    # Sent over HTTP with the credential given at create, never another hook's secret.
    await complete_run(db, pipeline["id"])
    await eventually(lambda: recorded_attempts(db, hook["id"], 1))
    [seen] = target.seen
    assert (seen.path, seen.headers["Authorization"]) == ("/legit", "Bearer ok")
    sent = str(target.seen) + str(await attempts(db, hook["id"]))
    assert incoming["secret"] not in sent and signed["secret"] not in sent

    # `gateway keys rotate` re-seals the kept value with the new primary key.
    box = SecretBox.from_key_set(load_keys((new_key_line("b"), TEST_SECRET_KEY), ""))
    results = await rotate_secrets(db, box)
    assert next(r for r in results if r.table == OUTGOING).unreadable == 0
    rotated = (await stored_outgoing(db))[uuid.UUID(hook["id"])]
    [header] = rotated["settings"]["request_headers"]
    assert key_id_of(header["value"]) == "b" and box.decrypt(header["value"]) == "Bearer ok"


ORDER_EVENTS = ("run.queued", "run.started", "run.completed")


async def test_a_retried_started_arrives_after_completed_and_its_sequence_says_it_is_older(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    receiver: tuple[Receiver, str],
    dispatcher: Dispatcher,
) -> None:
    """Deliveries are not sent in order (README, Outgoing hooks: Order). The reviewer's t10:
    the first run.started answered 503 and was sent again after run.completed, so the target's
    last word about the run was "started"; by the sequence it can tell that one is older."""
    target, base = receiver
    target.plan("/run.started", 503, 200)
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/{{ event }}", *ORDER_EVENTS)
    )
    await complete_run(db, pipeline["id"], source_ref="main")

    def delivered() -> bool:
        return target.successes == 3

    await eventually(delivered)
    arrived = [(s.path, orjson.loads(s.body)) for s in target.seen]
    # Typically queued, started (503), completed, then started again a second later: the
    # arrival order is the dispatcher's, not asserted; what the receiver can rely on is.
    assert sorted(path for path, _ in arrived) == sorted(
        [f"/{e}" for e in ORDER_EVENTS] + ["/run.started"]
    )
    # What a receiver does: keep the event with the highest sequence.
    latest = max((body for _, body in arrived), key=lambda body: body["sequence"])
    assert latest["type"] == "run.completed" and latest["data"]["run"]["status"] == "completed"
    sequences = {path: body["sequence"] for path, body in arrived}
    assert sequences["/run.queued"] < sequences["/run.started"] < sequences["/run.completed"]
    [first, again] = [body for path, body in arrived if path == "/run.started"]
    assert first == again  # the retry is the same event: same sequence, same timestamp
    stored = {d["event"]: d["payload"]["sequence"] for d in await deliveries(db, hook["id"])}
    assert stored == {event: sequences[f"/{event}"] for event in ORDER_EVENTS}


async def test_the_sequence_orders_changes_whose_transactions_started_the_other_way_round(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    """A transaction that began before the run was queued, and changes it after the queueing
    committed (a claim's sweeps run before its claim statement), has an earlier now(): the
    later change carries the earlier timestamp. Its sequence is still the larger one. Two
    hooks get the same number for one change."""
    hooks = [
        await create_hook(
            client,
            admin_headers,
            pipeline["id"],
            hook_body("http://127.0.0.1:9/x", "run.status_changed", name=name),
        )
        for name in ("a", "b")
    ]
    async with db.transaction() as session:
        await session.fetchval("schema_version")  # the transaction has begun: now() is fixed
        await asyncio.sleep(0.01)  # not for ordering: so that the two now()s differ visibly
        run = await enqueue(db, pipeline["id"], source_ref="main")  # commits meanwhile
        await runs.transition(session, run["id"], None, "cancelled", message="called off")
    for hook in hooks:
        queued, cancelled = sorted(
            (d["payload"] for d in await deliveries(db, hook["id"])),
            key=lambda p: p["run"]["status"] != "queued",
        )
        assert (queued["run"]["status"], cancelled["run"]["status"]) == ("queued", "cancelled")
        # Why timestamp cannot order them:
        assert datetime.fromisoformat(cancelled["timestamp"]) < datetime.fromisoformat(
            queued["timestamp"]
        )
        assert cancelled["sequence"] > queued["sequence"]
    numbers = [
        sorted(d["payload"]["sequence"] for d in await deliveries(db, h["id"])) for h in hooks
    ]
    assert numbers[0] == numbers[1]
