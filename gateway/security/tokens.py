"""Opaque bearer tokens: random strings handed out once, stored only as SHA-256 hashes.

A token has 256 bits of entropy, so a fast hash is enough (no KDF needed) and the lookup is by
hash equality inside the database index — no string comparison of secrets in Python.
"""

from __future__ import annotations

import hashlib
import secrets

# Prefixes make leaked tokens recognisable by secret scanners and humans.
PREFIXES = {"access": "hga_", "refresh": "hgr_", "personal": "hgp_"}


def new_token(kind: str) -> str:
    """A fresh random token of the given kind."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """The digest stored for (and looked up by) a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check before touching the database."""
    return 20 <= len(value) <= 128 and value.isascii() and value.isprintable()
