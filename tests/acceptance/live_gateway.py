"""A real ``gateway serve`` on a database given by DSN, for the schemathesis and fault tests:
start it, wait for its listeners, log in as the bootstrap admin, and stop it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.acceptance.lb_helpers import login_as
from tests.acceptance.process_helpers import GatewayProcess, free_port, write_config
from tests.conftest import _create_database, _drop_database, _dsn_with_database

ADMIN_EMAIL = "reliability@example.com"
ADMIN_PASSWORD = "reliability engineer passphrase"
STARTUP_TIMEOUT = 90.0


@contextmanager
def fresh_database(server_dsn: str, template: str) -> Iterator[str]:
    """A new database copied from the schema template; dropped afterwards. Yields its DSN."""
    name = f"hookgate_live_{uuid.uuid4().hex[:10]}"

    asyncio.run(_create_database(server_dsn, name, template))
    try:
        yield _dsn_with_database(server_dsn, name)
    finally:
        asyncio.run(_drop_database(server_dsn, name))


@dataclass
class LiveGateway:
    """A running ``gateway serve`` (one listener for both route tables)."""

    gateway: GatewayProcess
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_gateway(
    directory: Path,
    dsn: str,
    *,
    server: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    listening: int = 1,
) -> LiveGateway:
    """Start ``gateway serve`` on ``dsn`` with the admin bootstrapped; wait until ``listening``
    listeners (one per worker) are up, then log in."""
    port = free_port()
    config = write_config(
        directory / "config.toml",
        {
            "server": {
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "shutdown_timeout": 5.0,
                **(server or {}),
            },
            "log": {"format": "json"},
            **(sections or {}),
        },
    )
    process_env = {
        "GATEWAY_DATABASE_DSN": dsn,
        "GATEWAY_ADMIN_EMAIL": ADMIN_EMAIL,
        "GATEWAY_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **(env or {}),
    }
    gateway = GatewayProcess(config, env=process_env)
    try:
        seen = 0
        while seen < listening:
            gateway.wait_for(
                lambda e: e.get("event") == "listening" and e.get("port") == port,
                f"listener {seen + 1} of {listening}",
                STARTUP_TIMEOUT,
            )
            seen = len([e for e in gateway.named("listening") if e.get("port") == port])
        token = login_as(port, ADMIN_EMAIL, ADMIN_PASSWORD)
    except BaseException:
        gateway.kill()
        raise
    return LiveGateway(gateway, port, token)


def stop_gateway(live: LiveGateway, timeout: float = 60) -> int | None:
    """SIGTERM and wait (a graceful stop); kill it if it lingers. The exit code, if it exited."""
    process = live.gateway.process
    code = None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            code = live.gateway.finish(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    live.gateway.kill()
    return code
