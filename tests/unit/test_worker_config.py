"""The configuration a supervisor hands its workers: the one in force, not the file as it is."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway.config import Config, build_config, load_config
from gateway.security.secret_keys import new_key_line
from gateway.server import ListenError
from gateway.supervisor import (
    EMBEDDED_DSN_ENV,
    WORKER_CONFIG_ENV,
    Supervisor,
    check_addresses_free,
    config_from_snapshot,
    config_snapshot,
    worker_environment,
)


def test_a_snapshot_gives_back_the_same_configuration_overrides_included() -> None:
    raw = {
        "server": {"port": 9100, "workers": 3, "trusted_proxies": ["10.0.0.0/8"]},
        "outgoing": {"retry_schedule": [1, 2.5, 30]},
        "hooks": {"store_bodies": "failures"},
    }
    env = {"GATEWAY_DATABASE_DSN": "postgresql://app:pw@db:5432/app", "GATEWAY_LOG_LEVEL": "debug"}
    config = build_config(raw, env, source="/etc/hookgate/config.toml")
    assert config_from_snapshot(config_snapshot(config)) == config


def test_a_worker_of_an_embedded_server_gets_its_dsn_beside_the_configuration() -> None:
    """Not as an override: the configuration a worker reloads against still says "embedded"
    (an empty dsn), as the operator wrote it."""
    config = build_config({}, {}, source="config.toml")
    env = worker_environment("postgresql://postgres@/postgres?host=/tmp/s", 0, None, config)
    assert env[EMBEDDED_DSN_ENV] == "postgresql://postgres@/postgres?host=/tmp/s"
    assert "GATEWAY_DATABASE_DSN" not in env
    assert config_from_snapshot(env[WORKER_CONFIG_ENV]) == config


def test_the_supervisor_rejects_the_key_reloads_its_workers_reject(tmp_path: Path) -> None:
    """Its copy is what a replacement worker starts with: a key_file that does not exist,
    refused by every worker, must not reach a replacement (which would generate a new key)."""
    keys = tmp_path / "keys"
    keys.write_text(new_key_line("a") + "\n")
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nworkers = 2\n[security]\nkey_file = "{keys}"\n')
    supervisor = Supervisor(load_config(path, {}), "postgresql://db/app")
    path.write_text(f'[server]\nworkers = 2\n[security]\nkey_file = "{tmp_path / "other"}"\n')
    result = supervisor.reloader.reload()
    assert result.error is not None and "does not exist" in result.error
    assert supervisor.reloader.current.security.key_file == str(keys)
    assert not (tmp_path / "other").exists()


def _listening(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, 0))
    sock.listen()
    return sock


def _server_on(host: str, port: int) -> Config:
    return build_config({"server": {"host": host, "port": port, "workers": 2}}, {})


def test_the_address_check_refuses_a_port_in_use_and_names_unresolvable_hosts() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as busy:
        port = busy.getsockname()[1]
        with pytest.raises(
            ListenError, match=f"cannot listen on 127.0.0.1:{port}: Address"
        ) as busy_error:
            check_addresses_free(_server_on("127.0.0.1", port))
    check_addresses_free(_server_on("127.0.0.1", port))  # free again
    with pytest.raises(ListenError, match=r"cannot listen on nohost\.invalid:8080: ") as unresolved:
        check_addresses_free(_server_on("nohost.invalid", 8080))
    with pytest.raises(ListenError, match=r"cannot listen on 192\.0\.2\.1:8080: ") as foreign:
        check_addresses_free(_server_on("192.0.2.1", 8080))  # TEST-NET-1: no host's address
    # In use: another program may let go, so a restart can help (status 1); the others are
    # configuration errors a service manager should not restart into (status 2).
    assert busy_error.value.exit_status == 1
    assert unresolved.value.exit_status == foreign.value.exit_status == 2


async def _bind_as_asyncio(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    server.close()


@pytest.mark.parametrize(
    ("host", "reason", "status"),
    [
        ("127.0.0.1", "Address already in use", 1),
        ("192.0.2.1", "Cannot assign requested address", 2),
    ],
)
def test_a_bind_refused_to_asyncio_is_worded_as_the_supervisors_check(
    host: str, reason: str, status: int
) -> None:
    """`serve` without workers and `dispatch` bind through asyncio, which words the error its own
    way ("error while attempting to bind on address ('127.0.0.1', 8080): address already in
    use"); the line they print is the one the supervisor's check prints (README, Operations)."""
    with _listening(socket.AF_INET, "127.0.0.1") as busy:
        port = busy.getsockname()[1] if host == "127.0.0.1" else 8080
        with pytest.raises(OSError) as refused:
            asyncio.run(_bind_as_asyncio(host, port))
        with pytest.raises(ListenError) as checked:
            check_addresses_free(_server_on(host, port))
    error = ListenError.binding(host, port, refused.value)
    assert str(error) == str(checked.value) == f"cannot listen on {host}:{port}: {reason}"
    assert error.exit_status == checked.value.exit_status == status


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_works(), reason="IPv6 is disabled on this machine")
def test_an_ipv6_wildcard_is_checked_as_the_workers_bind_it_ipv6_only() -> None:
    """An IPv4 program on the port does not stop workers bound to "::" (asyncio sets
    IPV6_V6ONLY), so it must not stop the check either; an IPv6 one does."""
    with _listening(socket.AF_INET, "0.0.0.0") as ipv4:
        check_addresses_free(_server_on("::", ipv4.getsockname()[1]))
    with _listening(socket.AF_INET6, "::") as ipv6:
        port = ipv6.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on :::{port}: Address"):
            check_addresses_free(_server_on("::", port))
