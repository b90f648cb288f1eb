"""Signature headers for outgoing requests, and redaction of secret-bearing headers.

Every request carries the Standard Webhooks headers ``webhook-id`` (the delivery id — the same
on every retry, so receivers can de-duplicate) and ``webhook-timestamp`` (unix seconds at
send time); with a secret also ``webhook-signature: v1,<base64>`` (HMAC-SHA256 over
``"{id}.{timestamp}.{body}"`` keyed with the decoded ``whsec_`` secret). A hook may also name a
custom header (``settings.signature_header``, e.g. ``X-Hub-Signature-256``) that gets the
GitHub-style ``<algorithm>=<hex>`` HMAC of the body, keyed with the secret string's UTF-8 bytes
— what a receiver configured with the same secret text computes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.ingest.signatures import sign_hmac_hex, sign_standard_webhooks

REDACTED = "[redacted]"
# Header names whose values are credentials, whatever the hook's settings call them.
_SENSITIVE_NAMES = frozenset(
    {"authorization", "proxy-authorization", "cookie", "webhook-signature", "x-api-key"}
)
_SENSITIVE_PARTS = re.compile(r"token|secret|signature|password|api-?key|auth", re.IGNORECASE)


def signature_headers(
    *,
    secret: str | None,
    delivery_id: str,
    timestamp: int,
    body: bytes,
    signature_header: str | None = None,
    signature_algorithm: str = "sha256",
) -> dict[str, str]:
    """Standard Webhooks headers (signed when there is a secret) plus the optional custom one."""
    headers = {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp)}
    if secret:
        headers["webhook-signature"] = sign_standard_webhooks(secret, delivery_id, timestamp, body)
        if signature_header:
            digest = sign_hmac_hex(secret, signature_algorithm, body)
            headers[signature_header] = f"{signature_algorithm}={digest}"
    return headers


def is_sensitive_header(name: str, extra: Iterable[str] = ()) -> bool:
    """True when a header's value must not be stored or shown."""
    lowered = name.lower()
    return (
        lowered in _SENSITIVE_NAMES
        or lowered in {e.lower() for e in extra}
        or _SENSITIVE_PARTS.search(lowered) is not None
    )


def with_sensitive_header_values(
    settings: Mapping[str, Any], change: Callable[[str], str]
) -> dict[str, Any]:
    """An outgoing hook's ``settings`` with ``change`` applied to the value of each sensitive
    request header, the others as they are: the one rule for which values are sealed at rest
    (storage.outgoing), re-sealed by key rotation and opened to be sent (dispatcher.outbound)."""
    headers = settings.get("request_headers")
    if not headers:
        return dict(settings)
    return {
        **settings,
        "request_headers": [
            {**h, "value": change(h["value"])} if is_sensitive_header(h["name"]) else h
            for h in headers
        ],
    }


def redact_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with secret-bearing values replaced by ``[redacted]``."""
    extra = tuple(extra)
    return {
        name: REDACTED if is_sensitive_header(name, extra) else value
        for name, value in headers.items()
    }


# Shorter pieces of a sensitive value are not scrubbed from a target's answer: they could be
# ordinary words of it.
_MIN_SCRUBBED = 8
_SEPARATORS = re.compile(r"[\s=,;]+")


def scrub_sent_secrets(
    text: str | None, headers: Mapping[str, str], extra: Iterable[str] = ()
) -> str | None:
    """``text`` (the excerpt of a target's answer) with the values of the secret-bearing
    headers sent to it replaced by ``[redacted]``: a target that echoes the request (a
    debugging endpoint, a misdirected hook) must not put a credential or a signature into the
    request history. Each value is scrubbed whole and in its parts (``Bearer`` and the token,
    ``v1,`` and the signature, each cookie of a ``Cookie`` header), and a value cut off at the
    end of the excerpt is scrubbed too."""
    if not text:
        return text
    extra = tuple(extra)
    pieces: set[str] = set()
    for name, value in headers.items():
        if is_sensitive_header(name, extra):
            pieces.add(value.strip())
            pieces.update(_SEPARATORS.split(value))
    ordered = sorted((p for p in pieces if len(p) >= _MIN_SCRUBBED), key=len, reverse=True)
    for piece in ordered:  # a whole value before its parts
        text = text.replace(piece, REDACTED)
    for piece in ordered:  # the excerpt's end cuts a value short: the longest such start
        start = text.find(piece[0], max(0, len(text) - len(piece) + 1))
        while start != -1 and len(text) - start >= _MIN_SCRUBBED:
            if piece.startswith(text[start:]):
                return text[:start] + REDACTED
            start = text.find(piece[0], start + 1)
    return text
