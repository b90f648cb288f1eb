"""Hook secrets encrypted at rest, end to end: the API shows the plaintext once, the database
never holds it, ingest and the dispatcher open it, and keys rotate while the gateway serves."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.dispatcher.outbound import CompiledHook as OutgoingHook
from gateway.logs import configure_logging
from gateway.security.secret_box import SecretBox, StoredSecret, key_id_of
from gateway.security.secret_keys import load_keys, new_key_line
from gateway.security.secret_service import check_secret_keys
from gateway.storage import outgoing
from gateway.storage.database import Database
from gateway.storage.secret_rotation import INCOMING, OUTGOING, key_usage, rotate_secrets
from tests.conftest import TEST_SECRET_KEY
from tests.integration.ingest_helpers import create_hook, fetch, new_pipeline
from tests.integration.ops_helpers import call_hook, reload_to, with_section
from tests.integration.outgoing_helpers import hook_body

TEST_KEY_ID = TEST_SECRET_KEY.split(":", 1)[0]


def box_of(*lines: str) -> SecretBox:
    return SecretBox.from_key_set(load_keys(lines, ""))


async def hook_sealed_with_another_key(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> tuple[dict[str, Any], str]:
    """A new incoming hook whose stored secret is sealed with a key this gateway lacks, and
    that key's line."""
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id)
    other = new_key_line("other")
    await fetch(
        database_dsn,
        "UPDATE incoming_hooks SET secret = $2 WHERE id = $1 RETURNING id",
        uuid.UUID(hook["id"]),
        box_of(other).encrypt(hook["secret"]),
    )
    return hook, other


async def stored_rows(db: Database, table: str, hook_id: str) -> dict[str, Any]:
    """The row as stored, plus ``dump``: all of it as text, as a database dump would show it."""
    row = await db.pool.fetchrow(
        f"SELECT to_jsonb(h)::text AS dump, h.* FROM {table} h WHERE id = $1", uuid.UUID(hook_id)
    )
    assert row is not None
    return dict(row)


async def test_incoming_secrets_are_stored_encrypted_and_still_verify(
    client: Any, admin_headers: dict[str, str], database_dsn: str, db: Database
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id)
    secret = hook["secret"]
    assert len(secret) >= 32 and not secret.startswith("enc:")

    row = await stored_rows(db, "incoming_hooks", hook["id"])
    assert key_id_of(row["secret"]) == TEST_KEY_ID
    assert secret not in row["dump"]
    assert box_of(TEST_SECRET_KEY).decrypt(row["secret"]) == secret
    assert (await call_hook(client, hook)).status == 202

    response = await client.post(
        f"/hooks/incoming/{hook['id']}/secret/rotate",
        json={"grace_period_seconds": 3600},
        headers=admin_headers,
    )
    assert response.status == 200
    new_secret = (await response.json())["secret"]
    row = await stored_rows(db, "incoming_hooks", hook["id"])
    assert key_id_of(row["secret"]) == key_id_of(row["previous_secret"]) == TEST_KEY_ID
    assert secret not in row["dump"] and new_secret not in row["dump"]
    assert (await call_hook(client, hook, new_secret)).status == 202
    assert (await call_hook(client, hook, secret)).status == 202  # in its grace period
    assert (await call_hook(client, hook, "not the secret")).status == 401
    # The request history keeps no signature either.
    history = await fetch(database_dsn, "SELECT headers::text AS h FROM hook_requests")
    assert history and all("sha256=" not in r["h"] for r in history)


