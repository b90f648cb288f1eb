"""A start that fails exits non-zero even when a stop signal arrives while it cleans up.

A failed start (a key file missing, a database that refuses, the schema) closes its pool and
stops the embedded PostgreSQL before the process exits, which can take seconds. A SIGTERM then
used to cancel that clean-up as it cancels a start still under way, and the process exited 0,
``stopped_while_starting``: systemd, Docker and Kubernetes saw a clean stop instead of a failed
start. Now the signal is logged (``stop_while_failing``), the clean-up finishes, and the exit
status is the failure's; a stop during a start that does not fail still exits 0
(test_forced_stop_at_start).

The same for an embedded server whose start fails after a SIGTERM came: its start runs on a
thread that the stop lets finish, and a failure there used to be dropped for the stop's 0.

Real ``gateway`` subprocesses. The clean-up is held open deterministically: the pool's goodbye
(the Terminate message) waits in a proxy until the test has seen the signal taken, and the
embedded server's stop waits while its postmaster is stopped (SIGSTOP) until then; the embedded
server's initdb is stopped the same way, then killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.storage.database import Database
from gateway.storage.embedded import EmbeddedPostgres
from tests.acceptance.db_gate import GoodbyeGate
from tests.acceptance.process_helpers import (
    BOOTSTRAPS,
    GatewayProcess,
    embedded_gateway,
    free_port,
    pending_signals,
    private_data_dir,
    process_alive,
    send_twice,
    write_config,
)

EXIT_WITHIN = 60.0
# No keys and no key file, which may not be created: start-up refuses once it has connected.
NO_KEYS = {"GATEWAY_SECURITY_SECRET_KEYS": None}


def _without_keys(tmp_path: Path) -> dict[str, object]:
    return {"key_file": str(tmp_path / "absent" / "keys"), "create_key_file": False}


def _signal_taken(gateway: GatewayProcess) -> None:
    """Wait until the gateway has logged taking the SIGTERM (whatever it made of it)."""
    gateway.wait_for(lambda e: e.get("signal") == "SIGTERM", "the SIGTERM taken", EXIT_WITHIN)


def _assert_failed_start(gateway: GatewayProcess, tmp_path: Path, *, forced: bool = False) -> None:
    code = gateway.finish(EXIT_WITHIN)
    assert "Traceback" not in gateway.output, gateway.output
    assert code == 2, gateway.output  # a configuration error's status, as without the signal
    assert f"gateway: security.key_file '{tmp_path / 'absent' / 'keys'}' does not exist" in (
        gateway.output
    )
    [taken] = gateway.named("stop_while_failing")
    assert taken["signal"] == "SIGTERM", gateway.output
    assert not gateway.named("stopped_while_starting")
    assert len(gateway.named("stop_forced")) == forced, gateway.output


@contextmanager
def _signalled_during_clean_up(
    tmp_path: Path, server_dsn: str, args: tuple[str, ...], workers: int
) -> Iterator[tuple[GoodbyeGate, GatewayProcess]]:
    """A gateway whose start failed (no keys), sent a SIGTERM (and seen taking it) while its
    clean-up waits for the server to end a connection of its pool, until the gate opens."""
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": free_port(), "workers": workers},
            "security": _without_keys(tmp_path),
            "log": {"format": "json"},
        },
    )
    with GoodbyeGate(server_dsn) as proxy:
        env = {**NO_KEYS, "GATEWAY_DATABASE_DSN": proxy.dsn}
        gateway = GatewayProcess(config, args=args, env=env)
        try:
            assert proxy.goodbye.wait(EXIT_WITHIN), gateway.output
            gateway.process.send_signal(signal.SIGTERM)
            _signal_taken(gateway)
            yield proxy, gateway
        finally:
            gateway.kill()


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
def test_a_sigterm_while_a_failed_start_closes_its_pool_keeps_the_failure(
    tmp_path: Path, server_dsn: str, args: tuple[str, ...], workers: int
) -> None:
    with _signalled_during_clean_up(tmp_path, server_dsn, args, workers) as (proxy, gateway):
        proxy.gate.set()
        _assert_failed_start(gateway, tmp_path)


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
def test_a_second_sigterm_forces_the_clean_up_and_keeps_the_failure(
    tmp_path: Path, server_dsn: str, args: tuple[str, ...], workers: int
) -> None:
    """The second signal forces the stop as it does after any first one (the clean-up is
    cancelled: the connection is never let go here), and the status is still the failure's."""
    with _signalled_during_clean_up(tmp_path, server_dsn, args, workers) as (_, gateway):
        gateway.process.send_signal(signal.SIGTERM)
        _assert_failed_start(gateway, tmp_path, forced=True)
        [stopped] = gateway.named("stopped")
        assert stopped["forced"] is True, gateway.output
        # The supervisor's line names no exit status but the one it exits with (not a forced
        # stop's 1).
        assert stopped.get("exit_code") in (None, 2), gateway.output


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    with private_data_dir(tmp_path) as path:
        yield path


