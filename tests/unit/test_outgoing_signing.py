"""Outgoing signatures verify with the standardwebhooks library and plain HMAC."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.dispatcher.signing import (
    REDACTED,
    redact_headers,
    scrub_sent_secrets,
    signature_headers,
)
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


def test_an_echo_of_the_sent_credentials_and_signatures_is_scrubbed_from_the_answer() -> None:
    sent = {
        "Authorization": "Bearer ghp_0123456789abcdef",
        "webhook-signature": "v1,b/+IXRhrPSxrUmiAGAiVXnjEc701OvUx8HUcmGFPcuA=",
        "X-Sig": "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "X-Api-Key": "short",  # too short to scrub safely: it could be any word
        "X-Run": "run-1234567890",  # not a secret
    }
    echo = (
        '{"headers": {"Authorization": "Bearer ghp_0123456789abcdef", '
        '"webhook-signature": "v1,b/+IXRhrPSxrUmiAGAiVXnjEc701OvUx8HUcmGFPcuA=", '
        '"X-Sig": "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", '
        '"X-Run": "run-1234567890"}, "token": "ghp_0123456789abcdef", "short": "short"}'
    )
    scrubbed = scrub_sent_secrets(echo, sent, ["X-Sig"])
    assert scrubbed == (
        '{"headers": {"Authorization": "[redacted]", "webhook-signature": "[redacted]", '
        '"X-Sig": "[redacted]", "X-Run": "run-1234567890"}, "token": "[redacted]", '
        '"short": "short"}'
    )
    assert scrub_sent_secrets(None, sent) is None
    assert scrub_sent_secrets("ok", sent) == "ok"


def test_a_secret_cut_off_by_the_excerpt_and_the_parts_of_a_header_are_scrubbed() -> None:
    sent = {
        "Authorization": "Bearer ghp_0123456789abcdef",
        "Cookie": "theme=dark; session=s3ss10n-0123456789; csrf=c5rf-0123456789",
    }
    # The excerpt ends inside the token: its start is a secret too.
    assert scrub_sent_secrets('{"auth": "Bearer ghp_0123456', sent) == '{"auth": "[redacted]'
    assert scrub_sent_secrets('{"auth": "ghp_0123', sent) == '{"auth": "[redacted]'
    # Shorter than 8 characters at the end: could be any text.
    assert scrub_sent_secrets('{"auth": "ghp_01', sent) == '{"auth": "ghp_01'
    # One cookie echoed alone, not the whole header.
    echoed = '{"session": "s3ss10n-0123456789", "theme": "dark"}'
    assert scrub_sent_secrets(echoed, sent) == '{"session": "[redacted]", "theme": "dark"}'