async def test_outgoing_secrets_are_stored_encrypted_and_kept_on_update(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    body = hook_body("https://example.com/h", requires_secret=True)
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/outgoing", json=body, headers=admin_headers
    )
    assert response.status == 201, await response.text()
    hook = await response.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    row = await stored_rows(db, "outgoing_hooks", hook["id"])
    assert key_id_of(row["secret"]) == TEST_KEY_ID and secret not in row["dump"]

    renamed = await client.put(
        f"/hooks/outgoing/{hook['id']}", json={"name": "renamed"}, headers=admin_headers
    )
    assert renamed.status == 200 and (await renamed.json())["secret"] == "********"
    row = await stored_rows(db, "outgoing_hooks", hook["id"])
    # Written back as stored, not sealed twice: the dispatcher opens the same plaintext.
    compiled = OutgoingHook.from_row(row, db.secret_box)
    assert compiled.secret == secret and secret not in row["dump"]


async def test_outgoing_credential_headers_are_sealed_and_follow_key_rotation(
    client: Any, admin_headers: dict[str, str], db: Database, database_dsn: str
) -> None:
    # "A dump of the database alone reveals no secret": API tokens in request headers too.
    pipeline_id = await new_pipeline(client, admin_headers)
    headers = [
        {"name": "Authorization", "value": "Bearer ghp_token123"},
        {"name": "X-Api-Key", "value": "key-456"},
        {"name": "X-Run", "value": "{{ run.id }}"},
        {"name": "X-Mode", "value": "enc:gzip"},  # not a credential, however it looks
    ]
    body = hook_body("https://example.com/h", settings={"request_headers": headers})
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/outgoing", json=body, headers=admin_headers
    )
    assert response.status == 201, await response.text()
    hook = await response.json()
    row = await stored_rows(db, "outgoing_hooks", hook["id"])
    assert "ghp_token123" not in row["dump"] and "key-456" not in row["dump"]
    stored = row["settings"]["request_headers"]
    assert [key_id_of(h["value"]) for h in stored[:3]] == [TEST_KEY_ID, TEST_KEY_ID, None]
    assert stored[2:] == headers[2:]  # not credentials: kept as written
    compiled = OutgoingHook.from_row(row, db.secret_box)
    assert [(name, t.source) for name, t in compiled.headers] == [
        (h["name"], h["value"]) for h in headers
    ]
    # A plaintext credential written before sealing existed is sealed by the rotation, and
    # sealed ones move to the new primary key.
    legacy = {**row["settings"], "request_headers": [headers[1], stored[0], headers[3]]}
    await fetch(
        database_dsn,
        "UPDATE outgoing_hooks SET settings = $2::jsonb WHERE id = $1 RETURNING id",
        uuid.UUID(hook["id"]),
        orjson.dumps(legacy).decode(),
    )
    line_b = new_key_line("b")
    results = await rotate_secrets(db, box_of(line_b, TEST_SECRET_KEY), batch_size=1)
    outgoing = next(r for r in results if r.table == OUTGOING)
    assert (outgoing.reencrypted, outgoing.conflicts, outgoing.unreadable) == (1, 0, 0)
    row = await stored_rows(db, "outgoing_hooks", hook["id"])
    rotated = row["settings"]["request_headers"]
    assert [key_id_of(h["value"]) for h in rotated[:2]] == ["b", "b"]
    assert rotated[2] == headers[3]
    opened = OutgoingHook.from_row(row, box_of(line_b))
    assert [t.source for _, t in opened.headers] == ["key-456", "Bearer ghp_token123", "enc:gzip"]
    # Nothing left to do: a second run rewrites nothing.
    again = await rotate_secrets(db, box_of(line_b), batch_size=1)
    assert next(r for r in again if r.table == OUTGOING).reencrypted == 0
    usage = await key_usage(db)
    assert ("outgoing_hooks.settings.request_headers", "b", 2) in usage