@dataclass
class _OnHold:
    gateway: GatewayProcess
    holder: asyncpg.Connection  # holds the lock on incoming_hooks
    waiting: int  # the backend of the gateway that waits for it
    postmaster: int  # stopped (SIGSTOP) until the test leaves the block


@asynccontextmanager
async def _start_on_hold(
    tmp_path: Path,
    data_dir: Path,
    args: Sequence[str],
    workers: int,
    server: Mapping[str, Any] | None = None,
) -> AsyncIterator[_OnHold]:
    """A gateway on an embedded server, whose start waits for a lock the test holds, with the
    postmaster stopped meanwhile: a stop of the server then waits until the block is left.

    The server is started here first, with the schema, and incoming_hooks locked: the gateway
    joins it and, once the test has let its own handle go, is the last user that stops it."""
    embedded = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    postmaster = embedded.pid
    assert postmaster is not None
    db = await Database.connect(dsn)
    await db.apply_schema()
    await db.close()
    holder = await asyncpg.connect(dsn)
    await holder.execute("BEGIN; LOCK TABLE incoming_hooks IN ACCESS EXCLUSIVE MODE")
    gateway = embedded_gateway(tmp_path, data_dir, args, workers, server, command_timeout=120.0)
    try:
        await asyncio.to_thread(gateway.wait_event, "embedded_postgres_joined")
        embedded.stop()  # the test's handle: the gateway's is the last one now
        waiting = await _until_waiting_for(holder, "incoming_hooks")
        os.kill(postmaster, signal.SIGSTOP)
        try:
            yield _OnHold(gateway, holder, waiting, postmaster)
        finally:
            os.kill(postmaster, signal.SIGCONT)
        await asyncio.to_thread(gateway.finish, EXIT_WITHIN)
        assert "Traceback" not in gateway.output, gateway.output
        # The clean-up finished: the server stopped, nothing left running.
        assert gateway.named("embedded_postgres_stopped"), gateway.output
        assert not process_alive(postmaster)
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        gateway.kill()
        holder.terminate()


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
async def test_a_sigterm_while_a_failed_start_stops_the_embedded_server_keeps_the_failure(
    tmp_path: Path, data_dir: Path, args: tuple[str, ...], workers: int
) -> None:
    """The failed start's clean-up is the embedded server's stop: it still finishes (no
    postmaster left running) and the exit status is the failure's."""
    async with _start_on_hold(tmp_path, data_dir, args, workers) as held:
        # The start fails (its statement cancelled) and stops the server: pg_ctl's request
        # (SIGINT, a fast shutdown) waits for the stopped postmaster.
        await held.holder.execute("SELECT pg_cancel_backend($1)", held.waiting)
        await _until_pending(held.postmaster, signal.SIGINT)
        held.gateway.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_signal_taken, held.gateway)
    gateway = held.gateway
    assert gateway.process.returncode == 1, gateway.output  # an outage's, as without the signal
    assert "canceling statement due to user request" in gateway.output
    [taken] = gateway.named("stop_while_failing")
    assert taken["signal"] == "SIGTERM", gateway.output
    assert not gateway.named("stopped_while_starting") and not gateway.named("stop_forced")


