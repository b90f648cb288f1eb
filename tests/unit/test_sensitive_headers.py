"""The one rule for which headers carry a credential or a signature (both ways, by name)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.security import sensitive_headers
from gateway.security.sensitive_headers import (
    CACHE_SIZE,
    REDACTED,
    is_sensitive_header,
    recorded_name,
    redact_headers,
)

SENSITIVE = [
    # Names the incoming history and the outgoing hooks redacted before the rule.
    "authorization",
    "Proxy-Authorization",
    "cookie",
    "set-cookie",
    "x-hub-signature",
    "X-Hub-Signature-256",
    "x-gitlab-token",
    "webhook-signature",
    "x-api-key",
    # The same HMAC as X-Hub-Signature-256 (Gitea sends all four), other senders' signatures.
    "X-Gitea-Signature",
    "X-Gogs-Signature",
    "svix-signature",
    "Stripe-Signature",
    "X-Slack-Signature",
    "X-Shopify-Hmac-Sha256",
    "X-Twilio-Signature",
    # Credentials the sender (or an outgoing hook) authenticates with.
    "X-Auth-Token",
    "X-Functions-Key",
    "Ocp-Apim-Subscription-Key",
    "key",
    "X-Key",
    "api_key",
    "apikey",
    "X-ApiKey",
    "x-session-id",
    "X-CSRF-Token",
    "x-amz-security-token",
    "X-Hook-Secret",
    "x-password",
    "x-passwd",
    "X-Client-Credential",
    "x-credentials",
]

VISIBLE = [
    "content-type",
    "content-length",
    "user-agent",
    "accept",
    "host",
    "x-forwarded-for",
    "x-request-id",
    # Delivery ids (the history shows them as delivery_id anyway) and event names.
    "x-github-delivery",
    "X-GitHub-Event",
    "x-github-hook-id",
    "webhook-id",
    "webhook-timestamp",
    "Idempotency-Key",  # GitLab's delivery id: an idempotency key is not a credential
    "x-idempotency-key",
    "X-Request-UUID",
    "X-Hook-UUID",
    "X-Event-Key",  # Bitbucket: the event's name (repo:push)
    "x-gitlab-event",
    "X-Gitlab-Event-UUID",
    "X-Gitea-Delivery",
    "X-Gitea-Event",
    # 'key' as a word only.
    "keep-alive",
    "X-Keyboard",
    "Monkey",
    "x-keys-count",
]


@pytest.mark.parametrize("name", SENSITIVE)
def test_credential_and_signature_headers_are_sensitive(name: str) -> None:
    assert is_sensitive_header(name)
    assert is_sensitive_header(name.upper()) and is_sensitive_header(name.lower())


@pytest.mark.parametrize("name", VISIBLE)
def test_ordinary_headers_stay_visible(name: str) -> None:
    assert not is_sensitive_header(name)
    assert not is_sensitive_header(name.upper())


# The outgoing rule this one replaced: values it sealed at rest must still be opened, so every
# name it called sensitive has to stay sensitive.
_PREVIOUS_NAMES = {"authorization", "proxy-authorization", "cookie", "webhook-signature"}
_PREVIOUS_PARTS = re.compile(r"token|secret|signature|password|api-?key|auth", re.IGNORECASE)
_PIECES = ["x", "key", "auth", "token", "api", "idempotency", "event", "sig", "pass", "word"]


@given(
    st.lists(st.sampled_from(_PIECES) | st.text("abcdeikno", max_size=4), max_size=5),
    st.sampled_from(["-", "_", ""]),
)
def test_every_name_the_previous_rule_sealed_is_still_sensitive(
    pieces: list[str], separator: str
) -> None:
    name = separator.join(pieces)
    if name.lower() in _PREVIOUS_NAMES or _PREVIOUS_PARTS.search(name):
        assert is_sensitive_header(name)


def test_redact_headers_keeps_names_and_the_other_values() -> None:
    headers = {
        "X-Functions-Key": "fk",
        "X-Gitea-Signature": "abc",
        "X-Sig": "s",  # a hook's own signature header, named by its settings
        "Content-Type": "application/json",
        "Idempotency-Key": "d-1",
    }
    assert redact_headers(headers, extra=["x-sig"]) == {
        "X-Functions-Key": REDACTED,
        "X-Gitea-Signature": REDACTED,
        "X-Sig": REDACTED,
        "Content-Type": "application/json",
        "Idempotency-Key": "d-1",
    }
    assert redact_headers(headers)["X-Sig"] == "s"


def test_the_names_kept_for_ingest_are_bounded_whatever_names_arrive() -> None:
    assert recorded_name("X-Functions-Key") == ("x-functions-key", True)
    assert recorded_name("X-GitHub-Delivery") == ("x-github-delivery", False)
    for i in range(CACHE_SIZE * 3):
        assert recorded_name(f"X-Attacker-Chosen-{i}") == (f"x-attacker-chosen-{i}", False)
        assert len(sensitive_headers._recorded) <= CACHE_SIZE
    assert recorded_name("X-Functions-Key") == ("x-functions-key", True)
