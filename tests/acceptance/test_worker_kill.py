"""``kill -9`` of a worker under load: ``gateway serve`` with ``[server] workers = 2`` (one
supervisor, two workers sharing the port with SO_REUSEPORT) takes signed deliveries, each on a
new connection so that the kernel spreads them over both workers, and one worker is killed with
SIGKILL mid-load.

Must hold: the supervisor restarts the worker; every request gets a 2xx, a 503 or a connection
error (never a hang); every 2xx has exactly one run row; no delivery has two runs. A request
whose worker died after its commit but before its answer is the ambiguous case: the sender saw a
connection error, the run exists, and the sender's retry with the same delivery id gets 200 with
that run. Figures are printed (also without -s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.db_gate import gated_proxy
from tests.acceptance.fault_load import Load, client, report
from tests.acceptance.lb_client import Api
from tests.acceptance.lb_load import is_2xx, runs_by_delivery
from tests.acceptance.live_gateway import fresh_database, start_gateway, stop_gateway
from tests.acceptance.process_helpers import (
    GatewayProcess,
    free_port,
    http_status,
    occupied_port,
    parent_of,
    process_alive,
    write_config,
)

CONNECTIONS = 8
BEFORE_KILL = 400  # answers before the kill
AFTER_RESTART = 400  # answers after the replacement worker listens
RESTART_LIMIT = 60.0


@pytest.fixture
def dsn(server_dsn: str, template_database: str) -> Iterator[str]:
    with fresh_database(server_dsn, template_database) as fresh:
        yield fresh


@pytest.mark.timeout(300)
async def test_kill_9_of_a_worker_under_load(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = start_gateway(tmp_path, dsn, server={"workers": 2}, listening=2)
    gateway = live.gateway
    try:
        workers = {e["worker"]: e["pid"] for e in gateway.named("worker_started")}
        assert len(workers) == 2 and all(
            parent_of(p) == gateway.process.pid for p in workers.values()
        )
        victim = workers[0]
        async with client(CONNECTIONS, force_close=True) as session:
            api = Api(session, live.url, live.token)
            _, hook = await api.seed_hook()
            load = Load(session, f"{live.url}/hooks/incoming/{hook['id']}", hook["secret"])
            runner = asyncio.create_task(load.run())
            try:
                await load.until(lambda a: len(a) >= BEFORE_KILL, 60, "load before the kill")
                os.kill(victim, signal.SIGKILL)
                killed_at = len(load.answers)
                restarted = await asyncio.to_thread(
                    gateway.wait_for,
                    lambda e: e.get("event") == "worker_restarted" and e.get("previous") == victim,
                    "worker_restarted",
                    RESTART_LIMIT,
                )
                await asyncio.to_thread(
                    gateway.wait_for,
                    lambda e: (
                        e.get("event") == "listening"
                        and e.get("worker") == restarted["worker"]
                        and gateway.events.index(e) > gateway.events.index(restarted)
                    ),
                    "the replacement listening",
                    RESTART_LIMIT,
                )
                listening_at = len(load.answers)
                await load.until(
                    lambda a: len(a) >= listening_at + AFTER_RESTART, 60, "load after the restart"
                )
            finally:
                load.stop()
                await runner
            first = list(load.answers)
            runs_before_retries = await runs_by_delivery(dsn, hook["id"])
            failed = [a.delivery for a in first if not is_2xx(a.status)]
            retried = [await load.send(d) for d in failed]
            runs = await runs_by_delivery(dsn, hook["id"])
        replacement = restarted["pid"]
        assert parent_of(replacement) == gateway.process.pid and not process_alive(victim)
        exited = [e for e in gateway.named("worker_exited") if e.get("pid") == victim]
    finally:
        stop_gateway(live)

    statuses = Counter(a.status for a in first)
    ok = {a.delivery for a in first if is_2xx(a.status)}
    ambiguous = set(runs_before_retries) - ok
    report(
        capsys,
        "worker kill -9",
        {
            "requests": len(first),
            "2xx": len(ok),
            "non_2xx": {k: v for k, v in statuses.items() if not is_2xx(k)},
            "killed_after": killed_at,
            "replacement_listening_after": listening_at,
            "runs_before_retries": sum(runs_before_retries.values()),
            "committed_without_2xx": len(ambiguous),
            "retried": len(retried),
            "retry_answers": dict(Counter(a.status for a in retried)),
            "runs": sum(runs.values()),
        },
    )
    assert exited and exited[0]["signal"] == "SIGKILL"
    # 2xx, 503 or a connection error of the killed worker; never a timeout or a 500.
    unexpected = {
        k for k in statuses if not (is_2xx(k) or k == 503 or str(k).startswith("client error"))
    }
    assert not unexpected, statuses
    assert all(runs_before_retries.get(d) == 1 for d in ok), "a 2xx without exactly one run"
    assert set(runs_before_retries.values()) <= {1}, "a delivery with two runs"
    assert all(is_2xx(a.status) for a in retried), Counter(a.status for a in retried)
    assert {a.delivery for a in retried if a.status == 200} == ambiguous
    deliveries = {a.delivery for a in first}
    assert set(runs) == deliveries and set(runs.values()) == {1}


def _kill_and_replace(gateway: GatewayProcess, pid: int) -> dict[str, Any]:
    """SIGKILL worker 0 (``pid``); its replacement's ``listening`` event."""
    os.kill(pid, signal.SIGKILL)
    restarted = gateway.wait_event("worker_restarted", RESTART_LIMIT, worker=0)
    return gateway.wait_for(
        lambda e: (
            e.get("event") == "listening"
            and e.get("worker") == 0
            and gateway.events.index(e) > gateway.events.index(restarted)
        ),
        "worker 0 listening again",
        RESTART_LIMIT,
    )


