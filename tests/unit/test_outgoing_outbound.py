"""Building the outgoing request from a hook definition and an event snapshot (pure)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from gateway.dispatcher.outbound import CompiledHook, build_request, event_context
from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret

SECRET = generate_secret(STANDARD_WEBHOOKS)
PAYLOAD: dict[str, Any] = {
    "event": "run.failed",
    "timestamp": "2026-05-01T12:00:00+00:00",
    "sequence": 42,
    "run": {"id": "r1", "status": "failed", "variables": {"pr": 9, "ref": "main"}},
    "pipeline": {"id": 3, "name": "Deploy"},
    "hook": {"id": "h1", "name": "notify"},
}


def row(**settings: Any) -> dict[str, Any]:
    return {
        "target_url": "https://ci.example/pr/{{ run.variables.pr }}",
        "trigger_when": {"events": ["run.failed"], "conditions": []},
        "settings": settings,
        "requires_secret": True,
        "secret": SECRET,
    }


def test_default_body_is_an_envelope_and_is_signed() -> None:
    hook = CompiledHook.from_row(row())
    request = build_request(hook, event_context(PAYLOAD, "d1", 1), "d1")
    assert request.method == "POST"
    assert request.url == "https://ci.example/pr/9"
    assert request.origin == "https://ci.example:443"
    assert request.headers["Content-Type"] == "application/json"
    body = Webhook(SECRET).verify(request.body, request.headers)
    assert body == {
        "type": "run.failed",
        "timestamp": "2026-05-01T12:00:00+00:00",
        "sequence": 42,
        "data": {k: PAYLOAD[k] for k in ("run", "pipeline", "hook")},
    }


def test_reprs_show_no_secret_material() -> None:
    # Nothing logs these today; a traceback or a debug line showing one must not leak it.
    hook = CompiledHook.from_row(
        row(
            request_headers=[{"name": "Authorization", "value": "Bearer REPR_token_zz"}],
            signature_header="X-Hub-Signature-256",
        )
    )
    request = build_request(hook, event_context(PAYLOAD, "d1", 1), "d1")
    sent = [SECRET, "REPR_token_zz", request.headers["webhook-signature"].removeprefix("v1,")]
    sent.append(request.headers["X-Hub-Signature-256"].removeprefix("sha256="))
    assert "https://ci.example/pr/" in repr(hook) and "https://ci.example/pr/9" in repr(request)
    for text in (repr(hook), repr(request)):
        assert not [s for s in sent if s in text], text


def test_hook_headers_override_defaults_case_insensitively() -> None:
    hook = CompiledHook.from_row(
        row(
            method="PUT",
            request_body="{{ pipeline.name }} {{ run.status }} (attempt {{ delivery.attempt }})",
            request_headers=[
                {"name": "content-type", "value": "text/markdown"},
                {"name": "X-Ref", "value": "{{ run.variables.ref }}"},
            ],
        )
    )
    request = build_request(hook, event_context(PAYLOAD, "d1", 2), "d1")
    assert request.method == "PUT"
    assert request.body == b"Deploy failed (attempt 2)"
    assert request.headers["content-type"] == "text/markdown"
    assert "Content-Type" not in request.headers
    assert request.headers["X-Ref"] == "main"


def test_without_secret_only_id_and_timestamp() -> None:
    hook = CompiledHook.from_row({**row(), "requires_secret": False})
    now = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    request = build_request(hook, event_context(PAYLOAD, "d9", 1), "d9", now=now)
    assert request.headers["webhook-id"] == "d9"
    assert request.headers["webhook-timestamp"] == str(int(now))
    assert "webhook-signature" not in request.headers
    assert orjson.loads(request.body)["type"] == "run.failed"


def test_conditions_are_compiled_without_the_events() -> None:
    definition = row()
    definition["trigger_when"]["conditions"] = [
        {"path": "run.variables.ref", "accepted_values": ["main"]}
    ]
    hook = CompiledHook.from_row(definition)
    assert hook.conditions.evaluate(event_context(PAYLOAD, "d", 1)) is None
    other = {**PAYLOAD, "run": {**PAYLOAD["run"], "variables": {"ref": "dev"}}}
    assert hook.conditions.evaluate(event_context(other, "d", 1)) is not None


def rotated_row(previous: str, seconds_left: float, expires_at: datetime) -> dict[str, Any]:
    """A claimed row of a hook rotated with a grace: ``seconds_left`` by the database's clock
    at the claim, and the end it set (``expires_at``), which says nothing of this host's."""
    return {
        **row(signature_header="X-Hub-Signature-256"),
        "previous_secret": previous,
        "previous_secret_expires_at": expires_at,
        "previous_secret_seconds_left": seconds_left,
    }


