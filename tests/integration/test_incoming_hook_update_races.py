"""An incoming hook's update and rotation against a change that commits while they run.

Each one reads the hook, decides from it (the delivery id header's rules, whether the scheme
switches to Standard Webhooks, which kind of secret to issue) and writes. The decision must be
made on the hook as it is when the write happens: another connection holds the hook's row
(as a concurrent update does) while the request starts, and commits its change once the
request waits for it.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.security.secret_box import SecretBox
from gateway.security.secret_keys import load_keys
from tests.conftest import TEST_SECRET_KEY
from tests.integration.management_helpers import make_environment, make_pipeline, make_seed_hook
from tests.integration.race_helpers import behind_a_concurrent_change


@pytest.fixture
async def hook(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    """The seed's hook: x-hub-signature-256, no delivery id header."""
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    return await make_seed_hook(client, admin_headers, pipeline["id"])


async def test_the_delivery_id_header_is_checked_against_the_committed_secret_header(
    client: Any, admin_headers: dict[str, str], database_dsn: str, hook: dict[str, Any]
) -> None:
    """Two updates, each valid against the stored hook, that together would make the signature
    header the delivery id header: the one that comes second must be refused."""
    path = f"/hooks/incoming/{hook['id']}"
    change = "UPDATE incoming_hooks SET secret_header_name = 'x-custom-sig' WHERE id = $1"
    body = {"settings": {"delivery_id_header": "x-custom-sig"}}
    response = await behind_a_concurrent_change(
        database_dsn,
        change,
        (hook["id"],),
        client.put(path, json=body, headers=admin_headers),
    )
    answer = await response.json()
    assert response.status == 422, answer
    [message] = answer["errors"]["settings.delivery_id_header"]
    assert message.startswith("must not be a header that carries the secret or a signature")
    stored = await (await client.get(path, headers=admin_headers)).json()
    assert stored["secret_header_name"] == "x-custom-sig"
    assert stored["settings"]["delivery_id_header"] is None


async def test_a_switch_to_standard_webhooks_after_another_one_issues_no_second_secret(
    client: Any, admin_headers: dict[str, str], database_dsn: str, hook: dict[str, Any]
) -> None:
    """The first switch issued a whsec_ secret (shown once, to its caller); a second identical
    update that waited for it finds the hook already on Standard Webhooks: it must not replace
    that secret with one of its own, which would leave the first caller's secret dead."""
    first = "whsec_" + "A" * 43 + "="
    sealed = SecretBox.from_key_set(load_keys([TEST_SECRET_KEY], "")).encrypt(first)
    change = (
        "UPDATE incoming_hooks SET secret_header_name = 'webhook-signature', secret = $2 "
        "WHERE id = $1"
    )
    response = await behind_a_concurrent_change(
        database_dsn,
        change,
        (hook["id"], sealed),
        client.put(
            f"/hooks/incoming/{hook['id']}",
            json={"secret_header_name": "webhook-signature"},
            headers=admin_headers,
        ),
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["secret"] == "********"
    other = await asyncpg.connect(database_dsn)
    try:
        stored = await other.fetchval("SELECT secret FROM incoming_hooks WHERE id = $1", hook["id"])
    finally:
        await other.close()
    assert stored == sealed


async def test_a_rotation_issues_the_kind_of_secret_of_the_committed_scheme(
    client: Any, admin_headers: dict[str, str], database_dsn: str, hook: dict[str, Any]
) -> None:
    """A rotation that waited for a switch to Standard Webhooks issues a whsec_ secret, the
    only kind such senders can use; not the plain one of the scheme it read before waiting."""
    change = "UPDATE incoming_hooks SET secret_header_name = 'webhook-signature' WHERE id = $1"
    response = await behind_a_concurrent_change(
        database_dsn,
        change,
        (hook["id"],),
        client.post(
            f"/hooks/incoming/{hook['id']}/secret/rotate",
            json={"grace_period_seconds": 0},
            headers=admin_headers,
        ),
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["secret_header_name"] == "webhook-signature"
    assert answer["secret"].startswith("whsec_"), answer["secret"][:6]