async def test_storage_writes_back_as_it_is_only_a_value_read_from_the_database(
    client: Any, admin_headers: dict[str, str], db: Database
) -> None:
    """Behind the API's refusal of sealed-looking values: a ``str`` is always a new secret,
    encrypted even when it looks sealed, so whatever reaches storage the dispatcher sends it
    as given; only a StoredSecret (a value the caller read back) is kept as stored."""
    pipeline_id = await new_pipeline(client, admin_headers)
    sealed = db.secret_box.encrypt("Bearer from-a-dump")
    headers = [
        {"name": "Authorization", "value": sealed},
        {"name": "X-Api-Key", "value": StoredSecret(sealed)},
    ]
    values = {
        "name": "o",
        "active": True,
        "target_url": "https://example.com/h",
        "events": ["run.completed"],
        "trigger_when": {"events": ["run.completed"]},
        "settings": {"request_headers": headers},
        "requires_secret": True,
    }
    hook_id = uuid.uuid4()
    row = await outgoing.insert_hook(db, hook_id, pipeline_id, values, sealed, None)
    compiled = OutgoingHook.from_row(row, db.secret_box)
    assert compiled.secret == sealed
    assert [t.source for _, t in compiled.headers] == [sealed, "Bearer from-a-dump"]
    async with db.transaction() as session:
        row = await outgoing.update_hook(session, hook_id, values, StoredSecret(sealed))
    assert row["secret"] == sealed
    assert OutgoingHook.from_row(row, db.secret_box).secret == "Bearer from-a-dump"


async def test_a_credential_header_stored_in_plaintext_before_the_rule_named_it(
    client: Any, admin_headers: dict[str, str], db: Database, database_dsn: str, config: Config
) -> None:
    """X-Functions-Key was stored as written while the rule did not call it a credential.
    After the upgrade it is masked and still sent; a PUT that sends the mask back keeps it
    (sealed now), and so does `gateway keys rotate`, with the same primary key."""
    pipeline_id = await new_pipeline(client, admin_headers)
    headers = [
        {"name": "X-Functions-Key", "value": "FUNCKEY_legacy_0123456789"},
        {"name": "X-Run", "value": "{{ run.id }}"},
    ]
    body = hook_body("https://example.com/h", settings={"request_headers": headers})
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/outgoing", json=body, headers=admin_headers
    )
    assert response.status == 201, await response.text()
    hook_id = (await response.json())["id"]

    async def stored_as_before_the_upgrade() -> None:
        row = await stored_rows(db, "outgoing_hooks", hook_id)
        await fetch(
            database_dsn,
            "UPDATE outgoing_hooks SET settings = $2::jsonb WHERE id = $1 RETURNING id",
            uuid.UUID(hook_id),
            orjson.dumps({**row["settings"], "request_headers": headers}).decode(),
        )

    async def sealed_and_sent() -> None:
        row = await stored_rows(db, "outgoing_hooks", hook_id)
        stored = row["settings"]["request_headers"]
        assert key_id_of(stored[0]["value"]) == TEST_KEY_ID and stored[1] == headers[1]
        assert "FUNCKEY_legacy" not in row["dump"]
        opened = OutgoingHook.from_row(row, db.secret_box)
        assert [t.source for _, t in opened.headers] == [h["value"] for h in headers]

    await stored_as_before_the_upgrade()
    with capture_logs() as logs:  # as at the next start of serve or dispatch
        await check_secret_keys(db, config)
    [warned] = [e for e in logs if e["event"] == "secrets_in_plaintext"]
    assert warned["log_level"] == "warning" and warned["sensitive_header_values"] == 1
    url = f"/hooks/outgoing/{hook_id}"
    read = await (await client.get(url, headers=admin_headers)).json()
    assert read["settings"]["request_headers"] == [
        {"name": "X-Functions-Key", "value": "********"},
        headers[1],
    ]
    row = await stored_rows(db, "outgoing_hooks", hook_id)
    # The dispatcher still opens it: a plaintext value passes through the box.
    opened = OutgoingHook.from_row(row, db.secret_box)
    assert [t.source for _, t in opened.headers] == [h["value"] for h in headers]

    echo = {k: read[k] for k in ("name", "target_url", "trigger_when", "settings")}
    response = await client.put(url, json=echo, headers=admin_headers)
    assert response.status == 200, await response.text()
    await sealed_and_sent()

    await stored_as_before_the_upgrade()
    results = await rotate_secrets(db, box_of(TEST_SECRET_KEY))
    outgoing = next(r for r in results if r.table == OUTGOING)
    assert (outgoing.reencrypted, outgoing.conflicts, outgoing.unreadable) == (1, 0, 0)
    await sealed_and_sent()
    with capture_logs() as logs:
        await check_secret_keys(db, config)
    assert not [e for e in logs if e["event"] == "secrets_in_plaintext"]