@pytest.mark.timeout(180)
def test_a_worker_crash_while_the_config_file_is_broken_is_not_an_outage(
    dsn: str, tmp_path: Path
) -> None:
    """An operator's edit that a SIGHUP rejected (or not yet reloaded) stays on disk; a worker
    that crashes then is replaced by one running the configuration in force, which its
    supervisor hands it: it serves at once instead of failing on the broken file."""
    live = start_gateway(tmp_path, dsn, server={"workers": 2}, listening=2)
    gateway = live.gateway
    config = tmp_path / "config.toml"
    good = config.read_text()
    try:
        workers = {e["worker"]: e["pid"] for e in gateway.named("worker_started")}
        config.write_text(good.replace("[server]\n", '[server]\nmax_body_bytes = "big"\n', 1))
        _kill_and_replace(gateway, workers[0])
        assert not gateway.named("worker_config_error")
        assert http_status(f"{live.url}/healthz") == 200
        # The broken file is still refused by a reload, in both workers, the new one included.
        os.kill(gateway.process.pid, signal.SIGHUP)
        gateway.wait_for(
            lambda _: {e.get("worker") for e in gateway.named("config_reload_rejected")} == {0, 1},
            "config_reload_rejected in both workers",
            30,
        )
    finally:
        config.write_text(good)
        code = stop_gateway(live)
    assert code == 0


@pytest.mark.timeout(180)
def test_a_replacement_worker_keeps_the_port_and_database_in_force(
    dsn: str, tmp_path: Path
) -> None:
    """An edit of a restart-only key (here the port; the DSN is handed over the same way) waits
    for a restart: a worker that crashes meanwhile must not come back on the new port while
    its sibling keeps the old one. A live key the SIGHUP applied does reach it."""
    live = start_gateway(tmp_path, dsn, server={"workers": 2}, listening=2)
    gateway = live.gateway
    config = tmp_path / "config.toml"
    good = config.read_text()
    new_port = free_port()
    try:
        workers = {e["worker"]: e["pid"] for e in gateway.named("worker_started")}
        edited = good.replace(f"port = {live.port}\n", f"port = {new_port}\n", 1)
        assert edited != good
        config.write_text(edited + '\n[hooks]\nstore_bodies = "none"\n')
        os.kill(gateway.process.pid, signal.SIGHUP)
        gateway.wait_for(
            lambda _: (
                {e.get("worker") for e in gateway.named("config_reload_needs_restart")} == {0, 1}
            ),
            "config_reload_needs_restart in both workers",
            30,
        )
        assert all(
            e["keys"] == ["server.port"] for e in gateway.named("config_reload_needs_restart")
        )
        listening = _kill_and_replace(gateway, workers[0])
        assert listening["port"] == live.port
        # Its configuration is the one in force: a reload finds the port edit still pending
        # and the live change already applied.
        os.kill(gateway.process.pid, signal.SIGHUP)
        again = gateway.wait_for(
            lambda e: (
                e.get("event") == "config_reload_needs_restart"
                and e.get("worker") == 0
                and gateway.events.index(e) > gateway.events.index(listening)
            ),
            "the replacement's reload",
            30,
        )
        assert again["keys"] == ["server.port"]
        assert not [
            e
            for e in gateway.named("config_reloaded")
            if e.get("worker") == 0 and gateway.events.index(e) > gateway.events.index(listening)
        ]
    finally:
        config.write_text(good)
        code = stop_gateway(live)
    assert code == 0


