"""Rotating an outgoing hook's signing secret with a grace period.

The API (the new secret shown once, masked afterwards, 409 without a secret, validation and
permissions) and the deliveries of a real dispatcher to a real receiver on 127.0.0.1, checked
with the ``standardwebhooks`` library: during the grace a receiver holding either secret
verifies a delivery; after it, only the new secret does.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.security.secret_box import SecretBox
from gateway.security.secret_keys import load_keys
from gateway.storage.database import Database
from tests.conftest import TEST_SECRET_KEY
from tests.integration.management_helpers import make_member
from tests.integration.outgoing_helpers import (
    Receiver,
    attempts,
    complete_run,
    create_hook,
    deliveries,
    eventually,
    hook_body,
)

MASK = "********"
DAY = 86_400


def rotate_path(hook_id: str) -> str:
    return f"/hooks/outgoing/{hook_id}/secret/rotate"


async def stored_secrets(database_dsn: str, hook_id: str) -> dict[str, Any]:
    """The hook's secret columns, opened with the tests' key (they are stored sealed)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM outgoing_hooks "
            "WHERE id = $1",
            uuid.UUID(hook_id),
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["previous_secret"] is None or row["previous_secret"].startswith("enc:v1:")
    return SecretBox.from_key_set(load_keys([TEST_SECRET_KEY], "")).open_row(row)