async def test_a_secret_sealed_with_a_missing_key_fails_closed_until_the_key_is_added(
    client: Any, admin_headers: dict[str, str], config: Config, database_dsn: str
) -> None:
    hook, other = await hook_sealed_with_another_key(client, admin_headers, database_dsn)

    async def status() -> int:
        return int((await call_hook(client, hook)).status)

    # The update notified the cache; the row cannot be opened with the configured key.
    assert await _eventually_status(status, 500)
    keys = (TEST_SECRET_KEY, other)
    reload_to(client, with_section(config, "security", secret_keys=keys))
    assert await status() == 202


async def test_rotating_to_a_new_primary_key_while_serving(
    client: Any, admin_headers: dict[str, str], config: Config, db: Database, database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    hooks = [await create_hook(client, admin_headers, pipeline_id) for _ in range(3)]
    old_secret = hooks[0]["secret"]
    response = await client.post(
        f"/hooks/incoming/{hooks[0]['id']}/secret/rotate",
        json={"grace_period_seconds": 3600},
        headers=admin_headers,
    )
    hooks[0] = {**hooks[0], "secret": (await response.json())["secret"]}
    calls = [(hook, hook["secret"]) for hook in hooks] + [(hooks[0], old_secret)]

    # Step 1 (SIGHUP): key B becomes the primary; A stays configured to open existing rows.
    line_b = new_key_line("b")
    reload_to(client, with_section(config, "security", secret_keys=(line_b, TEST_SECRET_KEY)))
    hooks.append(await create_hook(client, admin_headers, pipeline_id))
    calls.append((hooks[-1], hooks[-1]["secret"]))
    new_row = await stored_rows(db, "incoming_hooks", hooks[-1]["id"])
    assert key_id_of(new_row["secret"]) == "b"

    # Step 2: `gateway keys rotate` (one row per transaction) while senders keep calling.
    statuses: list[int] = []
    rotated = asyncio.Event()

    async def senders() -> None:
        while not rotated.is_set() or len(statuses) < 4 * len(calls):
            for hook, secret in calls:
                statuses.append((await call_hook(client, hook, secret)).status)

    traffic = asyncio.create_task(senders())
    results = await rotate_secrets(db, box_of(line_b, TEST_SECRET_KEY), batch_size=1)
    rotated.set()
    await traffic
    incoming = next(r for r in results if r.table == INCOMING)
    assert (incoming.reencrypted, incoming.conflicts, incoming.unreadable) == (3, 0, 0)
    assert set(statuses) == {202}

    rows = await fetch(database_dsn, "SELECT secret, previous_secret FROM incoming_hooks")
    assert {key_id_of(r["secret"]) for r in rows} == {"b"}
    assert {key_id_of(r["previous_secret"]) for r in rows if r["previous_secret"]} == {"b"}

    # Step 3 (SIGHUP): key A is removed; every hook keeps verifying with B alone.
    reload_to(client, with_section(config, "security", secret_keys=(line_b,)))
    for hook, secret in calls:
        assert (await call_hook(client, hook, secret)).status == 202


async def test_rows_written_before_encryption_stay_readable(
    client: Any, admin_headers: dict[str, str], config: Config, db: Database
) -> None:
    # A plaintext row (encryption was off when it was written) keeps working with keys on.
    reload_to(client, replace(config, security=replace(config.security, secret_keys=())))
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id)
    row = await stored_rows(db, "incoming_hooks", hook["id"])
    assert row["secret"] == hook["secret"]
    reload_to(client, config)
    assert (await call_hook(client, hook)).status == 202


