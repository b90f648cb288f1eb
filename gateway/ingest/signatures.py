"""Signature verification for incoming webhooks (DESIGN.md §3, step 3).

Pure: no aiohttp, no I/O. The scheme is derived from the hook's ``secret_header_name``:

* ``webhook-signature`` → **Standard Webhooks v1**: headers ``webhook-id``,
  ``webhook-timestamp`` (integer unix seconds, within ``tolerance_seconds`` of now in both
  directions) and ``webhook-signature`` (space-separated ``v1,<base64>`` entries; other
  versions such as ``v1a,``/``v2,`` are skipped; any matching v1 entry passes). The MAC is
  always HMAC-SHA256 (fixed by the spec, the configured algorithm is ignored) over
  ``f"{id}.{timestamp}.".encode() + body``; a ``whsec_<base64>`` secret is keyed with its
  decoded bytes (missing ``=`` padding accepted), any other secret with its UTF-8 bytes.
* ``x-gitlab-token`` → **token**: the header value must equal a secret (GitLab sends it verbatim).
* any other header (``x-hub-signature-256``, ``x-hub-signature``, ``x-signature``, ...) →
  **HMAC** of the exact raw body with the configured algorithm; the value may be
  ``<algo>=<hex>`` (GitHub, Bitbucket), bare hex (any case) or base64 (standard or urlsafe,
  padded or not).

Every comparison is ``hmac.compare_digest`` on bytes. Secrets, keys and computed signatures
never appear in exception messages or reprs; ``str(SignatureError)`` is safe to send to clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SUPPORTED_ALGORITHMS: frozenset[str] = frozenset({"sha1", "sha256", "sha384", "sha512"})
STANDARD_WEBHOOKS, TOKEN, HMAC = "standard-webhooks", "token", "hmac"
_STDWH_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_WHSEC_PREFIX = "whsec_"
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")  # RFC 9110 token, lower-cased
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_B64_RE = re.compile(r"[A-Za-z0-9+/\-_]+")  # either alphabet; padding is stripped beforehand
_INT_RE = re.compile(r"[0-9]{1,15}")  # bounded: int() on huge digit strings is slow or raises


class SignatureError(Exception):
    """The request's signature is missing, malformed or wrong."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "missing" | "malformed" | "mismatch" | "expired"


def scheme_for_header(header_name: str) -> str:
    """Return the scheme (``standard-webhooks``, ``token`` or ``hmac``) a header name selects."""
    name = header_name.strip().lower()
    if name == "webhook-signature":
        return STANDARD_WEBHOOKS
    return TOKEN if name == "x-gitlab-token" else HMAC


