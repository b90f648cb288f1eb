"""SIGTERM while the gateway is still starting (a database slow to answer, the embedded
PostgreSQL initialising, the schema lock held by another instance).

The first signal cancels the start at once (nothing is in flight yet): ``stopped_while_starting``,
exit status 0, the pool and the embedded server closed; a connect or a lock wait used to run to
its timeout first. A second signal forces the stop as it does later: the ``stopped`` event with
``forced``, exit status 1. A supervisor (``[server] workers = 2``) used to end in an unhandled
CancelledError traceback there, and a stop forced while the embedded server started left it
running.

Real ``gateway`` subprocesses; the slow database is a loopback listener that accepts and never
answers, and the schema lock is held from the test.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.process_helpers import (
    BOOTSTRAPS,
    GatewayProcess,
    embedded_gateway,
    free_port,
    private_data_dir,
    send_twice,
    write_config,
)

EXIT_WITHIN = 30.0


def _assert_stopped_while_starting(gateway: GatewayProcess) -> None:
    # Well before the 120 s connect or lock timeouts the tests configure: the start was cancelled.
    code = gateway.finish(EXIT_WITHIN)
    assert "Traceback" not in gateway.output, gateway.output
    assert code == 0, gateway.output
    [stopped] = gateway.named("stopped_while_starting")
    assert stopped["signal"] == "SIGTERM" and not gateway.named("stop_forced")
    assert not gateway.named("listening") and not gateway.named("supervisor_started")


def _assert_forced_stop(gateway: GatewayProcess) -> None:
    code = gateway.finish(EXIT_WITHIN)
    assert "Traceback" not in gateway.output, gateway.output
    assert code == 1, gateway.output
    assert [e["signal"] for e in gateway.named("stop_forced")] == ["SIGTERM"]
    [stopped] = gateway.named("stopped")
    assert stopped["forced"] is True and stopped["level"] == "warning"


@pytest.fixture
def silent_database() -> Iterator[tuple[socket.socket, int]]:
    """A loopback listener that accepts connections and never answers: a connect waits."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener, listener.getsockname()[1]


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
def test_a_sigterm_while_connecting_stops_at_once(
    tmp_path: Path,
    silent_database: tuple[socket.socket, int],
    args: tuple[str, ...],
    workers: int,
) -> None:
    listener, db_port = silent_database
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": free_port(), "workers": workers},
            "database": {
                "dsn": f"postgresql://postgres@127.0.0.1:{db_port}/hookgate",
                "connect_timeout": 120.0,
            },
            "log": {"format": "json"},
        },
    )
    gateway = GatewayProcess(config, args=args)
    try:
        listener.settimeout(60)
        connection, _ = listener.accept()  # the bootstrap is waiting for the database
        with closing(connection):
            gateway.process.send_signal(signal.SIGTERM)
            _assert_stopped_while_starting(gateway)
    finally:
        gateway.kill()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    with private_data_dir(tmp_path) as path:
        yield path


def test_a_sigterm_while_the_embedded_server_starts_stops_it_too(
    tmp_path: Path, data_dir: Path
) -> None:
    gateway = embedded_gateway(tmp_path, data_dir)
    try:
        gateway.wait_event("embedded_postgres_starting", initialise=True)
        gateway.process.send_signal(signal.SIGTERM)
        _assert_stopped_while_starting(gateway)
        names = [e.get("event") for e in gateway.events]
        # The signal came while initdb ran; the start was let finish, then the server stopped.
        assert names.index("stop_while_starting") < names.index("embedded_postgres_started")
        assert names.index("embedded_postgres_stopped") < names.index("stopped_while_starting")
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        gateway.kill()


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
def test_a_second_sigterm_while_the_embedded_server_starts_forces_the_stop(
    tmp_path: Path, data_dir: Path, args: tuple[str, ...], workers: int
) -> None:
    gateway = embedded_gateway(tmp_path, data_dir, args, workers)
    try:
        gateway.wait_event("embedded_postgres_starting", initialise=True)
        send_twice(gateway.process)
        _assert_forced_stop(gateway)
        names = [e.get("event") for e in gateway.events]
        # Forced while initdb ran; the start was let finish, then the server stopped.
        assert names.index("stop_forced") < names.index("embedded_postgres_started"), names
        assert gateway.named("embedded_postgres_stopped"), gateway.output
        assert names.index("embedded_postgres_stopped") < names.index("stopped"), names
        assert not (data_dir / "postmaster.pid").exists()
        assert not gateway.named("supervisor_started") and not gateway.named("listening")
    finally:
        gateway.kill()


SCHEMA_LOCK = 7283917  # queries.sql, schema_lock


@pytest.fixture
async def schema_locked(database_dsn: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """The database, with its schema lock held (as by another instance applying the schema)."""
    holder = await asyncpg.connect(database_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
        yield database_dsn, holder
    finally:
        await holder.close()


async def test_a_sigterm_while_waiting_for_the_schema_lock_stops_at_once(
    tmp_path: Path, schema_locked: tuple[str, asyncpg.Connection]
) -> None:
    dsn, holder = schema_locked
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": free_port(), "workers": 2},
            "database": {"dsn": dsn, "command_timeout": 120.0},
            "log": {"format": "json"},
        },
    )
    gateway = GatewayProcess(config)
    try:
        await _until_waiting_for_the_lock(holder)
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_assert_stopped_while_starting, gateway)
        assert not gateway.named("schema_applied") and not gateway.named("schema_current")
        # Its bootstrap connection is closed, not left waiting for the lock (the server may
        # take a moment to see it gone).
        deadline = time.monotonic() + 10
        while await _waiting_for_the_lock(holder):
            assert time.monotonic() < deadline, "the bootstrap connection still waits"
            await asyncio.sleep(0.05)
    finally:
        gateway.kill()


async def _waiting_for_the_lock(holder: asyncpg.Connection) -> int:
    """Requests for the schema lock waiting in the holder's database (advisory locks are per
    database: tests on other databases of the server, e.g. other xdist workers, do not count)."""
    count: int = await holder.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        SCHEMA_LOCK,
    )
    return count


async def _until_waiting_for_the_lock(holder: asyncpg.Connection) -> None:
    deadline = time.monotonic() + 90
    while not await _waiting_for_the_lock(holder):
        assert time.monotonic() < deadline, "the gateway never asked for the schema lock"
        await asyncio.sleep(0.05)