async def test_a_forced_stop_after_the_supervisors_address_check_failed_keeps_its_status(
    tmp_path: Path, data_dir: Path
) -> None:
    """With workers, the listening address is checked once the bootstrap is done: an address
    of no interface of this host is a configuration error (2), and a stop forced while the
    embedded server then stops keeps that status (it was 1, a forced stop's)."""
    server = {"host": "192.0.2.1"}
    async with _start_on_hold(tmp_path, data_dir, ("serve",), 2, server) as held:
        await held.holder.execute("COMMIT")  # the bootstrap goes on, and fails at the check
        await _until_pending(held.postmaster, signal.SIGINT)
        await asyncio.to_thread(send_twice, held.gateway.process)
        await asyncio.to_thread(held.gateway.wait_event, "stop_forced", signal="SIGTERM")
    gateway = held.gateway
    assert gateway.process.returncode == 2, gateway.output
    assert "gateway: cannot listen on 192.0.2.1:" in gateway.output
    [stopped] = gateway.named("stopped")
    assert stopped["forced"] is True, gateway.output
    assert stopped.get("exit_code") in (None, 2), gateway.output  # not a forced stop's 1
    assert not gateway.named("worker_started")


async def _until_waiting_for(holder: asyncpg.Connection, table: str) -> int:
    """The pid of the backend that waits for a lock on ``table``."""
    deadline = time.monotonic() + 90
    while True:
        pid: int | None = await holder.fetchval(
            "SELECT pid FROM pg_locks WHERE relation = $1::regclass AND NOT granted", table
        )
        if pid is not None:
            return pid
        assert time.monotonic() < deadline, f"nothing waited for a lock on {table}"
        await asyncio.sleep(0.05)


async def _until_pending(pid: int, sig: signal.Signals) -> None:
    deadline = time.monotonic() + 90
    while not pending_signals(pid) & (1 << (sig - 1)):
        assert time.monotonic() < deadline, f"no {sig.name} was sent to {pid}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("args", "workers"), BOOTSTRAPS)
def test_an_embedded_server_that_fails_to_start_after_a_sigterm_keeps_the_failure(
    tmp_path: Path, data_dir: Path, args: tuple[str, ...], workers: int
) -> None:
    """A SIGTERM while the embedded server starts lets its start end (it runs on a thread,
    which a stop does not interrupt); when that start fails, the failure is the outcome."""
    gateway = embedded_gateway(tmp_path, data_dir, args, workers)
    try:
        initdb = _child_named(gateway.process.pid, "initdb")
        os.kill(initdb, signal.SIGSTOP)  # the start waits until the test has signalled
        gateway.process.send_signal(signal.SIGTERM)
        gateway.wait_event("stop_while_starting", signal="SIGTERM")
        os.kill(initdb, signal.SIGKILL)  # and fails
        code = gateway.finish(EXIT_WITHIN)
        assert "Traceback" not in gateway.output, gateway.output
        assert code == 1, gateway.output  # an outage's status, as without the signal
        assert f"gateway: the embedded PostgreSQL in {data_dir} did not start" in gateway.output
        assert not gateway.named("stopped_while_starting")
        assert not gateway.named("embedded_postgres_started")
    finally:
        gateway.kill()


def _child_named(parent: int, name: str) -> int:
    """The pid of the child of ``parent`` running the command ``name`` (polled: it may not
    have started yet)."""
    deadline = time.monotonic() + 90
    while True:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            command, fields = stat.split("(", 1)[1].rsplit(")", 1)
            if command == name and int(fields.split()[1]) == parent:
                return int(pid)
        assert time.monotonic() < deadline, f"no {name} was started by {parent}"
        time.sleep(0.01)
