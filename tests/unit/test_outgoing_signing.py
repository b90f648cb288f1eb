"""Outgoing signatures verify with the standardwebhooks library and plain HMAC."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import string
import time
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.dispatcher.signing import scrub_sent_secrets, signature_headers
from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret
from gateway.security.sensitive_headers import REDACTED, redact_headers

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


def _u_escaped(chars: str, hex_format: str) -> Callable[[str], str]:
    return lambda value: "".join(
        "\\u" + format(ord(c), hex_format) if c in chars else c for c in value
    )


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _php(value: str) -> str:
    return json.dumps(value)[1:-1].replace("/", "\\/")


# How a target may echo a header value: each function writes it as that target would.
ECHOES: dict[str, Callable[[str], str]] = {
    "as sent": lambda value: value,
    "JSON": lambda value: json.dumps(value)[1:-1],
    "PHP JSON (\\/)": _php,
    ".NET JSON (\\u002B)": _u_escaped("+/=", "04X"),
    "\\u002b, lower-case hex": _u_escaped("+/=", "04x"),
    "every character \\uXXXX": _u_escaped("".join(map(chr, range(128))), "04X"),
    "every character \\uxxxx": _u_escaped("".join(map(chr, range(128))), "04x"),
    "percent-encoded": lambda value: quote(value, safe=""),
    "percent-encoded, lower-case hex": lambda value: _lower_hex(quote(value, safe="")),
    "form-encoded": lambda value: quote_plus(value, safe=""),
    "HTML references": lambda value: value.replace("/", "&#x2F;").replace("+", "&#43;"),
    "PHP JSON, percent-encoded": lambda value: quote(_php(value), safe=""),
    "JSON within JSON": lambda value: json.dumps(_php(value))[1:-1],
}
TOKENS = st.text(alphabet=string.ascii_letters + string.digits + "/+=", min_size=12, max_size=48)
# Around the echo: text that cannot continue a token.
AROUND = st.text(alphabet=' {}":,.;!?-_()[]<>', max_size=40)


def _revealed(text: str) -> str:
    """``text`` with every escape of ECHOES undone (the standard library's decoders, a few
    layers deep): what a reader of the history could recover."""
    for _ in range(3):
        text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
        text = unquote(html.unescape(text.replace("\\/", "/").replace("\\\\", "\\")))
    return text


@settings(max_examples=300, deadline=None)
@given(
    token=TOKENS,
    signature=TOKENS,
    echo=st.sampled_from(sorted(ECHOES)),
    before=AROUND,
    after=AROUND,
)
def test_a_sent_secret_echoed_in_any_escaping_never_survives(
    token: str, signature: str, echo: str, before: str, after: str
) -> None:
    sent = {"Authorization": f"Bearer {token}", "webhook-signature": f"v1,{signature}"}
    for value in sent.values():
        scrubbed = scrub_sent_secrets(before + ECHOES[echo](value) + after, sent)
        assert scrubbed is not None
        revealed = _revealed(scrubbed)
        assert token not in revealed and signature not in revealed, (echo, scrubbed)
        assert scrubbed.startswith(before) and scrubbed.endswith(after)  # only the secret went


@settings(max_examples=300, deadline=None)
@given(token=TOKENS, echo=st.sampled_from(sorted(ECHOES)), before=AROUND, data=st.data())
def test_a_sent_secret_cut_off_by_the_excerpt_in_any_escaping_never_survives(
    token: str, echo: str, before: str, data: st.DataObject
) -> None:
    """The excerpt ends anywhere after the first 8 characters of the token, also in the middle
    of an escape (``\\u00``, ``%2``)."""
    value = f"Bearer {token}"
    written = ECHOES[echo](value)
    shortest = len(ECHOES[echo](value[: len("Bearer ") + 8]))
    cut = data.draw(st.integers(min_value=shortest, max_value=len(written)))
    scrubbed = scrub_sent_secrets(before + written[:cut], {"Authorization": value})
    assert scrubbed is not None
    assert token[:8] not in _revealed(scrubbed), (echo, scrubbed)
    assert scrubbed.startswith(before)


# Text with escapes and escape-like fragments, none of which can spell an upper-case letter.
FRAGMENTS = st.sampled_from(
    ["\\/", "\\u002f", "\\u002B", "%2F", "%3d", "%", "%2", "\\", "\\u00", "&amp;", "&#x2F;", "&"]
)
TEXTS = st.lists(st.one_of(st.text(max_size=8), FRAGMENTS), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, token=st.text(alphabet="GHIJKLMNOPQRSTUVWXYZ", min_size=8, max_size=40))
def test_an_answer_without_the_secrets_is_left_as_it_is(text: str, token: str) -> None:
    assume(token not in _revealed(text))
    sent = {"Authorization": f"Bearer {token}", "X-Run": "not-a-secret-at-all"}
    assert scrub_sent_secrets(text, sent) == text


def test_a_php_style_echo_is_scrubbed_in_place() -> None:
    """The reviewer's case: PHP's json_encode writes ``/`` as ``\\/``."""
    sent = {
        "Authorization": "Bearer OUT_AUTH_abc/def+ghi/jkl",
        "webhook-signature": "v1,qHKwp0u//AEXkr4Yyrr2npwNVf4fTcxY9IE2+IxUdVU=",
    }
    echo = (
        '{"Authorization": "Bearer OUT_AUTH_abc\\/def+ghi\\/jkl", "webhook-signature": '
        '"v1,qHKwp0u\\/\\/AEXkr4Yyrr2npwNVf4fTcxY9IE2+IxUdVU=", "path": "\\/php\\/echo"}'
    )
    assert scrub_sent_secrets(echo, sent) == (
        '{"Authorization": "[redacted]", "webhook-signature": "[redacted]", '
        '"path": "\\/php\\/echo"}'
    )
    # Cut off inside an escape: the value's start goes with it.
    assert scrub_sent_secrets('{"a": "Bearer OUT_AUTH_abc\\u00', sent) == '{"a": "[redacted]'
    assert scrub_sent_secrets('{"a": "OUT_AUTH_abc%2', sent) == '{"a": "[redacted]'


def test_a_value_with_short_parts_echoed_form_encoded_is_scrubbed() -> None:
    """Each part is under 8 characters, so only the whole value can be found; form-encoded,
    its spaces are pluses."""
    sent = {"X-Api-Key": "k3y1 k3y2 k3y3"}
    echoed = "api_key=" + quote_plus("k3y1 k3y2 k3y3") + "&x=1"
    assert scrub_sent_secrets(echoed, sent) == "api_key=[redacted]&x=1"


def test_scrubbing_with_many_pieces_still_finds_whole_and_cut_off_ones() -> None:
    """A credential header rendered from a large variable is many pieces (its words), looked
    for in every reading of the excerpt (escapes undone). Only the pieces whose head occurs in
    a reading are searched (the work grows with the text plus the pieces, not their product:
    6.5 s of a blocked loop per attempt before, 0.5 s after, for this case); what that skips
    must never be a piece that is there."""
    words = [f"w{n:07d}x" for n in range(100_000)]
    headers = {"Authorization": "Bearer " + " ".join(words)}
    excerpt = "%7A" * 21_845  # 64 KiB read twice: as it is and unescaped, no piece in it
    assert scrub_sent_secrets(excerpt, headers) == excerpt
    # Found: a word whole, and one cut off by the end of the excerpt.
    assert scrub_sent_secrets(f"ok {words[-1]} {words[5][:8]}", headers) == (
        f"ok {REDACTED} {REDACTED}"
    )
