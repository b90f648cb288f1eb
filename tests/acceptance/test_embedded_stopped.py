"""The embedded PostgreSQL dies behind the gateway's back (an OOM kill, someone's ``pg_ctl
stop``): the process that started it stops gracefully with status 1, so that its supervisor or
orchestrator restarts it, instead of answering /healthz 200 and everything else 503 for ever.

Real ``gateway`` subprocesses on a real embedded server (run as ``embedded_postgres`` when the
tests run as root), in a data directory under a private (0700) parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.storage.embedded import SYSTEM_USER, import_wheel
from tests.acceptance.process_helpers import (
    GatewayProcess,
    free_port,
    http_status,
    private_data_dir,
    process_alive,
    write_config,
)

# The watch polls every second; the stop then has nothing in flight to wait for.
EXIT_WITHIN = 30.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    with private_data_dir(tmp_path) as path:
        yield path


def _config(tmp_path: Path, data_dir: Path, **server: Any) -> tuple[Path, int]:
    port = free_port()
    path = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": port, "shutdown_timeout": 5.0, **server},
            "database": {"data_dir": str(data_dir)},
            "log": {"format": "json"},
        },
    )
    return path, port


def _pg_ctl_stop_immediate(data_dir: Path) -> None:
    """``pg_ctl stop -m immediate`` as the server's own user, as an operator would."""
    user = SYSTEM_USER if os.geteuid() == 0 else None
    import_wheel().pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir, user=user, timeout=60)


def _exits_for_the_lost_database(gateway: GatewayProcess, data_dir: Path, postmaster: int) -> None:
    try:
        code = gateway.process.wait(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        tail = "\n".join(line[:200].rstrip() for line in gateway.raw_lines[-10:])
        raise AssertionError(
            f"still running {EXIT_WITHIN}s after the database died:\n{tail}"
        ) from None
    gateway.finish()
    assert code == 1, gateway.output
    [stopped] = gateway.named("embedded_database_stopped")
    assert stopped["level"] == "error"
    assert stopped["data_dir"] == str(data_dir) and stopped["pid"] == postmaster
    assert stopped["log_file"] == str(data_dir / "log")
    # Nothing tried to stop a server that was gone; the reason is the last line on stderr.
    assert not gateway.named("embedded_postgres_stop_failed")
    assert f"gateway: the embedded PostgreSQL in {data_dir} stopped" in gateway.raw_lines[-1]


def test_serve_exits_1_when_the_postmaster_is_killed_and_a_restart_recovers(
    tmp_path: Path, data_dir: Path
) -> None:
    config, port = _config(tmp_path, data_dir)
    gateway = GatewayProcess(config)
    try:
        postmaster = gateway.wait_event("embedded_postgres_started")["pid"]
        gateway.wait_event("listening", port=port)
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200

        os.kill(postmaster, signal.SIGKILL)  # as the kernel's OOM killer does

        _exits_for_the_lost_database(gateway, data_dir, postmaster)
        assert gateway.named("shutting_down")  # the listeners were closed gracefully
        with pytest.raises(urllib.error.URLError):  # the liveness probe fails now
            http_status(f"http://127.0.0.1:{port}/healthz")
    finally:
        gateway.kill()

    # What the orchestrator then does: start it again, on the same data.
    again = GatewayProcess(config)
    try:
        restarted = again.wait_event("embedded_postgres_started")["pid"]
        again.wait_event("listening", port=port)
        assert restarted != postmaster
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 200
        again.process.send_signal(signal.SIGTERM)
        assert again.finish() == 0
    finally:
        again.kill()


def test_the_supervisor_stops_its_workers_and_exits_1_after_a_pg_ctl_stop(
    tmp_path: Path, data_dir: Path
) -> None:
    config, port = _config(tmp_path, data_dir, workers=2)
    gateway = GatewayProcess(config)
    try:
        postmaster = gateway.wait_event("embedded_postgres_started")["pid"]
        workers = [gateway.wait_event("worker_started", worker=i)["pid"] for i in range(2)]
        for i in range(2):
            gateway.wait_event("listening", worker=i)
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 200

        _pg_ctl_stop_immediate(data_dir)

        _exits_for_the_lost_database(gateway, data_dir, postmaster)
        stopped = {e["pid"] for e in gateway.named("worker_stopped")}
        assert stopped == set(workers)
        assert not any(process_alive(pid) for pid in workers)
        with pytest.raises(urllib.error.URLError):
            http_status(f"http://127.0.0.1:{port}/healthz")
    finally:
        gateway.kill()


def test_dispatch_exits_1_when_its_embedded_server_is_killed(
    tmp_path: Path, data_dir: Path
) -> None:
    config, _ = _config(tmp_path, data_dir)
    gateway = GatewayProcess(config, ("dispatch",))
    try:
        postmaster = gateway.wait_event("embedded_postgres_started")["pid"]
        gateway.wait_event("dispatcher_started")

        os.kill(postmaster, signal.SIGKILL)

        _exits_for_the_lost_database(gateway, data_dir, postmaster)
    finally:
        gateway.kill()
