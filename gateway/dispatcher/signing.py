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
from collections.abc import Iterable, Mapping

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


def redact_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with secret-bearing values replaced by ``[redacted]``."""
    extra = tuple(extra)
    return {
        name: REDACTED if is_sensitive_header(name, extra) else value
        for name, value in headers.items()
    }
