"""Outgoing hooks management API: create/list/get/update/delete, validation, secrets, access."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Config
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_member, make_pipeline
from tests.integration.outgoing_helpers import hook_body

MASK = "********"


@pytest.fixture
async def pipeline(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    env = await make_environment(client, admin_headers)
    return await make_pipeline(client, admin_headers, env["id"])


async def create(client: Any, headers: dict[str, str], pipeline_id: int, body: Any) -> Any:
    return await client.post(f"/pipelines/{pipeline_id}/hooks/outgoing", json=body, headers=headers)


FULL_BODY = {
    "name": "Comment deploy status on the PR",
    "target_url": "https://api.github.example/repos/o/r/issues/{{ run.variables.pull_request_id }}"
    "/comments",
    "active": True,
    "requires_secret": True,
    "trigger_when": {
        "events": ["run.completed", "run.failed", "run.completed"],
        "conditions": [{"path": "run.variables.source_type", "accepted_values": ["branch"]}],
    },
    "settings": {
        "request_headers": [
            {"name": "Authorization", "value": "Bearer ghp_secret"},
            {"name": "X-Run", "value": "{{ run.id }}"},
        ],
        "request_body": {
            "body": "Deploy {{ run.status }}",
            "pr": "{{ run.variables.pull_request_id }}",
        },
        "signature_header": "X-Hub-Signature-256",
    },
}


async def test_create_returns_the_secret_once_then_masks_it(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    response = await create(client, admin_headers, pipeline["id"], FULL_BODY)
    assert response.status == 201, await response.text()
    created = await response.json()
    # Where the new hook is, as for environments, pipelines and incoming hooks.
    assert response.headers["Location"] == f"/hooks/outgoing/{created['id']}"
    assert created["type"] == "outgoing"
    assert created["secret"].startswith("whsec_")
    assert created["trigger_when"] == {
        "events": ["run.completed", "run.failed"],
        "conditions": [{"path": "run.variables.source_type", "accepted_values": ["branch"]}],
    }
    assert created["settings"]["method"] == "POST"
    assert created["settings"]["request_headers"][0] == {"name": "Authorization", "value": MASK}
    assert created["settings"]["request_headers"][1]["value"] == "{{ run.id }}"
    assert created["environment_id"] == pipeline["environment_id"]

    texts = []
    for url in (
        f"/hooks/outgoing/{created['id']}",
        f"/pipelines/{pipeline['id']}/hooks/outgoing",
        f"/pipelines/{pipeline['id']}/hooks",
    ):
        got = await client.get(url, headers=admin_headers)
        assert got.status == 200, await got.text()
        texts.append(await got.text())
    assert all(created["secret"] not in text and "ghp_secret" not in text for text in texts)
    listed = await (
        await client.get(f"/pipelines/{pipeline['id']}/hooks", headers=admin_headers)
    ).json()
    assert [(h["id"], h["type"], h["secret"]) for h in listed] == [
        (created["id"], "outgoing", MASK)
    ]


async def test_without_secret_there_is_none(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    response = await create(
        client,
        admin_headers,
        pipeline["id"],
        hook_body("https://x.example/", requires_secret=False),
    )
    assert response.status == 201
    assert (await response.json())["secret"] is None


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (hook_body("https://x.example/{{ run.nope }}"), "target_url", "'{{ run.nope }}'"),
        (hook_body("https://x.example/{{ foo }}"), "target_url", "the context has no 'foo'"),
        (hook_body("https://{{ run.id }}/"), "target_url", "only appear after"),
        (hook_body("ftp://x.example/"), "target_url", "http:// or https://"),
        (
            hook_body("https://x.example/", settings={"request_body": {"a": "{{ run.nope }}"}}),
            "settings.request_body",
            "'{{ run.nope }}'",
        ),
        (
            hook_body("https://x.example/", settings={"request_body": "x {{ run.status"}),
            "settings.request_body",
            "unclosed '{{'",
        ),
        (
            hook_body("https://x.example/", settings={"request_body": '{"n": {{ run.attempt }}}'}),
            "settings.request_body",
            "unquoted placeholders",
        ),
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-A", "value": "{{ hook.secret }}"}]},
            ),
            "settings.request_headers.0.value",
            "hook has no 'secret'",
        ),
        (
            # Stored as given and sent with spaces for the line breaks: not what was shown.
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-A", "value": "a\r\nInjected: 1"}]},
            ),
            "settings.request_headers.0.value",
            "must not contain control characters",
        ),
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-A", "value": "a\nb"}]},
            ),
            "settings.request_headers.0.value",
            "must not contain control characters",
        ),
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-A", "value": "a\x7fb"}]},
            ),
            "settings.request_headers.0.value",
            "must not contain control characters",
        ),
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "webhook-signature", "value": "x"}]},
            ),
            "settings.request_headers.0.name",
            "set by the gateway",
        ),
        # A credential is always sent as plaintext: one in the stored form would be decrypted
        # by the dispatcher (the form of any sealed secret from a database dump).
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-Deploy-Token", "value": "enc:abc"}]},
            ),
            "settings.request_headers.0.value",
            "must be the plaintext secret, not a stored (encrypted) value: 'X-Deploy-Token' is "
            "a credential header, and its value cannot start with 'enc:'",
        ),
        (
            hook_body(
                "https://x.example/",
                settings={"request_headers": [{"name": "X-Mode", "value": "enc:v1:k:AAAA"}]},
            ),
            "settings.request_headers.0.value",
            "must be plaintext, not a stored (encrypted) value: a header value cannot start "
            "with 'enc:v1:'",
        ),
        (
            {"name": "n", "target_url": "https://x.example/", "trigger_when": {"events": []}},
            "trigger_when.events",
            "non-empty list",
        ),
        (hook_body("https://x.example/", "run.deleted"), "trigger_when.events.0", "must be one of"),
        (
            {"name": "n", "target_url": "https://x.example/"},
            "trigger_when",
            "at least one event",
        ),
        (
            hook_body(
                "https://x.example/",
                trigger_when={
                    "events": ["run.failed"],
                    "conditions": [{"path": "run.nope", "accepted_values": [1]}],
                },
            ),
            "trigger_when.conditions.0.path",
            "run has no 'nope'",
        ),
        (
            hook_body(
                "https://x.example/",
                trigger_when={
                    "events": ["run.failed"],
                    "conditions": [
                        {"path": "$.run[?(@.message =~ '(a+)+$')].id", "accepted_values": [1]}
                    ],
                },
            ),
            "trigger_when.conditions.0.path",
            "the regular-expression filter '=~' is not supported",
        ),
        (
            hook_body("https://x.example/", settings={"timeout": 600}),
            "settings.timeout",
            "at most 60",
        ),
        (
            hook_body("https://x.example/", settings={"method": "GET"}),
            "settings.method",
            "must be one of",
        ),
        (
            hook_body(
                "https://x.example/", requires_secret=False, settings={"signature_header": "X-Sig"}
            ),
            "settings.signature_header",
            "requires_secret",
        ),
        (hook_body("https://x.example/", extra=1), "extra", "unknown field"),
        (hook_body("https://x.example/", settings={"nope": 1}), "settings.nope", "unknown field"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    body: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    response = await create(client, admin_headers, pipeline["id"], body)
    assert response.status == 422, await response.text()
    payload = await response.json()
    assert field in payload["errors"], payload
    assert any(fragment in message for message in payload["errors"][field]), payload
    assert field in payload["message"]


async def test_update_replaces_fields_and_keeps_masked_header_values(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    url = f"/hooks/outgoing/{created['id']}"
    settings = {**created["settings"], "request_body": "text {{ run.status }}"}
    response = await client.put(
        url, json={"name": "renamed", "settings": settings}, headers=admin_headers
    )
    assert response.status == 200, await response.text()
    updated = await response.json()
    assert updated["name"] == "renamed"
    assert updated["secret"] == MASK  # unchanged secret, not shown again
    assert updated["trigger_when"] == created["trigger_when"]
    stored = await db.pool.fetchval(
        "SELECT settings FROM outgoing_hooks WHERE id = $1::uuid", created["id"]
    )
    # Kept as stored: sealed (secrets at rest), opening to the value given at create.
    kept = stored["request_headers"][0]
    assert kept["name"] == "Authorization" and kept["value"].startswith("enc:v1:")
    assert db.secret_box.decrypt(kept["value"]) == "Bearer ghp_secret"
    assert stored["request_body"] == "text {{ run.status }}"


async def test_a_hook_read_and_written_back_unchanged_is_accepted(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    # A 3,500-character token is within the limit; sealed at rest it is longer, and the mask
    # sent back must keep it as stored rather than check the sealed text against the limit.
    token = "t" * 3500
    body = {
        **FULL_BODY,
        "settings": {"request_headers": [{"name": "Authorization", "value": token}]},
    }
    created = await (await create(client, admin_headers, pipeline["id"], body)).json()
    url = f"/hooks/outgoing/{created['id']}"
    query = "SELECT settings FROM outgoing_hooks WHERE id = $1::uuid"
    stored = await db.pool.fetchval(query, created["id"])
    read = await (await client.get(url, headers=admin_headers)).json()
    echo = {k: read[k] for k in ("name", "target_url", "trigger_when", "settings")}
    response = await client.put(url, json={**echo, "name": "renamed"}, headers=admin_headers)
    assert response.status == 200, await response.text()
    # Without settings too, also when switching the secret checks the stored settings again:
    # their credentials are kept as stored, not checked (or encrypted) as if sent.
    for change in ({"requires_secret": False}, {"requires_secret": True}, {"name": "again"}):
        response = await client.put(url, json=change, headers=admin_headers)
        assert response.status == 200, await response.text()
    assert await db.pool.fetchval(query, created["id"]) == stored
    assert db.secret_box.decrypt(stored["request_headers"][0]["value"]) == token


async def test_the_mask_for_a_header_with_no_stored_value_is_a_422(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    # Renaming Authorization to X-Api-Key while sending the mask back: there is nothing to keep,
    # and storing the mask literally would send '********' with every delivery.
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    url = f"/hooks/outgoing/{created['id']}"
    renamed = {**created["settings"], "request_headers": [{"name": "X-Api-Key", "value": MASK}]}
    response = await client.put(url, json={"settings": renamed}, headers=admin_headers)
    assert response.status == 422
    assert (await response.json())["errors"] == {
        "settings.request_headers.0.value": [
            "'********' keeps the stored value of the same header, and 'X-Api-Key' has none: "
            "send the real value"
        ]
    }
    stored = await db.pool.fetchval(
        "SELECT settings FROM outgoing_hooks WHERE id = $1::uuid", created["id"]
    )
    assert db.secret_box.decrypt(stored["request_headers"][0]["value"]) == "Bearer ghp_secret"


async def test_a_stored_credential_does_not_follow_the_hook_to_another_origin(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], db: Database
) -> None:
    """Moved to a target that echoes headers, a kept Authorization value would come back in
    the request history (response_excerpt) to everyone with hook:read."""
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    url = f"/hooks/outgoing/{created['id']}"
    refusal = {
        "settings.request_headers.0.value": [
            "target_url moves to another origin: send the value of 'Authorization' again (or "
            "drop the header); a stored credential is not sent to a new target"
        ]
    }
    for body in (
        {"target_url": "https://echo.example/anything"},  # settings not sent: all kept
        {"target_url": "https://echo.example/anything", "settings": created["settings"]},
        {"target_url": "http://api.github.example/repos/o/r"},  # another scheme
        {"target_url": "http://api.github.example:443/repos/o/r"},  # the scheme alone
        {"target_url": "https://api.github.example:8443/repos/o/r"},  # another port
    ):
        response = await client.put(url, json=body, headers=admin_headers)
        assert response.status == 422, body
        assert (await response.json())["errors"] == refusal
    stored = await db.pool.fetchrow(
        "SELECT target_url, settings FROM outgoing_hooks WHERE id = $1::uuid", created["id"]
    )
    assert stored["target_url"] == FULL_BODY["target_url"]

    # The same origin (another path, the default port spelled out) keeps it.
    same = {"target_url": "https://API.github.example:443/repos/o/r/statuses"}
    assert (await client.put(url, json=same, headers=admin_headers)).status == 200
    # Sent again, or dropped, it may move.
    moved = {
        **created["settings"],
        "request_headers": [{"name": "Authorization", "value": "Bearer for-the-new-one"}],
    }
    response = await client.put(
        url,
        json={"target_url": "https://hooks.other.example/in", "settings": moved},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    stored = await db.pool.fetchval(
        "SELECT settings FROM outgoing_hooks WHERE id = $1::uuid", created["id"]
    )
    value = stored["request_headers"][0]["value"]
    assert db.secret_box.decrypt(value) == "Bearer for-the-new-one"
    dropped = {**created["settings"], "request_headers": []}
    response = await client.put(
        url,
        json={"target_url": "https://third.example/in", "settings": dropped},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()


async def test_turning_the_secret_off_and_on_shows_a_new_one_once(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    url = f"/hooks/outgoing/{created['id']}"
    # The custom signature header needs the secret: switching the secret off alone is refused.
    refused = await client.put(url, json={"requires_secret": False}, headers=admin_headers)
    assert refused.status == 422
    assert "settings.signature_header" in (await refused.json())["errors"]
    off = await client.put(
        url,
        json={"requires_secret": False, "settings": {"request_body": None}},
        headers=admin_headers,
    )
    assert off.status == 200, await off.text()
    assert (await off.json())["secret"] is None
    on = await (await client.put(url, json={"requires_secret": True}, headers=admin_headers)).json()
    assert on["secret"].startswith("whsec_") and on["secret"] != created["secret"]
    again = await (await client.get(url, headers=admin_headers)).json()
    assert again["secret"] == MASK


async def test_delete_then_404(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    url = f"/hooks/outgoing/{created['id']}"
    assert (await client.delete(url, headers=admin_headers)).status == 204
    for method in ("get", "put", "delete"):
        response = await getattr(client, method)(url, json={}, headers=admin_headers)
        assert response.status == 404
        assert (await response.json())["message"] == "hook not found"
    assert (await client.get("/hooks/outgoing/not-a-uuid", headers=admin_headers)).status == 404


async def test_requests_list_is_paginated(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    response = await client.get(
        f"/hooks/outgoing/{created['id']}/requests?per_page=5", headers=admin_headers
    )
    assert response.status == 200
    assert await response.json() == []
    assert response.headers["X-Total-Count"] == "0"
    assert 'rel="last"' in response.headers["Link"]


async def test_permissions_are_enforced(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    config: Config,
    database_dsn: str,
) -> None:
    env_id = pipeline["environment_id"]
    created = await (await create(client, admin_headers, pipeline["id"], FULL_BODY)).json()
    hook_url = f"/hooks/outgoing/{created['id']}"
    reader = await make_member(client, db, config, database_dsn, env_id, ["hook:read"])
    outsider = await make_member(client, db, config, database_dsn, None, ["hook:read"])

    denied = await create(client, reader, pipeline["id"], FULL_BODY)
    assert denied.status == 403
    assert "hook:create" in (await denied.json())["message"]
    assert (await client.get(hook_url, headers=reader)).status == 200
    for method, required in (("put", "hook:update"), ("delete", "hook:delete")):
        response = await getattr(client, method)(hook_url, json={"name": "x"}, headers=reader)
        assert response.status == 403
        assert required in (await response.json())["message"]
    for url in (hook_url, f"{hook_url}/requests", f"/pipelines/{pipeline['id']}/hooks/outgoing"):
        assert (await client.get(url, headers=outsider)).status == 404

    writer = await make_member(client, db, config, database_dsn, env_id, ["hook:create"])
    assert (await create(client, writer, pipeline["id"], FULL_BODY)).status == 201


async def test_a_tab_in_a_header_value_is_allowed(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any]
) -> None:
    body = hook_body(
        "https://x.example/", settings={"request_headers": [{"name": "X-A", "value": "a\tb"}]}
    )
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/outgoing", json=body, headers=admin_headers
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["settings"]["request_headers"] == [
        {"name": "X-A", "value": "a\tb"}
    ]