def test_during_a_rotations_grace_both_secrets_sign_and_after_it_only_the_new_one() -> None:
    old, left = generate_secret(STANDARD_WEBHOOKS), 3600.0
    before = time.time()
    hook = CompiledHook.from_row(rotated_row(old, left, datetime(2026, 5, 1, 12, tzinfo=UTC)))
    after = time.time()
    assert old not in repr(hook)
    until = hook.previous_secret_until
    assert until is not None and before + left <= until <= after + left
    context = event_context(PAYLOAD, "d1", 1)
    # The compiled hook is kept while the hook is unchanged: the end of the grace is checked
    # each time a request is signed.
    for now, secrets in ((until - 1, [SECRET, old]), (until, [SECRET])):
        request = build_request(hook, context, "d1", now=now)
        headers, body = request.headers, request.body.decode()
        expected = [
            Webhook(s).sign("d1", datetime.fromtimestamp(int(now), UTC), body) for s in secrets
        ]
        assert headers["webhook-signature"] == " ".join(expected)
        # The custom header holds one signature: the new secret's.
        assert (
            headers["X-Hub-Signature-256"]
            == build_request(
                CompiledHook.from_row(row(signature_header="X-Hub-Signature-256")),
                context,
                "d1",
                now=now,
            ).headers["X-Hub-Signature-256"]
        )


@pytest.mark.parametrize(
    ("seconds_left", "expires_at", "signatures"),
    [
        # The database's clock is behind this host's: its end of the grace is in this host's
        # past, yet the grace has 60 s to go.
        (60.0, datetime(2000, 1, 1, tzinfo=UTC), 2),
        # Ahead: the end is in this host's future, yet the grace is over.
        (-1.0, datetime(2999, 1, 1, tzinfo=UTC), 1),
    ],
)
def test_the_grace_is_what_the_database_says_is_left_whatever_this_hosts_clock_says(
    seconds_left: float, expires_at: datetime, signatures: int
) -> None:
    hook = CompiledHook.from_row(
        rotated_row(generate_secret(STANDARD_WEBHOOKS), seconds_left, expires_at)
    )
    request = build_request(hook, event_context(PAYLOAD, "d1", 1), "d1")
    assert len(request.headers["webhook-signature"].split()) == signatures


def test_a_previous_secret_is_not_used_without_a_secret() -> None:
    hook = CompiledHook.from_row(
        {
            **row(),
            "requires_secret": False,
            "previous_secret": generate_secret(STANDARD_WEBHOOKS),
            "previous_secret_expires_at": datetime(2999, 1, 1, tzinfo=UTC),
            "previous_secret_seconds_left": 3600.0,
        }
    )
    assert (
        "webhook-signature"
        not in build_request(hook, event_context(PAYLOAD, "d1", 1), "d1").headers
    )


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://ci.example/pr/1", "https://ci.example:443"),
        ("https://CI.Example./pr/1", "https://ci.example:443"),  # case and a final dot
        ("https://ci.example:443/pr/1", "https://ci.example:443"),
        ("http://ci.example/", "http://ci.example:80"),
        ("https://xn--bcher-kva.de./x", "https://xn--bcher-kva.de:443"),
        ("http://[::1]:8080/x", "http://[::1]:8080"),
    ],
)
def test_one_target_has_one_origin_however_its_host_is_spelled(url: str, origin: str) -> None:
    # The per-target concurrency limit counts by origin: two spellings must not double it.
    hook = CompiledHook.from_row({**row(), "target_url": url})
    assert build_request(hook, event_context(PAYLOAD, "d1", 1), "d1").origin == origin
