"""Incoming hooks through the management API: the seed's three steps, validation, masking,
rotation, update and deletion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from gateway import appkeys
from gateway.config import Config
from gateway.ingest.hook_cache import HOOK_CACHE
from gateway.security.secret_box import SecretBox
from gateway.security.secret_keys import load_keys
from gateway.storage.database import Database
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_SECRET_KEY
from tests.integration.management_helpers import (
    JSON_HEADERS,
    MEMBER_PASSWORD,
    SEED_CREATE_BODY,
    make_environment,
    make_member,
    make_pipeline,
    make_seed_hook,
)
from tests.integration.ops_helpers import call_hook

# The smallest closed role that can run the seed's three steps (hook:create implies hook:read,
# everything implies environment:read).
SEED_ROLE = ["environment:read", "application:read", "hook:read", "hook:create"]
SEED_VARIABLES = [
    {
        "name": "source_type",
        "path": "source_type",
        "type": "string",
        "required": False,
        "default_value": "branch",
    },
    {
        "name": "source_ref",
        "path": "pull_request.head.ref",
        "type": "string",
        "required": False,
        "default_value": "main",
    },
    {
        "name": "pull_request_id",
        "path": "pull_request.number",
        "type": "integer",
        "required": False,
        "default_value": None,
    },
    {
        "name": "pull_request_title",
        "path": "pull_request.title",
        "type": "string",
        "required": False,
        "default_value": None,
    },
    {
        "name": "commit_hash",
        "path": "pull_request.head.sha",
        "type": "string",
        "required": False,
        "default_value": None,
    },
]


@pytest.fixture
async def pipeline(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    environment = await make_environment(client, admin_headers)
    return await make_pipeline(client, admin_headers, environment["id"])


@pytest.fixture
async def member_factory(client: Any, db: Database, config: Config, database_dsn: str) -> Any:
    async def make(environment_id: int | None, permissions: list[str]) -> dict[str, str]:
        return await make_member(client, db, config, database_dsn, environment_id, permissions)

    return make


async def _seed_steps(client: Any, pipeline_id: int, email: str, password: str) -> None:
    # Step 1: log in and keep the access token.
    response = await client.post(
        "/users/login",
        json={"email": email, "password": password},
        headers={"Accept": "application/json"},
    )
    assert response.status == 200
    bearer = {"Authorization": f"Bearer {(await response.json())['access_token']}"}

    # Step 2: create the webhook with the seed's body, byte for byte.
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/incoming",
        data=SEED_CREATE_BODY,
        headers={**JSON_HEADERS, **bearer},
    )
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["url"] == f"http://hooks.test/hooks/incoming/{created['id']}"
    assert response.headers["Location"] == f"/hooks/incoming/{created['id']}"
    assert len(created["secret"]) >= 32 and created["secret"] != "********"
    assert {k: created[k] for k in ("name", "active", "requires_secret", "action_type")} == {
        "name": "Deploy `main` branch",
        "active": True,
        "requires_secret": True,
        "action_type": "deploy",
    }
    assert created["secret_algorithm"] == "sha256"
    assert created["secret_header_name"] == "x-hub-signature-256"
    assert created["type"] == "incoming" and created["pipeline_id"] == pipeline_id
    assert created["trigger_when"] == {"conditions": []}
    assert created["settings"] == {"variables": SEED_VARIABLES, "delivery_id_header": None}

    # Step 3: the pipeline's hooks include it, secret masked.
    response = await client.get(
        f"/pipelines/{pipeline_id}/hooks", headers={**JSON_HEADERS, **bearer}
    )
    assert response.status == 200
    listed = await response.json()
    assert [h["id"] for h in listed] == [created["id"]]
    assert listed[0] == {**created, "secret": "********"}


async def test_seed_steps_as_admin(client: Any, admin_token: str, pipeline: dict[str, Any]) -> None:
    await _seed_steps(client, pipeline["id"], ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_seed_steps_as_member_with_the_seed_permissions(
    client: Any, db: Database, config: Config, admin_headers: dict[str, str], database_dsn: str
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    email = "seed-member@example.com"
    await make_member(client, db, config, database_dsn, environment["id"], SEED_ROLE, email)
    await _seed_steps(client, pipeline["id"], email, MEMBER_PASSWORD)


@pytest.mark.parametrize("missing", ["hook:create", "application:read"])
async def test_create_needs_application_read_and_hook_create(
    client: Any, admin_headers: dict[str, str], member_factory: Any, missing: str
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    member = await member_factory(environment["id"], [p for p in SEED_ROLE if p != missing])
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        data=SEED_CREATE_BODY,
        headers={**JSON_HEADERS, **member},
    )
    assert response.status == 403
    assert (await response.json())["message"] == (
        f"missing permission '{missing}' in environment {environment['id']}"
    )


async def test_hooks_of_other_environments_are_invisible(
    client: Any, admin_headers: dict[str, str], member_factory: Any, pipeline: dict[str, Any]
) -> None:
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    other = await make_environment(client, admin_headers)
    outsider = await member_factory(
        other["id"], ["environment:read", "hook:read", "hook:update", "hook:delete"]
    )
    for method, path in (
        ("GET", f"/hooks/incoming/{hook['id']}"),
        ("PUT", f"/hooks/incoming/{hook['id']}"),
        ("DELETE", f"/hooks/incoming/{hook['id']}"),
        ("POST", f"/hooks/incoming/{hook['id']}/secret/rotate"),
        ("GET", f"/hooks/incoming/{hook['id']}/requests"),
    ):
        response = await client.request(method, path, json={}, headers=outsider)
        assert response.status == 404, path
        assert (await response.json())["message"] == "hook not found"
    response = await client.get(f"/pipelines/{pipeline['id']}/hooks", headers=outsider)
    assert response.status == 404


async def test_hook_permissions_by_verb(
    client: Any, admin_headers: dict[str, str], member_factory: Any, pipeline: dict[str, Any]
) -> None:
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    env = pipeline["environment_id"]
    reader = await member_factory(env, ["environment:read", "hook:read"])
    updater = await member_factory(env, ["environment:read", "hook:read", "hook:update"])
    path = f"/hooks/incoming/{hook['id']}"
    assert (await client.get(path, headers=reader)).status == 200
    assert (await client.get(f"/pipelines/{pipeline['id']}/hooks", headers=reader)).status == 200
    for method, target, headers, permission in (
        ("PUT", path, reader, "hook:update"),
        ("POST", f"{path}/secret/rotate", reader, "hook:update"),
        ("DELETE", path, updater, "hook:delete"),
    ):
        response = await client.request(method, target, json={}, headers=headers)
        assert response.status == 403, target
        assert (await response.json())["message"] == (
            f"missing permission '{permission}' in environment {env}"
        )
    assert (await client.put(path, json={"active": False}, headers=updater)).status == 200


async def test_defaults_and_normalisation(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        json={
            "name": "  minimal  ",
            "action_type": "deploy",
            "secret_header_name": "X-Hub-Signature-256",
            "settings": {"delivery_id_header": "X-GitHub-Delivery"},
        },
        headers=admin_headers,
    )
    assert response.status == 201
    hook = await response.json()
    assert hook["name"] == "minimal"
    assert hook["active"] is True and hook["requires_secret"] is True
    assert hook["secret_algorithm"] == "sha256"
    assert hook["secret_header_name"] == "x-hub-signature-256"
    assert hook["trigger_when"] == {"conditions": []}
    assert hook["settings"] == {"variables": [], "delivery_id_header": "x-github-delivery"}
    assert not hook["secret"].startswith("whsec_")


async def test_standard_webhooks_hooks_get_a_whsec_secret(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        json={"name": "svix", "action_type": "deploy", "secret_header_name": "webhook-signature"},
        headers=admin_headers,
    )
    assert response.status == 201
    assert (await response.json())["secret"].startswith("whsec_")


async def test_switching_to_standard_webhooks_issues_a_whsec_secret_once(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    # The HMAC hook's plain secret is not one a Standard Webhooks sender can use (the reference
    # library refuses it): the switch issues a whsec_ secret, and the old one stops at once.
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    switched = await client.put(
        f"/hooks/incoming/{hook['id']}",
        json={"secret_header_name": "webhook-signature"},
        headers=admin_headers,
    )
    assert switched.status == 200
    answer = await switched.json()
    assert answer["secret"].startswith("whsec_") and answer["secret"] != hook["secret"]
    assert answer["previous_secret_expires_at"] is None
    body = '{"pull_request": {"number": 1}}'
    message_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
    signature = Webhook(answer["secret"]).sign(message_id, now, body)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    sent = await client.post(f"/hooks/incoming/{hook['id']}", data=body, headers=headers)
    assert sent.status == 202, await sent.text()
    # Shown once; any other change (or none of the scheme) shows the mask again.
    again = await client.put(
        f"/hooks/incoming/{hook['id']}", json={"name": "renamed"}, headers=admin_headers
    )
    assert (await again.json())["secret"] == "********"


def _variables(*items: dict[str, Any]) -> dict[str, Any]:
    return {"settings": {"variables": list(items)}}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": "x" * 61}, "name", "must be at most 60 characters"),
        ({"name": None}, "name", "is required"),
        ({"name": 5}, "name", "must be a string, got an integer"),
        ({"action_type": None}, "action_type", "is required"),
        ({"active": "yes"}, "active", "must be true or false, got a string"),
        ({"requires_secret": 1}, "requires_secret", "must be true or false, got an integer"),
        (
            {"secret_algorithm": "md5"},
            "secret_algorithm",
            "must be one of: sha1, sha256, sha384, sha512",
        ),
        (
            {"secret_header_name": "x" * 65},
            "secret_header_name",
            "must be at most 64 characters",
        ),
        (
            {"secret_header_name": "x signature"},
            "secret_header_name",
            "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            # A signature sent as the Content-Type was refused with 415, its message (stored in
            # the history) holding the signature; a hook so made could never accept a call.
            {"secret_header_name": "Content-Type"},
            "secret_header_name",
            "must not be 'content-type': HTTP or a proxy owns that header; choose a header of "
            "your own, e.g. x-hub-signature-256",
        ),
        (
            {"secret_header_name": "x-request-id"},  # echoed back in every response
            "secret_header_name",
            "must not be 'x-request-id': HTTP or a proxy owns that header; choose a header of "
            "your own, e.g. x-hub-signature-256",
        ),
        ({"colour": "red"}, "colour", None),
        ({"secret": "mine"}, "secret", None),
        ({"settings": []}, "settings", "must be an object"),
        ({"settings": {"variables": [], "x": 1}}, "settings.x", None),
        (
            {"settings": {"delivery_id_header": "a b"}},
            "settings.delivery_id_header",
            "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        ({"settings": {"variables": {}}}, "settings.variables", "must be a list"),
        (
            {
                "secret_header_name": "x-gitlab-token",
                "settings": {"delivery_id_header": "X-Gitlab-Token"},
            },
            "settings.delivery_id_header",
            "must not be a header that carries the secret or a signature ('x-gitlab-token'): "
            "its value would be stored and shown as the delivery id",
        ),
        (
            # Not the hook's header, but a credential the history redacts all the same.
            {"settings": {"delivery_id_header": "X-Api-Key"}},
            "settings.delivery_id_header",
            "must not be a header that carries the secret or a signature ('x-api-key'): "
            "its value would be stored and shown as the delivery id",
        ),
        (
            {
                "secret_header_name": "webhook-signature",
                "settings": {"delivery_id_header": "x-github-delivery"},
            },
            "settings.delivery_id_header",
            "must be 'webhook-id' (or null) on a Standard Webhooks hook: only webhook-id is "
            "signed, so another header would let a captured delivery be sent again as a new one",
        ),
        (
            _variables({"name": "ref", "type": "float"}),
            "settings.variables.0.type",
            "must be one of: array, boolean, integer, number, object, string",
        ),
        (
            _variables({"name": "ref", "type": "string"}, {"name": "REF", "type": "string"}),
            "settings.variables.1.name",
            "duplicates the name of settings.variables.0 (names are case-insensitive)",
        ),
        (
            _variables({"name": "ref", "type": "string", "color": 1}),
            "settings.variables.0.color",
            "unknown field",
        ),
        (
            _variables({"name": "n", "type": "integer", "default_value": "abc"}),
            "settings.variables.0.default_value",
            "does not match type integer: expected an integer, got 'abc'",
        ),
        (
            {"trigger_when": {"conditions": [{"path": "action", "accepted_values": []}]}},
            "trigger_when.conditions.0.accepted_values",
            "must be a non-empty list",
        ),
        ({"trigger_when": {"events": []}}, "trigger_when.events", "unknown field"),
    ],
)
async def test_create_validation_rules(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    changes: dict[str, Any],
    field: str,
    message: str | None,
) -> None:
    body = {"name": "hook", "action_type": "deploy", **changes}
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming", json=body, headers=admin_headers
    )
    assert response.status == 422
    payload = await response.json()
    assert list(payload["errors"]) == [field]
    assert payload["message"] == f"The given data was invalid: {field}"
    if message is None:
        assert payload["errors"][field][0].startswith("unknown field")
    else:
        assert payload["errors"][field] == [message]


async def test_unparseable_variable_path_is_named(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    body = {"name": "h", "action_type": "deploy"} | _variables(
        {"name": "ref", "path": "$.a[", "type": "string"}
    )
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming", json=body, headers=admin_headers
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert list(errors) == ["settings.variables.0.path"]
    assert errors["settings.variables.0.path"][0]


async def test_a_regular_expression_in_a_path_is_a_422_naming_the_field(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    # '(a+)+$' on a crafted 27-byte value held the worker's event loop for seconds.
    regex = "$.items[?(@.name =~ '(a+)+$')].name"
    body = {
        "name": "h",
        "action_type": "deploy",
        "trigger_when": {"conditions": [{"path": regex, "accepted_values": ["a"]}]},
    } | _variables({"name": "ref", "path": regex, "type": "string"})
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming", json=body, headers=admin_headers
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert sorted(errors) == ["settings.variables.0.path", "trigger_when.conditions.0.path"]
    assert all("'=~' is not supported" in messages[0] for messages in errors.values())


async def test_a_hook_stored_with_a_regular_expression_before_the_rule_keeps_working(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    # The rule applies to new and updated definitions; an upgrade must not turn a working hook
    # into a 500 on every delivery.
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    condition = {
        "path": "$.pull_request.labels[?(@.name =~ '^b')].name",
        "accepted_values": ["bug"],
    }
    trigger_when = {"conditions": [condition]}
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(
            "UPDATE incoming_hooks SET trigger_when = $2::jsonb WHERE id = $1::uuid",
            hook["id"],
            orjson.dumps(trigger_when).decode(),
        )
    finally:
        await conn.close()
    client.app[appkeys.SERVICES][HOOK_CACHE].invalidate(hook["id"])
    answer = await call_hook(client, hook)  # the fixture's PR is labelled "bug": a match
    assert answer.status == 202 and (await answer.json())["run_id"] is not None
    # Changing the hook asks for the condition to be rewritten.
    response = await client.put(
        f"/hooks/incoming/{hook['id']}", json={"trigger_when": trigger_when}, headers=admin_headers
    )
    assert response.status == 422
    assert list((await response.json())["errors"]) == ["trigger_when.conditions.0.path"]


async def test_every_bad_field_is_reported_at_once(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    body = {
        "name": "n" * 61,
        "secret_algorithm": "md5",
        "extra": True,
        "settings": {
            "variables": [
                {"name": "a", "type": "float"},
                {"name": "a", "type": "string"},
                {"name": "b", "path": "$$", "type": "string"},
                {"name": "c", "type": "boolean", "default_value": "maybe"},
            ]
        },
    }
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/incoming", json=body, headers=admin_headers
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert set(errors) == {
        "extra",
        "name",
        "secret_algorithm",
        "action_type",
        "settings.variables.0.type",
        "settings.variables.1.name",
        "settings.variables.2.path",
        "settings.variables.3.default_value",
    }


async def test_create_on_unknown_pipeline_is_404(
    client: Any, admin_headers: dict[str, str]
) -> None:
    for pipeline_id in ("999", "abc"):
        response = await client.post(
            f"/pipelines/{pipeline_id}/hooks/incoming",
            data=SEED_CREATE_BODY,
            headers={**JSON_HEADERS, **admin_headers},
        )
        assert response.status == 404
        assert (await response.json())["message"] == "pipeline not found"


@pytest.mark.parametrize("hook_id", ["not-a-uuid", str(uuid.UUID(int=7))])
async def test_unknown_hook_is_404(
    client: Any, admin_headers: dict[str, str], hook_id: str
) -> None:
    response = await client.get(f"/hooks/incoming/{hook_id}", headers=admin_headers)
    assert response.status == 404
    assert (await response.json())["message"] == "hook not found"


async def test_the_secret_is_shown_exactly_once(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], capsys: Any
) -> None:
    texts: list[str] = []

    async def call(method: str, path: str, **kw: Any) -> Any:
        response = await client.request(method, path, headers=admin_headers, **kw)
        assert response.status < 300, await response.text()
        texts.append(await response.text())
        return await response.json()

    created = await call(
        "POST",
        f"/pipelines/{pipeline['id']}/hooks/incoming",
        data=SEED_CREATE_BODY,
    )
    secret = created["secret"]
    hook_path = f"/hooks/incoming/{created['id']}"
    await call("GET", f"/pipelines/{pipeline['id']}/hooks")
    await call("GET", hook_path)
    updated = await call("PUT", hook_path, json={"name": "renamed", "active": False})
    assert updated["secret"] == "********"
    rotated = await call("POST", f"{hook_path}/secret/rotate")
    new_secret = rotated["secret"]
    assert new_secret not in (secret, "********")
    await call("GET", hook_path)
    await call("GET", f"/pipelines/{pipeline['id']}/hooks")

    everything = "\n".join(texts)
    assert everything.count(secret) == 1 and secret in texts[0]
    assert everything.count(new_secret) == 1 and new_secret in texts[4]
    logs = capsys.readouterr()
    assert secret not in logs.out + logs.err
    assert new_secret not in logs.out + logs.err


async def _stored_secrets(database_dsn: str, hook_id: str) -> dict[str, Any]:
    """The hook's secret columns, opened with the tests' key (they are stored encrypted)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT secret, previous_secret, previous_secret_expires_at FROM incoming_hooks "
            "WHERE id = $1",
            uuid.UUID(hook_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return SecretBox.from_key_set(load_keys([TEST_SECRET_KEY], "")).open_row(row)


async def test_rotation_keeps_the_old_secret_for_the_grace_period(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    created = await make_seed_hook(client, admin_headers, pipeline["id"])
    before = datetime.now(UTC)
    response = await client.post(
        f"/hooks/incoming/{created['id']}/secret/rotate", headers=admin_headers
    )
    assert response.status == 200
    rotated = await response.json()
    stored = await _stored_secrets(database_dsn, created["id"])
    assert stored["secret"] == rotated["secret"]
    assert stored["previous_secret"] == created["secret"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert expires == stored["previous_secret_expires_at"]
    # Default grace: hooks.secret_grace_period (one day), counted from the rotation.
    assert before + timedelta(seconds=86_400) <= expires
    assert expires <= datetime.now(UTC) + timedelta(seconds=86_400)


async def test_rotation_with_explicit_grace_period(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], database_dsn: str
) -> None:
    created = await make_seed_hook(client, admin_headers, pipeline["id"])
    path = f"/hooks/incoming/{created['id']}/secret/rotate"
    response = await client.post(path, json={"grace_period_seconds": 60}, headers=admin_headers)
    assert response.status == 200
    expires = datetime.fromisoformat((await response.json())["previous_secret_expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(seconds=60)

    response = await client.post(path, json={"grace_period_seconds": 0}, headers=admin_headers)
    assert response.status == 200
    rotated = await response.json()
    assert rotated["previous_secret_expires_at"] is None
    stored = await _stored_secrets(database_dsn, created["id"])
    assert stored["previous_secret"] is None and stored["secret"] == rotated["secret"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"grace_period_seconds": -1}, {"grace_period_seconds": ["must be >= 0"]}),
        (
            {"grace_period_seconds": "60"},
            {"grace_period_seconds": ["must be an integer, got a string"]},
        ),
        (
            {"grace_period_seconds": 365 * 86_400 + 1},
            {"grace_period_seconds": ["must be <= 31536000"]},
        ),
        (  # read as a float by the JSON parser: still named an integer, with its bounds
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
    body: dict[str, Any],
    errors: Any,
) -> None:
    created = await make_seed_hook(client, admin_headers, pipeline["id"])
    response = await client.post(
        f"/hooks/incoming/{created['id']}/secret/rotate", json=body, headers=admin_headers
    )
    assert response.status == 422
    payload = await response.json()
    if errors is None:
        assert list(payload["errors"]) == ["secret"]
    else:
        assert payload["errors"] == errors


async def test_partial_update_keeps_other_fields(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    created = await make_seed_hook(client, admin_headers, pipeline["id"])
    path = f"/hooks/incoming/{created['id']}"

    response = await client.put(
        path, json={"name": "Deploy main", "active": False}, headers=admin_headers
    )
    assert response.status == 200
    updated = await response.json()
    assert updated["name"] == "Deploy main" and updated["active"] is False
    unchanged = ("settings", "trigger_when", "secret_algorithm", "secret_header_name", "url")
    assert {k: updated[k] for k in unchanged} == {k: created[k] for k in unchanged}
    assert updated["updated_at"] > created["updated_at"]

    # Settings keys given replace the stored ones; the others stay.
    response = await client.put(
        path, json={"settings": {"delivery_id_header": "X-Request-Id"}}, headers=admin_headers
    )
    settings = (await response.json())["settings"]
    assert settings == {"variables": SEED_VARIABLES, "delivery_id_header": "x-request-id"}
    response = await client.put(
        path,
        json={"settings": {"variables": [{"name": "ref", "path": "$.ref", "type": "string"}]}},
        headers=admin_headers,
    )
    settings = (await response.json())["settings"]
    assert settings["delivery_id_header"] == "x-request-id"
    assert settings["variables"] == [
        {"name": "ref", "path": "$.ref", "type": "string", "required": False, "default_value": None}
    ]

    conditions = {"conditions": [{"path": "action", "accepted_values": ["opened", "synchronize"]}]}
    response = await client.put(path, json={"trigger_when": conditions}, headers=admin_headers)
    assert (await response.json())["trigger_when"] == conditions
    response = await client.put(path, json={"trigger_when": None}, headers=admin_headers)
    assert (await response.json())["trigger_when"] == {"conditions": []}

    # A full body (the seed's) restores everything but the secret.
    response = await client.put(
        path, data=SEED_CREATE_BODY, headers={**JSON_HEADERS, **admin_headers}
    )
    assert response.status == 200
    restored = await response.json()
    assert {k: restored[k] for k in ("name", "settings", "active")} == {
        "name": "Deploy `main` branch",
        "settings": {"variables": SEED_VARIABLES, "delivery_id_header": "x-request-id"},
        "active": False,
    }
    response = await client.get(path, headers=admin_headers)
    assert await response.json() == restored


async def test_update_validation(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    created = await make_seed_hook(client, admin_headers, pipeline["id"])
    response = await client.put(
        f"/hooks/incoming/{created['id']}",
        json={
            "name": None,
            "secret": "chosen",
            "secret_algorithm": "crc32",
            "settings": {"variables": [{"name": "x", "type": "str"}]},
        },
        headers=admin_headers,
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert errors["name"] == ["must not be null"]
    assert errors["secret"][0].startswith("unknown field")
    assert errors["secret_algorithm"] == ["must be one of: sha1, sha256, sha384, sha512"]
    assert errors["settings.variables.0.type"] == [
        "must be one of: array, boolean, integer, number, object, string"
    ]
    response = await client.get(f"/hooks/incoming/{created['id']}", headers=admin_headers)
    assert (await response.json())["name"] == "Deploy `main` branch"


async def test_an_update_may_not_make_the_delivery_id_a_secret_or_an_unsigned_header(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    """Checked against the hook as the update would leave it: the header in the body with the
    stored scheme, and a scheme change with the stored header."""
    created = await make_seed_hook(client, admin_headers, pipeline["id"])  # x-hub-signature-256
    path = f"/hooks/incoming/{created['id']}"

    async def refused(body: dict[str, Any]) -> list[str]:
        response = await client.put(path, json=body, headers=admin_headers)
        assert response.status == 422, await response.text()
        errors: dict[str, list[str]] = (await response.json())["errors"]
        assert list(errors) == ["settings.delivery_id_header"]
        return errors["settings.delivery_id_header"]

    [message] = await refused({"settings": {"delivery_id_header": "X-Hub-Signature-256"}})
    assert message.startswith("must not be a header that carries the secret or a signature")
    ok = await client.put(
        path, json={"settings": {"delivery_id_header": "x-github-delivery"}}, headers=admin_headers
    )
    assert ok.status == 200
    # Switching this hook to Standard Webhooks would leave the delivery id unsigned.
    [message] = await refused({"secret_header_name": "webhook-signature"})
    assert message.startswith("must be 'webhook-id' (or null) on a Standard Webhooks hook")
    # The same, sending another setting: the stored delivery_id_header stays in the merge.
    [message] = await refused(
        {"secret_header_name": "webhook-signature", "settings": {"variables": []}}
    )
    assert message.startswith("must be 'webhook-id' (or null) on a Standard Webhooks hook")
    [message] = await refused({"secret_header_name": "x-github-delivery"})
    assert message.startswith("must not be a header that carries the secret")
    response = await client.get(path, headers=admin_headers)
    stored = await response.json()
    assert stored["secret_header_name"] == "x-hub-signature-256"
    assert stored["settings"]["delivery_id_header"] == "x-github-delivery"


async def test_delete(client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]) -> None:
    first = await make_seed_hook(client, admin_headers, pipeline["id"])
    second = await make_seed_hook(client, admin_headers, pipeline["id"])
    response = await client.delete(f"/hooks/incoming/{first['id']}", headers=admin_headers)
    assert response.status == 204
    assert await response.read() == b""
    response = await client.get(f"/hooks/incoming/{first['id']}", headers=admin_headers)
    assert response.status == 404
    response = await client.get(f"/pipelines/{pipeline['id']}/hooks", headers=admin_headers)
    assert [h["id"] for h in await response.json()] == [second["id"]]
    response = await client.delete(f"/hooks/incoming/{first['id']}", headers=admin_headers)
    assert response.status == 404


async def test_pipeline_hook_list_is_paginated(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    ids = [(await make_seed_hook(client, admin_headers, pipeline["id"]))["id"] for _ in range(3)]
    response = await client.get(
        f"/pipelines/{pipeline['id']}/hooks?page=2&per_page=2", headers=admin_headers
    )
    assert [h["id"] for h in await response.json()] == ids[2:]
    assert response.headers["X-Total-Count"] == "3"
