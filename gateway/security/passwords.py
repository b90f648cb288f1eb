"""Password hashing with Argon2id (memory-hard), via argon2-cffi.

A hash or a check costs ~0.1 to 0.5 s of CPU and 64 MiB. The request handlers therefore run them
on a small pool of threads (argon2 releases the GIL), never on the event loop, which the ingest
route shares: an unauthenticated login flood must not stall webhook ingestion. At most
``MAX_WAITING`` of them wait for a thread per process; past that, :class:`Overloaded`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.exceptions import Overloaded

# argon2-cffi's defaults follow RFC 9106's second recommended option (64 MiB, t=3, p=4).
_hasher = PasswordHasher()

# A real hash, so that a login for an unknown email costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("hookgate-timing-equaliser")

HASHING_THREADS = 2  # at most this many hashes at once per process (64 MiB each)
MAX_WAITING = 32  # hashes queued or running per process before Overloaded
_HASHING = ThreadPoolExecutor(max_workers=HASHING_THREADS, thread_name_prefix="password-hash")
_in_flight = 0  # touched only from event-loop threads, between awaits

T = TypeVar("T")


def hash_password(password: str) -> str:
    """Hash a password for storage (blocking: see :func:`hash_password_in_thread`)."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check a password in constant time; ``None`` hash still spends the full cost (blocking:
    see :func:`verify_password_in_thread`)."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(stored_hash)


async def hash_password_in_thread(password: str) -> str:
    """:func:`hash_password` on the hashing threads; Overloaded when too many are waiting."""
    return await _in_thread(hash_password, password)


async def verify_password_in_thread(stored_hash: str | None, password: str) -> bool:
    """:func:`verify_password` on the hashing threads; Overloaded when too many are waiting."""
    return await _in_thread(verify_password, stored_hash, password)


async def _in_thread(function: Callable[..., T], *args: object) -> T:
    global _in_flight
    if _in_flight >= MAX_WAITING:
        raise Overloaded("too many password checks are in progress; retry shortly")
    _in_flight += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_HASHING, function, *args)
    finally:
        _in_flight -= 1