def _b64decode(value: str) -> bytes | None:
    """Decode standard or urlsafe base64, padded or not; ``None`` if it is not base64."""
    value = value.rstrip("=")
    if not _B64_RE.fullmatch(value) or len(value) % 4 == 1:
        return None
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def _key_bytes(secret: str, scheme: str) -> bytes:
    if scheme == STANDARD_WEBHOOKS and secret.startswith(_WHSEC_PREFIX):
        key = _b64decode(secret[len(_WHSEC_PREFIX) :])
        if not key:
            raise ValueError("a 'whsec_' secret must be followed by non-empty base64")
        return key
    return secret.encode("utf-8")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "getall"):
        # Callers pass aiohttp's case-insensitive headers; tolerate a plain dict with other
        # casing, but only scan on a miss so the hot path stays a single lookup.
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _required(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise SignatureError(f"missing header {name!r}", "missing")
    if not value.strip():
        raise SignatureError(f"header {name!r} is empty", "missing")
    return value


@dataclass(frozen=True, slots=True)
class SignatureVerifier:
    """Checks one hook's requests; build it with :meth:`create` and cache it per hook."""

    algorithm: str
    header_name: str
    secrets: tuple[str, ...] = field(repr=False)
    tolerance_seconds: int = 300
    scheme: str = field(init=False)
    _digest_size: int = field(init=False, repr=False, compare=False)
    _keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    # Keyed HMAC objects prepared once; copying one is cheaper than re-keying per request.
    _macs: tuple[hmac.HMAC, ...] = field(init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        algorithm: str,
        header_name: str,
        secrets: Sequence[str],
        tolerance_seconds: int = 300,
    ) -> SignatureVerifier:
        """Validate the hook's settings and precompute keys; raises ``ValueError`` if invalid."""
        if isinstance(secrets, str):  # tuple() would split it into characters
            raise ValueError("secrets must be a sequence of strings, not a string")
        return cls(
            algorithm=algorithm,
            header_name=header_name,
            secrets=tuple(secrets),
            tolerance_seconds=tolerance_seconds,
        )

    def __post_init__(self) -> None:
        algorithm, header_name = self.algorithm.lower(), self.header_name.strip().lower()
        secrets = () if isinstance(self.secrets, str) else tuple(self.secrets)  # str: see create
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        if not _HEADER_NAME_RE.fullmatch(header_name):
            raise ValueError("header name must be a valid HTTP header name of at most 64 chars")
        if not 1 <= len(secrets) <= 2 or not all(isinstance(s, str) and s for s in secrets):
            raise ValueError("a verifier needs one or two non-empty secrets")
        if self.tolerance_seconds < 0:
            raise ValueError("tolerance_seconds must not be negative")
        scheme = scheme_for_header(header_name)
        keys = tuple(_key_bytes(s, scheme) for s in secrets)
        digest = hashlib.sha256 if scheme == STANDARD_WEBHOOKS else getattr(hashlib, algorithm)
        for name, value in (
            ("algorithm", algorithm),
            ("header_name", header_name),
            ("secrets", secrets),
            ("scheme", scheme),
            ("_digest_size", digest().digest_size),
            ("_keys", keys),
            ("_macs", tuple(hmac.new(k, digestmod=digest) for k in keys)),
        ):
            object.__setattr__(self, name, value)  # frozen dataclass: set derived fields once

    @property
    def signature_headers(self) -> frozenset[str]:
        """Lower-case names of headers carrying secret material (redact them in request logs)."""
        if self.scheme == STANDARD_WEBHOOKS:
            return frozenset({self.header_name, "webhook-signature"})
        return frozenset({self.header_name})

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401 (RFC 9110 §11.6.1): the scheme and the
        header the signature goes in, which the 401's message names anyway."""
        if self.scheme == STANDARD_WEBHOOKS:
            return 'Standard-Webhooks header="webhook-signature"'
        if self.scheme == TOKEN:
            return f'Token header="{self.header_name}"'
        return f'HMAC header="{self.header_name}", algorithm="{self.algorithm}"'

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
        """Raise :class:`SignatureError` unless the request is signed by an active secret.

        ``headers`` should be case-insensitive (aiohttp's ``CIMultiDictProxy``); a plain dict
        with lower-case keys works too. ``now`` (unix seconds) defaults to the current time.
        """
        if self.scheme == STANDARD_WEBHOOKS:
            self._verify_standard_webhooks(headers, body, time.time() if now is None else now)
            return
        value = _header(headers, self.header_name)
        if value is None:
            raise SignatureError(f"missing signature header {self.header_name!r}", "missing")
        if not value.strip():
            raise SignatureError(f"signature header {self.header_name!r} is empty", "missing")
        if self.scheme == TOKEN:
            # surrogatepass: odd header strings must compare unequal, never raise.
            given = value.encode("utf-8", "surrogatepass")
            if not any(hmac.compare_digest(given, key) for key in self._keys):
                raise SignatureError(
                    f"token in header {self.header_name!r} does not match", "mismatch"
                )
            return
        given_sig = self._parse_hmac_value(value.strip())
        if len(given_sig) == self._digest_size:
            for base in self._macs:
                mac = base.copy()
                mac.update(body)
                if hmac.compare_digest(mac.digest(), given_sig):
                    return
        raise SignatureError("signature does not match the request body", "mismatch")

    def _parse_hmac_value(self, value: str) -> bytes:
        head, sep, rest = value.partition("=")
        # '=' followed by more data cannot be base64 padding, so this is an '<algo>=' prefix
        # ('sha256=' with nothing after it is a prefix too, and then malformed).
        if sep and (rest.strip("=") or head.lower() in SUPPORTED_ALGORITHMS):
            algo = head.lower().replace("-", "")
            if algo == "t" and ",v1=" in rest:
                raise SignatureError(
                    f"malformed signature in header {self.header_name!r}: Stripe-style "
                    "'t=<time>,v1=<hex>' signatures are not supported (expected "
                    f"{self.algorithm}=<hex>, hex or base64 of the body's HMAC)",
                    "malformed",
                )
            if algo not in SUPPORTED_ALGORITHMS:
                raise SignatureError(
                    f"malformed signature in header {self.header_name!r}: unsupported algorithm "
                    f"prefix (expected {self.algorithm}=)",
                    "malformed",
                )
            if algo != self.algorithm:
                raise SignatureError(
                    f"signature uses {algo} but this hook expects {self.algorithm}", "mismatch"
                )
            value = rest
        # Hex wins when the length fits the digest; otherwise try base64 (a shorter or longer
        # value that decodes still fails on length, reported as a plain mismatch).
        if len(value) == 2 * self._digest_size and _HEX_RE.fullmatch(value):
            return bytes.fromhex(value)
        decoded = _b64decode(value)
        if decoded is None:
            raise SignatureError(
                f"malformed signature in header {self.header_name!r}: expected hex, "
                f"'{self.algorithm}=<hex>' or base64",
                "malformed",
            )
        return decoded

    def _verify_standard_webhooks(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        msg_id, timestamp, signature = (_required(headers, name) for name in _STDWH_HEADERS)
        if not _INT_RE.fullmatch(timestamp):
            raise SignatureError("webhook-timestamp is not an integer unix timestamp", "malformed")
        skew = now - int(timestamp)
        if abs(skew) > self.tolerance_seconds:
            # Which way tells an operator whether the message is a replay or a clock is wrong.
            raise SignatureError(
                f"webhook-timestamp is too {'old' if skew > 0 else 'new'}: more than "
                f"{self.tolerance_seconds} s from this server's clock",
                "expired",
            )
        prefix = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass")
        expected: list[bytes] = []
        seen_v1 = seen_valid_v1 = False
        for entry in signature.split():
            version, _, encoded = entry.partition(",")
            if version != "v1":
                continue  # v1a (ed25519) and future versions are not ours to check
            seen_v1 = True
            given = _b64decode(encoded)
            if given is None:
                continue
            seen_valid_v1 = True
            if not expected:  # compute lazily, once per secret
                for base in self._macs:
                    mac = base.copy()
                    mac.update(prefix)
                    mac.update(body)
                    expected.append(mac.digest())
            if any(hmac.compare_digest(given, digest) for digest in expected):
                return
        if not seen_v1:
            raise SignatureError("webhook-signature has no v1 signature", "malformed")
        if not seen_valid_v1:
            raise SignatureError(
                "malformed signature in header 'webhook-signature': expected 'v1,<base64>'",
                "malformed",
            )
        raise SignatureError("signature does not match the request body", "mismatch")


def sign_hmac_hex(secret: str, algorithm: str, body: bytes) -> str:
    """Return the hex HMAC of ``body`` keyed with the secret's UTF-8 bytes (GitHub style)."""
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    return hmac.new(secret.encode("utf-8"), body, getattr(hashlib, algorithm)).hexdigest()


def sign_standard_webhooks(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return a Standard Webhooks ``webhook-signature`` entry: ``"v1,<base64>"``."""
    key = _key_bytes(secret, STANDARD_WEBHOOKS)
    digest = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def generate_secret(scheme: str) -> str:
    """Return a new random secret: ``whsec_<base64 of 32 bytes>`` for Standard Webhooks,
    otherwise a URL-safe token (32 random bytes)."""
    if scheme == STANDARD_WEBHOOKS:
        return _WHSEC_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")
    return _secrets.token_urlsafe(32)
