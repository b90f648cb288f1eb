"""Random (version 4) UUIDs for the hot path: two per accepted request (its history row, its run).

``uuid.uuid4()`` makes a ``getrandom`` system call and builds the UUID in Python: about 1.6 µs
alone, and several times that under load. Here the operating system's random bytes are read 256
ids at a time and each id is asyncpg's C UUID, a ``uuid.UUID`` subclass that asyncpg also encodes
without a conversion. The bytes are as random as ``uuid4()``'s (both come from ``os.urandom``);
a forked child drops the ids its parent had read ahead, so two processes never share one.

``asyncpg.pgproto.pgproto.UUID`` is asyncpg's own module, not its documented API: asyncpg is
pinned, and tests/unit/test_ids.py checks the type still behaves as a ``uuid.UUID``. Time-ordered
ids (UUIDv7, see SCALING.md) would have to be stamped when handed out, not when read ahead.
"""

from __future__ import annotations

import os
import uuid

from asyncpg.pgproto.pgproto import UUID as _FastUUID

IDS_PER_READ = 256

_ready: list[uuid.UUID] = []


def new_id() -> uuid.UUID:
    """A new random (version 4, RFC 9562 variant) UUID."""
    try:
        return _ready.pop()
    except IndexError:
        _ready.extend(_read_ahead(IDS_PER_READ))
        return _ready.pop()


def _read_ahead(count: int) -> list[uuid.UUID]:
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # variant 10xx (RFC 9562)
    return [_FastUUID(bytes(raw[i : i + 16])) for i in range(0, len(raw), 16)]


os.register_at_fork(after_in_child=_ready.clear)
