"""Signature headers for outgoing requests, and scrubbing the secrets sent from an answer.

Every request carries the Standard Webhooks headers ``webhook-id`` (the delivery id — the same
on every retry, so receivers can de-duplicate) and ``webhook-timestamp`` (unix seconds at
send time); with a secret also ``webhook-signature: v1,<base64>`` (HMAC-SHA256 over
``"{id}.{timestamp}.{body}"`` keyed with the decoded ``whsec_`` secret). A hook may also name a
custom header (``settings.signature_header``, e.g. ``X-Hub-Signature-256``) that gets the
GitHub-style ``<algorithm>=<hex>`` HMAC of the body, keyed with the secret string's UTF-8 bytes
— what a receiver configured with the same secret text computes.

For the grace period after a rotation (``previous_secret``), ``webhook-signature`` carries two
space-delimited signatures, the new secret's first (``v1,<new> v1,<old>``): a receiver that
holds either secret verifies the request. The custom header has room for one signature: the
new secret's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.ingest.signatures import sign_hmac_hex, sign_standard_webhooks
from gateway.security.sensitive_headers import REDACTED, is_sensitive_header


def signature_headers(
    *,
    secret: str | None,
    delivery_id: str,
    timestamp: int,
    body: bytes,
    signature_header: str | None = None,
    signature_algorithm: str = "sha256",
    previous_secret: str | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers (signed when there is a secret, and with ``previous_secret``
    too when given) plus the optional custom one (the secret's only)."""
    headers = {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp)}
    if secret:
        signatures = [sign_standard_webhooks(secret, delivery_id, timestamp, body)]
        if previous_secret:
            signatures.append(sign_standard_webhooks(previous_secret, delivery_id, timestamp, body))
        headers["webhook-signature"] = " ".join(signatures)
        if signature_header:
            digest = sign_hmac_hex(secret, signature_algorithm, body)
            headers[signature_header] = f"{signature_algorithm}={digest}"
    return headers


def with_sensitive_header_values(
    settings: Mapping[str, Any], change: Callable[[str], str]
) -> dict[str, Any]:
    """An outgoing hook's ``settings`` with ``change`` applied to the value of each sensitive
    request header (gateway.security.sensitive_headers), the others as they are: the one
    rule for which values are sealed at rest (storage.outgoing), re-sealed by key rotation and
    opened to be sent (dispatcher.outbound)."""
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


# Shorter pieces of a sensitive value are not scrubbed from a target's answer: they could be
# ordinary words of it.
_MIN_SCRUBBED = 8
_SEPARATORS = re.compile(r"[\s=,;]+")
_ENTITIES = {
    "amp": "&", "quot": '"', "apos": "'", "lt": "<", "gt": ">", "sol": "/", "bsol": "\\",
    "plus": "+", "equals": "=", "comma": ",", "semi": ";", "colon": ":", "percnt": "%",
}  # fmt: skip
# One character as a target may write it when it echoes a request: a JSON or JavaScript escape
# (PHP's \/, .NET's \u002B, \xHH, \"), percent-encoding (%2F) or an HTML character reference
# (&#x2F;, &#43;, &sol;). Hex digits in either case.
_ESCAPE = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})"
    r"|&#[xX]([0-9a-fA-F]{1,6});|&#([0-9]{1,7});|&(?i:(" + "|".join(_ENTITIES) + r"));|\\([^ux])",
    re.DOTALL,
)
_CONTROL_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# An escape the excerpt's end cuts short (``\u00``, ``%2``, ``&#x2``).
_CUT_ESCAPE = re.compile(
    r"(?:\\(?:u[0-9a-fA-F]{0,3}|x[0-9a-fA-F]?)?|%[0-9a-fA-F]?|&#?[xX]?\w{0,6})\Z"
)
# Layers of escaping undone (JSON of a percent-encoded echo, JSON within JSON, ...).
_MAX_LAYERS = 4


