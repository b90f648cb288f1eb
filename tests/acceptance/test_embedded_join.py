"""A command run beside `gateway serve` (`gateway migrate`, `user create`, `prune` ...) joins the
embedded server that serve started, and its log says so: an operator reading
`embedded_postgres_starting` would fear a second server on the same data directory."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.process_helpers import (
    GatewayProcess,
    free_port,
    private_data_dir,
    write_config,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    with private_data_dir(tmp_path) as path:
        yield path


def test_a_command_beside_serve_logs_that_it_joined(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": port, "shutdown_timeout": 5.0},
            "database": {"data_dir": str(data_dir)},
            "log": {"format": "json"},
        },
    )
    serve = GatewayProcess(config)
    try:
        postmaster = serve.wait_event("embedded_postgres_started")["pid"]
        serve.wait_event("listening", port=port)

        migrate = GatewayProcess(config, args=("migrate",))
        try:
            assert migrate.finish() == 0, migrate.output
        finally:
            migrate.kill()
        assert not migrate.named("embedded_postgres_starting")
        assert not migrate.named("embedded_postgres_started")
        [joined] = migrate.named("embedded_postgres_joined")
        assert joined["pid"] == postmaster and joined["data_dir"] == str(data_dir)
        assert migrate.named("embedded_postgres_left_running")

        serve.process.send_signal(signal.SIGTERM)
        assert serve.finish() == 0, serve.output
    finally:
        serve.kill()
