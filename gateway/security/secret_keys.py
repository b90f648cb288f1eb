"""Keys that encrypt hook secrets at rest: parsing, generation and the zero-config key file.

A key is written as one line ``key_id:base64`` (32 random bytes, standard or URL-safe base64,
padding optional); key ids are 1-32 of ``[A-Za-z0-9_-]`` and appear in every ciphertext, so
a value names the key that can open it. The first key encrypts; every key decrypts.

Where keys come from (:func:`load_keys`): ``[security] secret_keys`` (or
``GATEWAY_SECURITY_SECRET_KEYS``, comma- or newline-separated, ``#`` lines skipped, so a key
file's text works) when set; otherwise ``[security] key_file``, created with one fresh key on
first start. Why a generated file rather than plaintext by
default: a database dump, backup or replica must not hand out every hook secret (which would
let its holder forge signed webhooks), and that needs no operator action when the key lives
outside the database. The file is created atomically (written, then hard-linked into place), so
workers starting at once all end up with the same key. When ``secret_keys`` is set, the keys of
an existing key file are still loaded as decrypt-only keys, so moving from the generated key to
configured keys keeps old rows readable until ``gateway keys rotate`` re-encrypts them.

Nothing here ever puts key material into a message, an exception or a repr.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KEY_BYTES = 32  # AES-256
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_FILE_HEADER = (
    "# hookgate secret keys: 'key_id:base64' per line, the first one encrypts.\n"
    "# Generated on first start. Back this file up apart from the database: without it the\n"
    "# hook secrets stored in the database cannot be read.\n"
)


@dataclass(frozen=True, slots=True)
class SecretKey:
    """One key: its id (public, stored in ciphertexts) and its 32 bytes (never shown)."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys in force: ``keys[0]`` encrypts (none: encryption is off); ``origin`` says from
    where (``config``, ``file``, ``generated`` or ``none``) for the start-up log line;
    ``path`` the key file read, also beside ``config`` when an existing file added its keys."""

    keys: tuple[SecretKey, ...]
    origin: str
    path: str | None = None

    @property
    def primary(self) -> str | None:
        """The id of the key that encrypts, or None when there is none."""
        return self.keys[0].key_id if self.keys else None


def parse_key_line(line: str) -> SecretKey:
    """``key_id:base64`` → SecretKey; ValueError naming the problem (never the key material)."""
    key_id, sep, encoded = line.strip().partition(":")
    if not sep:
        raise ValueError("must look like 'key_id:base64-of-32-bytes'")
    if not KEY_ID_RE.fullmatch(key_id):
        raise ValueError("the key id must be 1-32 letters, digits, '_' or '-'")
    encoded = encoded.strip()
    key = None
    if _B64_RE.fullmatch(encoded):
        text = encoded.rstrip("=").replace("-", "+").replace("_", "/")
        with contextlib.suppress(binascii.Error, ValueError):
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    if key is None:
        raise ValueError(f"key {key_id!r}: the key is not valid base64")
    if len(key) != KEY_BYTES:
        raise ValueError(f"key {key_id!r}: must decode to {KEY_BYTES} bytes, got {len(key)}")
    return SecretKey(key_id, key)


def parse_key_lines(lines: Iterable[str], where: str = "keys") -> tuple[SecretKey, ...]:
    """Every key line (blank lines and ``#`` comments skipped); ValueError on the first
    problem, naming its position in ``where``."""
    keys: list[SecretKey] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = parse_key_line(line)
        except ValueError as exc:
            raise ValueError(f"{where} entry {number}: {exc}") from None
        if key.key_id in seen:
            raise ValueError(f"{where} entry {number}: key id {key.key_id!r} appears twice")
        seen.add(key.key_id)
        keys.append(key)
    return tuple(keys)


def key_line_problems(lines: Sequence[str], where: str) -> list[str]:
    """Config validation: one message per bad entry (empty list when all are valid)."""
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        try:
            key = parse_key_line(line)
        except ValueError as exc:
            problems.append(f"{where} entry {number} is invalid: {exc}")
            continue
        if key.key_id in seen:
            problems.append(f"{where} entry {number}: key id {key.key_id!r} appears twice")
        seen.add(key.key_id)
    return problems


def new_key_id() -> str:
    """A fresh key id: the date plus random hex, so ids sort by age and never collide."""
    return time.strftime("%Y%m%d", time.gmtime()) + "-" + secrets.token_hex(3)


def new_key_line(key_id: str | None = None) -> str:
    """A new ``key_id:base64`` line with 32 random bytes (``gateway keys generate``)."""
    key_id = key_id or new_key_id()
    if not KEY_ID_RE.fullmatch(key_id):
        raise ValueError("the key id must be 1-32 letters, digits, '_' or '-'")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode('ascii')}"


def read_key_file(path: Path) -> tuple[SecretKey, ...]:
    """The keys in a key file; ValueError when it holds none or a bad line, or cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"security.key_file {str(path)!r} cannot be read: {reason}") from exc
    keys = parse_key_lines(text.splitlines(), str(path))
    if not keys:
        raise ValueError(f"{path}: holds no key")
    return keys


def ensure_key_file(path: Path) -> tuple[tuple[SecretKey, ...], bool]:
    """The key file's keys, creating it with one new key first if it does not exist.

    Returns ``(keys, created)``. Safe when several processes start at once: the file appears
    complete or not at all (a hard link of a fully written temporary file), and whoever loses
    the race reads the winner's key.
    """
    if path.exists():
        return read_key_file(path), False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:  # a read-only directory, a parent that is a file ...
        raise ValueError(
            f"security.key_file {str(path)!r} cannot be created: {exc.strerror} (make its "
            "directory writable, point key_file elsewhere, or set security.secret_keys)"
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_FILE_HEADER + new_key_line() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return read_key_file(path), created


def load_keys(
    secret_keys: Sequence[str],
    key_file: str,
    *,
    create_file: bool = True,
    missing_file_error: str | None = None,
) -> KeySet:
    """The keys in force for ``[security]`` (see the module docstring); ValueError on bad input.

    ``create_file=False`` (inspection commands) never creates the key file.
    ``missing_file_error``: when the key file is needed (no ``secret_keys``) but does not
    exist, raise ValueError with this message instead of creating it (or running without).
    """
    path = Path(key_file).expanduser() if key_file.strip() else None
    if secret_keys:
        keys = parse_key_lines(secret_keys, "security.secret_keys")
        if path is None or not path.exists():
            return KeySet(keys, "config")
        known = {key.key_id: key for key in keys}
        in_file = read_key_file(path)
        for key in in_file:
            if key.key_id in known and known[key.key_id].key != key.key:
                raise ValueError(
                    f"security.secret_keys and the key file {str(path)!r} both have a key "
                    f"{key.key_id!r}, with different material: secrets sealed with the file's "
                    "could no longer be opened (give the configured key another id)"
                )
        keys += tuple(k for k in in_file if k.key_id not in known)
        return KeySet(keys, "config", str(path))  # the path: the file's keys are in force too
    if path is not None and missing_file_error is not None and not path.exists():
        raise ValueError(missing_file_error)
    if path is None or (not create_file and not path.exists()):
        return KeySet((), "none")
    keys, created = ensure_key_file(path)
    return KeySet(keys, "generated" if created else "file", str(path))


def loose_permissions(path: Path) -> bool:
    """True when group or others may read the key file (worth a warning)."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False