def _unescaped(match: re.Match[str]) -> str:
    hex4, hex2, percent, html_hex, html_dec, entity, other = match.groups()
    if entity is not None:
        return _ENTITIES[entity.lower()]
    if other is not None:
        return _CONTROL_ESCAPES.get(other, other)
    if html_dec is not None:
        code = int(html_dec)
    else:
        code = int(hex4 or hex2 or percent or html_hex, 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def _unescape(text: str) -> tuple[str, list[int]] | None:
    """``text`` with one layer of escapes undone, and where each of its characters starts in
    ``text`` (one more entry: ``len(text)``); None when nothing in it is escaped. Every
    character comes from one contiguous span, so a match maps back to a span of ``text``."""
    parts: list[str] = []
    starts: list[int] = []
    position = 0
    for match in _ESCAPE.finditer(text):
        parts += (text[position : match.start()], _unescaped(match))
        starts += range(position, match.start() + 1)
        position = match.end()
    if not parts:
        return None
    parts.append(text[position:])
    starts += range(position, len(text) + 1)
    return "".join(parts), starts


def _readings(text: str) -> list[tuple[str, list[int]]]:
    """``text`` as it is and with up to ``_MAX_LAYERS`` layers of escapes undone, each with
    where its characters start in ``text``."""
    starts = list(range(len(text) + 1))
    readings = [(text, starts)]
    current = text
    for _ in range(_MAX_LAYERS):
        unescaped = _unescape(current)
        if unescaped is None:
            break
        current, local = unescaped
        starts = [starts[i] for i in local]
        readings.append((current, starts))
    return readings


def sent_secret_pieces(headers: Mapping[str, str], extra: Iterable[str] = ()) -> set[str]:
    """What :func:`scrub_sent_secrets` looks for: each secret-bearing header value whole and
    in its parts (``Bearer`` and the token, ``v1,`` and the signature, each cookie)."""
    own = {e.lower() for e in extra}
    pieces: set[str] = set()
    for name, value in headers.items():
        if is_sensitive_header(name) or name.lower() in own:
            pieces.add(value.strip())
            pieces.update(_SEPARATORS.split(value))
    return pieces


def scrub_pieces(text: str | None, pieces: Iterable[str]) -> str | None:
    """``text`` with every piece (of at least ``_MIN_SCRUBBED`` characters) replaced by
    ``[redacted]``, whether it stands as it is or escaped (see ``_ESCAPE``, up to
    ``_MAX_LAYERS`` layers deep), and a piece cut off at the end of ``text`` too."""
    if not text:
        return text
    # A piece found whole or cut short starts with _MIN_SCRUBBED characters of a reading: only
    # those pieces are looked for, so the work grows with the text plus the pieces, not with
    # their product (a rendered URL or header value can be a megabyte of short pieces, the
    # excerpt up to 64 KiB, and this runs on the event loop).
    readings = [
        (
            reading,
            starts,
            {reading[i : i + _MIN_SCRUBBED] for i in range(len(reading) - _MIN_SCRUBBED + 1)},
        )
        for reading, starts in _readings(text)
    ]
    heads = set().union(*(grams for _, _, grams in readings))
    wanted: set[str] = set()
    for piece in pieces:
        if len(piece) < _MIN_SCRUBBED:
            continue
        # Form-encoded, a space is a plus; percent-encoded or \xHH-escaped, a non-ASCII piece
        # reads as its UTF-8 bytes. Each form's head is that of the piece's head.
        head = piece[:_MIN_SCRUBBED]
        if head in heads:
            wanted.add(piece)
        if head.replace(" ", "+") in heads:
            wanted.add(piece.replace(" ", "+"))
        if head.encode("utf-8", "replace").decode("latin-1")[:_MIN_SCRUBBED] in heads:
            wanted.add(piece.encode("utf-8", "replace").decode("latin-1"))
    if not wanted:
        return text
    spans: list[tuple[int, int]] = []
    for reading, starts, grams in readings:
        candidates = [piece for piece in wanted if piece[:_MIN_SCRUBBED] in grams]
        for piece in candidates:
            found = reading.find(piece)
            while found != -1:
                spans.append((starts[found], starts[found + len(piece)]))
                found = reading.find(piece, found + 1)
        # The excerpt's end cuts a piece short (perhaps in the middle of an escape): from the
        # longest such start to the end.
        cut = _CUT_ESCAPE.search(reading)
        end = cut.start() if cut is not None else len(reading)
        for piece in candidates:
            head = piece[:_MIN_SCRUBBED]
            start = reading.find(head, max(0, end - len(piece) + 1), end)
            while start != -1:
                if piece.startswith(reading[start:end]):
                    spans.append((starts[start], len(text)))
                    break
                start = reading.find(head, start + 1, end)
    if not spans:
        return text
    out: list[str] = []
    position = 0
    for start, stop in sorted(spans):
        if stop <= position:
            continue
        if start >= position:
            out += (text[position:start], REDACTED)
        position = stop  # overlapping spans (a value and its parts) make one [redacted]
    out.append(text[position:])
    return "".join(out)


def scrub_sent_secrets(
    text: str | None, headers: Mapping[str, str], extra: Iterable[str] = ()
) -> str | None:
    """``text`` (the excerpt of a target's answer) with the values of the
    secret-bearing headers sent to it replaced by ``[redacted]``: a target that echoes the
    request (a debugging endpoint, a misdirected hook) must not put a credential or a
    signature into the request history. Each value is scrubbed whole and in its parts
    (``Bearer`` and the token, ``v1,`` and the signature, each cookie of a ``Cookie``
    header), as sent or escaped (JSON ``\\/`` and ``\\u002F``, ``%2F``, HTML references, also
    one within another), and a value cut off at the end of the excerpt is scrubbed too."""
    return scrub_pieces(text, sent_secret_pieces(headers, extra))