async def _eventually_status(probe: Any, expected: int, attempts: int = 200) -> bool:
    for _ in range(attempts):
        if await probe() == expected:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_request_answered_500_for_an_unreadable_secret_is_never_replayed(
    client: Any, admin_headers: dict[str, str], config: Config, database_dsn: str
) -> None:
    """Its signature was never checked (the secret could not be opened), yet its body was
    stored: once the key is back, replaying it (which skips verification) must not turn a
    forged request into a run."""
    hook, other = await hook_sealed_with_another_key(client, admin_headers, database_dsn)

    async def forged() -> int:
        return int((await call_hook(client, hook, secret="not the secret")).status)

    assert await _eventually_status(forged, 500)
    reload_to(client, with_section(config, "security", secret_keys=(TEST_SECRET_KEY, other)))
    listed = await (
        await client.get(f"/hooks/incoming/{hook['id']}/requests", headers=admin_headers)
    ).json()
    recorded = next(r for r in listed if r["status_code"] == 500)
    replay = await client.post(f"/hook-requests/{recorded['id']}/replay", headers=admin_headers)
    assert replay.status == 409, await replay.text()
    assert "did not pass signature verification" in (await replay.json())["message"]
    assert await fetch(database_dsn, "SELECT id FROM pipeline_runs") == []


async def test_a_reload_that_drops_a_key_still_in_use_says_so_at_once(
    client: Any,
    admin_headers: dict[str, str],
    config: Config,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Removing the old key before `gateway keys rotate` has re-sealed everything (or a typo in
    the list): the reload is valid, but every hook sealed with that key will answer 500. The
    operator learns it from the reload, not from the first failing request of each hook."""
    pipeline_id = await new_pipeline(client, admin_headers)
    await create_hook(client, admin_headers, pipeline_id)  # sealed with the test key
    configure_logging("info", "json")
    capsys.readouterr()
    reload_to(client, with_section(config, "security", secret_keys=(new_key_line("b"),)))

    async def reported() -> list[dict[str, Any]]:
        await asyncio.sleep(0.05)
        return [
            line
            for line in map(orjson.loads, capsys.readouterr().err.splitlines())
            if line["event"] == "secret_keys_missing"
        ]

    found: list[dict[str, Any]] = []
    for _ in range(100):
        found += await reported()
        if found:
            break
    [line] = found
    assert line["level"] == "error" and line["after_reload"] is True
    assert line["key_ids"] == [TEST_KEY_ID] and line["sealed_values"] == 1


async def test_no_key_file_is_generated_beside_secrets_sealed_with_other_keys(
    client: Any, admin_headers: dict[str, str], config: Config, db: Database, tmp_path: Any
) -> None:
    # A replaced container without its key file: a new key would open none of the secrets.
    pipeline_id = await new_pipeline(client, admin_headers)
    await create_hook(client, admin_headers, pipeline_id)
    key_file = tmp_path / "var" / "secret-keys"
    lost = with_section(config, "security", secret_keys=(), key_file=str(key_file))
    assert lost.security.create_key_file
    with pytest.raises(ValueError) as refused:
        await check_secret_keys(db, lost)
    assert str(refused.value).startswith(
        f"security.key_file {str(key_file)!r} does not exist, and the database holds 1 "
        f"secret(s) sealed with key(s) {TEST_KEY_ID}: a new key would open none of them"
    )
    assert not key_file.exists()


async def test_a_key_file_is_generated_for_a_database_without_sealed_secrets(
    config: Config, db: Database, tmp_path: Any
) -> None:
    key_file = tmp_path / "var" / "secret-keys"
    fresh = with_section(config, "security", secret_keys=(), key_file=str(key_file))
    await check_secret_keys(db, fresh)
    assert key_file.exists()
    assert db.secret_box.primary_key_id is not None