@pytest.mark.timeout(120)
def test_a_second_gateway_on_the_port_of_a_running_one_is_refused(dsn: str, tmp_path: Path) -> None:
    """SO_REUSEPORT would let the workers of a second gateway (an old release still running,
    a second unit) quietly share the port and its traffic: the supervisor checks first."""
    (tmp_path / "first").mkdir()
    live = start_gateway(tmp_path / "first", dsn, server={"workers": 2}, listening=2)
    try:
        config = write_config(
            tmp_path / "config.toml",
            {"server": {"port": live.port, "workers": 2}, "log": {"format": "json"}},
        )
        second = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": dsn})
        try:
            assert second.finish(timeout=90) == 1, second.output  # as without workers
        finally:
            second.kill()
        assert f"gateway: cannot listen on 127.0.0.1:{live.port}: Address already in use" in (
            second.output
        )
        assert not second.named("worker_started")
        assert http_status(f"{live.url}/healthz") == 200
    finally:
        assert stop_gateway(live) == 0


@pytest.mark.timeout(120)
def test_workers_that_cannot_bind_the_port_stop_the_gateway(dsn: str, tmp_path: Path) -> None:
    """Another program holds the port: the gateway stops and says why, with status 1 as it
    does without workers (test_cli.py), instead of a supervisor restarting workers forever
    while nothing listens."""
    with occupied_port() as port:
        config = write_config(
            tmp_path / "config.toml",
            {"server": {"port": port, "workers": 2}, "log": {"format": "json"}},
        )
        gateway = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": dsn})
        try:
            assert gateway.finish(timeout=90) == 1, gateway.output
        finally:
            gateway.kill()
    # Found before any worker starts (the supervisor tries the address itself).
    cannot = gateway.named("cannot_listen")
    assert cannot and "address already in use" in cannot[0]["error"].lower(), gateway.output
    assert not gateway.named("worker_started")


@pytest.mark.timeout(120)
def test_a_port_taken_after_the_supervisors_check_stops_the_gateway_with_status_1(
    dsn: str, tmp_path: Path
) -> None:
    """Another program takes the port between the supervisor's check (free) and the workers'
    binds: still status 1, as when the check finds it held, not the 2 of a configuration error
    (which the systemd unit does not restart into, though the program may let go)."""
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {"server": {"port": port, "workers": 2}, "log": {"format": "json"}},
    )
    with gated_proxy(dsn) as proxy:
        gateway = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": proxy.dsn})
        try:
            proxy.let_through(gateway.process.pid)  # the supervisor's bootstrap
            assert proxy.held.wait(90), gateway.output  # a worker connects before it binds
            gateway.wait_for(lambda e: e.get("event") == "supervisor_started", "the check", 30)
            with socket.socket() as other:
                other.bind(("127.0.0.1", port))
                other.listen()
                proxy.gate.set()
                assert gateway.finish(timeout=90) == 1, gateway.output
        finally:
            gateway.kill()
    cannot = gateway.named("worker_cannot_listen")
    assert cannot and "address already in use" in cannot[0]["error"].lower(), gateway.output
    assert gateway.named("worker_address_in_use"), gateway.output


@pytest.mark.timeout(120)
def test_workers_on_an_address_of_no_interface_stop_with_status_2(dsn: str, tmp_path: Path) -> None:
    """An address this host does not have is a configuration error: status 2, which the
    systemd unit does not restart into (RestartPreventExitStatus), as without workers."""
    config = write_config(
        tmp_path / "config.toml",
        {"server": {"host": "192.0.2.1", "workers": 2}, "log": {"format": "json"}},
    )
    gateway = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": dsn})
    try:
        assert gateway.finish(timeout=90) == 2, gateway.output
    finally:
        gateway.kill()
    assert "gateway: cannot listen on 192.0.2.1:" in gateway.output
    assert not gateway.named("worker_started")