async def end_grace(database_dsn: str, hook_id: str) -> None:
    """Move the end of the grace into the past, as time would (the hook's updated_at, by which
    the dispatcher caches a compiled hook, is left as it is)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(
            "UPDATE outgoing_hooks SET previous_secret_expires_at = now() - interval '1 second' "
            "WHERE id = $1",
            uuid.UUID(hook_id),
        )
    finally:
        await conn.close()


# --- the API -----------------------------------------------------------------------------


async def test_rotation_shows_the_new_secret_once_and_keeps_the_old_one_for_a_day(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    texts: list[str] = []

    async def call(method: str, path: str, **kw: Any) -> Any:
        response = await client.request(method, path, headers=admin_headers, **kw)
        assert response.status < 300, await response.text()
        texts.append(await response.text())
        return await response.json()

    created = await call(
        "POST", f"/pipelines/{pipeline['id']}/hooks/outgoing", json=hook_body("https://x.test/")
    )
    old = created["secret"]
    assert created["previous_secret_expires_at"] is None
    before = datetime.now(UTC)
    with capture_logs() as logs:
        rotated = await call("POST", rotate_path(created["id"]))
    new = rotated["secret"]
    assert new.startswith("whsec_") and new not in (old, MASK)
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    # Default grace: hooks.secret_grace_period (one day), counted from the rotation.
    assert before + timedelta(seconds=DAY) - timedelta(seconds=5) <= expires
    assert expires <= datetime.now(UTC) + timedelta(seconds=DAY)

    got = await call("GET", f"/hooks/outgoing/{created['id']}")
    assert got["secret"] == MASK
    assert datetime.fromisoformat(got["previous_secret_expires_at"]) == expires
    listed = await call("GET", f"/pipelines/{pipeline['id']}/hooks/outgoing")
    assert [(h["secret"], h["previous_secret_expires_at"]) for h in listed] == [
        (MASK, rotated["previous_secret_expires_at"])
    ]
    await call("GET", f"/pipelines/{pipeline['id']}/hooks")
    renamed = await call("PUT", f"/hooks/outgoing/{created['id']}", json={"name": "renamed"})
    assert renamed["secret"] == MASK
    assert renamed["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]

    everything = "\n".join(texts)
    assert everything.count(old) == 1 and old in texts[0]
    assert everything.count(new) == 1 and new in texts[1]
    stored = await stored_secrets(database_dsn, created["id"])
    assert (stored["secret"], stored["previous_secret"]) == (new, old)
    assert stored["previous_secret_expires_at"] == expires  # the PUT kept the grace

    [event] = [e for e in logs if e["event"] == "outgoing_hook_secret_rotated"]
    assert event["hook_id"] == created["id"] and event["grace_period_seconds"] == DAY
    assert old not in repr(logs) and new not in repr(logs)


async def test_rotation_with_an_explicit_grace_period_or_none(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    created = await create_hook(client, admin_headers, pipeline["id"], hook_body("https://x.test/"))
    path = rotate_path(created["id"])
    response = await client.post(path, json={"grace_period_seconds": 60}, headers=admin_headers)
    assert response.status == 200, await response.text()
    first = await response.json()
    expires = datetime.fromisoformat(first["previous_secret_expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(seconds=60)
    assert (await stored_secrets(database_dsn, created["id"]))["previous_secret"] == (
        created["secret"]
    )

    response = await client.post(path, json={"grace_period_seconds": 0}, headers=admin_headers)
    assert response.status == 200
    second = await response.json()
    assert second["previous_secret_expires_at"] is None
    stored = await stored_secrets(database_dsn, created["id"])
    assert stored["previous_secret"] is None and stored["secret"] == second["secret"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"grace_period_seconds": -1}, {"grace_period_seconds": ["must be >= 0"]}),
        (
            {"grace_period_seconds": "60"},
            {"grace_period_seconds": ["must be an integer, got a string"]},
        ),
        (
            {"grace_period_seconds": 365 * DAY + 1},
            {"grace_period_seconds": ["must be <= 31536000"]},
        ),
        (
            {"grace_period_seconds": 99_999_999_999_999_999_999},
            {
                "grace_period_seconds": [
                    "must be an integer between 0 and 31536000, got one too large"
                ]
            },
        ),
        ({"secret": "x"}, None),
    ],
)
async def test_rotation_validation(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    database_dsn: str,
    body: dict[str, Any],
    errors: Any,
) -> None:
    created = await create_hook(client, admin_headers, pipeline["id"], hook_body("https://x.test/"))
    response = await client.post(rotate_path(created["id"]), json=body, headers=admin_headers)
    assert response.status == 422
    payload = await response.json()
    if errors is None:
        assert list(payload["errors"]) == ["secret"]
    else:
        assert payload["errors"] == errors
    assert (await stored_secrets(database_dsn, created["id"]))["secret"] == created["secret"]


async def test_a_hook_without_a_secret_is_a_409_and_turning_it_off_ends_the_grace(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    created = await create_hook(client, admin_headers, pipeline["id"], hook_body("https://x.test/"))
    path = rotate_path(created["id"])
    assert (await client.post(path, headers=admin_headers)).status == 200
    url = f"/hooks/outgoing/{created['id']}"
    off = await client.put(url, json={"requires_secret": False}, headers=admin_headers)
    assert off.status == 200, await off.text()
    assert (await off.json())["previous_secret_expires_at"] is None
    stored = await stored_secrets(database_dsn, created["id"])
    assert stored == {"secret": None, "previous_secret": None, "previous_secret_expires_at": None}

    refused = await client.post(path, headers=admin_headers)
    assert refused.status == 409
    message = (await refused.json())["message"]
    assert "no secret to rotate" in message and "requires_secret is false" in message
    assert (await client.get(url, headers=admin_headers)).status == 200

    on = await (await client.put(url, json={"requires_secret": True}, headers=admin_headers)).json()
    assert on["secret"].startswith("whsec_") and on["previous_secret_expires_at"] is None


async def test_rotation_needs_hook_update(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
) -> None:
    env_id = pipeline["environment_id"]
    created = await create_hook(client, admin_headers, pipeline["id"], hook_body("https://x.test/"))
    path = rotate_path(created["id"])
    reader = await make_member(client, db, config, database_dsn, env_id, ["hook:read"])
    outsider = await make_member(client, db, config, database_dsn, None, ["hook:update"])
    writer = await make_member(client, db, config, database_dsn, env_id, ["hook:update"])

    denied = await client.post(path, headers=reader)
    assert denied.status == 403
    assert "hook:update" in (await denied.json())["message"]
    assert (await client.post(path, headers=outsider)).status == 404
    assert (await client.post(rotate_path(str(uuid.uuid4())), headers=admin_headers)).status == 404
    assert (await stored_secrets(database_dsn, created["id"]))["previous_secret"] is None
    allowed = await client.post(path, headers=writer)
    assert allowed.status == 200, await allowed.text()
    assert (await allowed.json())["secret"].startswith("whsec_")


# --- deliveries --------------------------------------------------------------------------


def verifies(secret: str, seen: Any) -> bool:
    """Whether a receiver holding only ``secret`` accepts the request (standardwebhooks)."""
    try:
        Webhook(secret).verify(seen.body, seen.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_during_the_grace_both_secrets_verify_and_after_it_only_the_new_one(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> None:
    target, base = receiver
    created = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(base + "/deploys", settings={"signature_header": "X-Hub-Signature-256"}),
    )
    old = created["secret"]
    response = await client.post(
        rotate_path(created["id"]), json={"grace_period_seconds": 3600}, headers=admin_headers
    )
    new = (await response.json())["secret"]
    # One dispatcher for both deliveries: its compiled copy of the hook (cached until the hook
    # changes) must stop signing with the old secret when the grace ends, not when it changes.
    dispatcher = Dispatcher(db, config)
    await dispatcher.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: target.successes == 1)
        await end_grace(database_dsn, created["id"])
        await complete_run(db, pipeline["id"])
        await eventually(lambda: target.successes == 2)
    finally:
        await dispatcher.stop(0)
    during, after = target.seen
    assert verifies(old, during) and verifies(new, during)
    entries = during.headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    assert (
        Webhook(new).sign(
            during.headers["webhook-id"],
            datetime.fromtimestamp(int(during.headers["webhook-timestamp"]), UTC),
            during.body.decode(),
        )
        == entries[0]
    )  # the new secret's first
    # The custom header has room for one signature: the new secret's, keyed with its text.
    digest = hmac.new(new.encode(), during.body, hashlib.sha256).hexdigest()
    assert during.headers["X-Hub-Signature-256"] == f"sha256={digest}"

    assert verifies(new, after) and not verifies(old, after)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    digest = hmac.new(new.encode(), after.body, hashlib.sha256).hexdigest()
    assert after.headers["X-Hub-Signature-256"] == f"sha256={digest}"
    assert [d["status"] for d in await deliveries(db, created["id"])] == ["succeeded"] * 2


async def test_a_target_echoing_both_signatures_has_them_scrubbed(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    aiohttp_server: Any,
) -> None:
    signatures: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        signatures.append(request.headers["webhook-signature"])
        return web.Response(
            body=orjson.dumps({"headers": {str(k): v for k, v in request.headers.items()}}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/echo", echo)
    server = await aiohttp_server(app)
    created = await create_hook(
        client,
        admin_headers,
        pipeline["id"],
        hook_body(f"http://127.0.0.1:{server.port}/echo"),
    )
    await client.post(rotate_path(created["id"]), headers=admin_headers)
    dispatcher = Dispatcher(db, config)
    await dispatcher.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(lambda: len(signatures) >= 1)
        await eventually(lambda: _recorded(db, created["id"]))
    finally:
        await dispatcher.stop(0)
    first, *_ = await attempts(db, created["id"])
    excerpt = first["response_excerpt"]
    assert excerpt and "[redacted]" in excerpt
    new_signature, old_signature = (e.split(",", 1)[1] for e in signatures[0].split(" "))
    for signature in (new_signature, old_signature):
        assert signature not in excerpt and signature.replace("/", "\\/") not in excerpt


async def _recorded(db: Database, hook_id: str) -> bool:
    return bool(await attempts(db, hook_id))
