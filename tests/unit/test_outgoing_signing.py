"""Outgoing signatures verify with the standardwebhooks library and plain HMAC."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.dispatcher.signing import REDACTED, redact_headers, signature_headers
from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret

BODY = b'{"event":"run.completed","run":{"id":"r1"}}'


def test_standard_webhooks_library_verifies_our_signature() -> None:
    secret = generate_secret(STANDARD_WEBHOOKS)
    headers = signature_headers(
        secret=secret, delivery_id="msg_1", timestamp=int(time.time()), body=BODY
    )
    assert Webhook(secret).verify(BODY, headers) == {"event": "run.completed", "run": {"id": "r1"}}


def test_a_changed_body_fails_verification() -> None:
    secret = generate_secret(STANDARD_WEBHOOKS)
    headers = signature_headers(
        secret=secret, delivery_id="msg_1", timestamp=int(time.time()), body=BODY
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"r1", b"r2"), headers)


def test_custom_hmac_header_is_github_style() -> None:
    secret = generate_secret(STANDARD_WEBHOOKS)
    headers = signature_headers(
        secret=secret,
        delivery_id="d",
        timestamp=1,
        body=BODY,
        signature_header="X-Hub-Signature-256",
        signature_algorithm="sha256",
    )
    expected = hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={expected}"


def test_without_a_secret_only_id_and_timestamp_are_sent() -> None:
    headers = signature_headers(
        secret=None, delivery_id="d", timestamp=5, body=BODY, signature_header="X-Sig"
    )
    assert headers == {"webhook-id": "d", "webhook-timestamp": "5"}


def test_redaction_covers_signatures_and_credentials() -> None:
    headers = {
        "webhook-signature": "v1,abc",
        "X-Hub-Signature-256": "sha256=abc",
        "Authorization": "Bearer t",
        "X-Gitlab-Token": "t",
        "X-Custom-Sig": "s",
        "Content-Type": "application/json",
        "webhook-id": "d",
    }
    redacted = redact_headers(headers, extra=["x-custom-sig"])
    assert redacted == {
        "webhook-signature": REDACTED,
        "X-Hub-Signature-256": REDACTED,
        "Authorization": REDACTED,
        "X-Gitlab-Token": REDACTED,
        "X-Custom-Sig": REDACTED,
        "Content-Type": "application/json",
        "webhook-id": "d",
    }
