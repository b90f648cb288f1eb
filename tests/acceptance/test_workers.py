"""`gateway serve` with `[server] workers = 2`: a supervisor, two workers on one port.

Real CLI subprocess on a fresh embedded PostgreSQL (started once, by the parent), real HTTP on
loopback, real signals. The supervisor's JSON log lines tell which pids are its workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.process_helpers import (
    ROOT,
    STARTUP_TIMEOUT,
    Event,
    GatewayProcess,
    free_port,
    http_status,
    parent_of,
    process_alive,
)


class Gateway(GatewayProcess):
    """``gateway serve`` on a config file, its JSON log events collected (GatewayProcess), with
    this module's start-up timeout by default."""

    def wait_for(
        self, predicate: Callable[[Event], bool], what: str, timeout: float = STARTUP_TIMEOUT
    ) -> Event:
        return super().wait_for(predicate, what, timeout)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = ROOT / "var" / f"test-workers-{uuid.uuid4().hex[:8]}"
    yield path / "pgdata"
    if (path / "pgdata" / "postmaster.pid").exists():  # the test failed before a clean stop
        from gateway.storage.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(path / "pgdata")
        server.start()
        server.stop()
    shutil.rmtree(path, ignore_errors=True)


def test_two_workers_restart_after_kill_and_stop_cleanly(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"[server]\nport = {port}\nworkers = 2\nshutdown_timeout = 5.0\n"
        f'[database]\ndata_dir = "{data_dir}"\n[log]\nformat = "json"\n'
    )
    gateway = Gateway(config)
    try:
        started = [
            gateway.wait_for(
                lambda e, i=i: e.get("event") == "worker_started" and e.get("worker") == i,
                f"worker {i} start",
            )
            for i in range(2)
        ]
        for i in range(2):
            gateway.wait_for(
                lambda e, i=i: e.get("event") == "listening" and e.get("worker") == i,
                f"worker {i} listening",
            )
        pids = [e["pid"] for e in started]
        parent = gateway.process.pid
        assert len(set(pids)) == 2 and parent not in pids
        assert all(parent_of(pid) == parent for pid in pids)
        # The embedded server is started once, by the parent.
        assert len(gateway.named("embedded_postgres_started")) == 1
        assert all(http_status(f"http://127.0.0.1:{port}/readyz") == 200 for _ in range(10))

        victim, survivor = pids
        os.kill(victim, signal.SIGKILL)
        exited = gateway.wait_for(
            lambda e: e.get("event") == "worker_exited" and e.get("pid") == victim, "worker_exited"
        )
        assert exited["exit_code"] == -signal.SIGKILL and exited["signal"] == "SIGKILL"
        restarted = gateway.wait_for(
            lambda e: e.get("event") == "worker_restarted" and e.get("previous") == victim,
            "worker_restarted",
        )
        replacement = restarted["pid"]
        assert replacement not in pids and parent_of(replacement) == parent
        assert not process_alive(victim)
        gateway.wait_for(
            lambda e: (
                e.get("event") == "listening"
                and e.get("worker") == restarted["worker"]
                and gateway.events.index(e) > gateway.events.index(restarted)
            ),
            "replacement listening",
        )
        assert all(http_status(f"http://127.0.0.1:{port}/readyz") == 200 for _ in range(20))

        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=60) == 0
        gateway._reader.join(timeout=10)
        stopped = {e["pid"]: e["exit_code"] for e in gateway.named("worker_stopped")}
        assert stopped == {survivor: 0, replacement: 0}
        assert not process_alive(survivor) and not process_alive(replacement)
        assert gateway.named("embedded_postgres_stopped")
    finally:
        gateway.kill()


def test_a_sigterm_while_the_embedded_server_starts_stops_it_too(
    tmp_path: Path, data_dir: Path
) -> None:
    """`systemctl stop` right after `start`, while the supervisor is still starting the embedded
    PostgreSQL: it stops cleanly there (no workers), and stops that server too instead of dying
    and leaving it running."""
    config = tmp_path / "config.toml"
    config.write_text(
        f"[server]\nport = {free_port()}\nworkers = 2\n"
        f'[database]\ndata_dir = "{data_dir}"\n[log]\nformat = "json"\n'
    )
    gateway = Gateway(config)
    try:
        gateway.wait_for(lambda e: e.get("event") == "embedded_postgres_starting", "embedded")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        gateway.kill()
    assert gateway.named("stopped_while_starting")
    assert not gateway.named("worker_started")
    assert not (data_dir / "postmaster.pid").exists()  # the embedded server was stopped
