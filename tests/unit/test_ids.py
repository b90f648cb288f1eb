"""The hot path's read-ahead UUIDs: valid version-4 ids, never repeated, not shared by a fork."""

from __future__ import annotations

import os
import uuid

import orjson
import pytest

from gateway.ingest import ids


def test_ids_are_version_4_rfc_uuids_that_round_trip_through_text() -> None:
    made = [ids.new_id() for _ in range(3 * ids.IDS_PER_READ + 5)]  # crosses several reads
    for value in made:
        assert isinstance(value, uuid.UUID)
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value
        assert uuid.UUID(hex=value.hex) == value
    assert len(set(made)) == len(made)


def test_every_bit_outside_version_and_variant_varies() -> None:
    """Random bits are random: forcing the version/variant bits must not clear their neighbours."""
    seen_or, seen_and = 0, (1 << 128) - 1
    for _ in range(2000):
        value = ids.new_id().int
        seen_or |= value
        seen_and &= value
    fixed = (0xF << 76) | (0x3 << 62)  # the version nibble and the two variant bits
    assert seen_or & ~fixed == ((1 << 128) - 1) & ~fixed  # every free bit was seen set
    assert seen_and & ~fixed == 0  # ... and seen clear
    assert (seen_or >> 76) & 0xF == 4 and (seen_and >> 76) & 0xF == 4
    assert (seen_or >> 62) & 0x3 == 2 and (seen_and >> 62) & 0x3 == 2


# Python 3.12+ warns when a process with threads forks; the child here only draws ids and exits.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_does_not_reuse_the_ids_its_parent_read_ahead() -> None:
    ids.new_id()  # the parent now holds ids it has read but not handed out
    assert ids._ready
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave without running pytest's teardown
        try:
            os.close(read)
            child = [ids.new_id().hex for _ in range(ids.IDS_PER_READ)]
            os.write(write, orjson.dumps(child))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ids = set(orjson.loads(pipe.read()))
    os.waitpid(pid, 0)
    parent_ids = {ids.new_id().hex for _ in range(ids.IDS_PER_READ)}
    assert len(child_ids) == ids.IDS_PER_READ
    assert not child_ids & parent_ids
