"""SIGHUP on a real ``gateway serve``: a broken config.toml is rejected and the server keeps
serving with the old config; a valid edit takes effect without a restart, in every worker.

The gateway runs on this test's database (GATEWAY_DATABASE_DSN), so no embedded server starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.ingest.signatures import sign_hmac_hex
from gateway.security.secret_keys import new_key_line
from tests.acceptance.process_helpers import (
    CONSOLE_SCRIPT,
    GatewayProcess,
    free_port,
    write_config,
)
from tests.integration.ingest_helpers import PR_OPENED
from tests.integration.ops_helpers import parse_metrics, sample

ADMIN = {"email": "ops@example.com", "password": "a long reload passphrase"}


class Api:
    """The management API and the hook endpoint of one running gateway."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http, self.base, self.headers = http, f"http://127.0.0.1:{port}", {}

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as response:
            assert response.status == expect, await response.text()
            return await response.json()

    async def setup_hook(self) -> dict[str, Any]:
        login = await self.call("POST", "/users/login", ADMIN)
        self.headers = {"Authorization": f"Bearer {login['access_token']}"}
        env = await self.call("POST", "/environments", {"name": "reload"}, 201)
        pipeline = await self.call(
            "POST",
            f"/environments/{env['id']}/pipelines",
            {"name": "p", "resource_type": "application", "resource_id": 1, "action_type": "d"},
            201,
        )
        hook: dict[str, Any] = await self.call(
            "POST",
            f"/pipelines/{pipeline['id']}/hooks/incoming",
            {"name": "h", "action_type": "deploy"},
            201,
        )
        return hook

    async def trigger(self, hook: dict[str, Any]) -> tuple[int, dict[str, str]]:
        """One signed delivery on a new connection (so that workers share them)."""
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + sign_hmac_hex(hook["secret"], "sha256", PR_OPENED),
        }
        async with (
            aiohttp.ClientSession() as fresh,
            fresh.post(
                f"{self.base}/hooks/incoming/{hook['id']}", data=PR_OPENED, headers=headers
            ) as response,
        ):
            return response.status, dict(response.headers)

    async def bodies_stored(self, hook: dict[str, Any]) -> list[bool]:
        rows = await self.call("GET", f"/hooks/incoming/{hook['id']}/requests?per_page=100")
        return [row["body_stored"] for row in rows]


def launch(path: Path, dsn: str, command: Sequence[str] | None = None) -> GatewayProcess:
    """``gateway serve`` on ``dsn`` with the admin bootstrapped; not waited for."""
    env = {"GATEWAY_DATABASE_DSN": dsn, "GATEWAY_ADMIN_EMAIL": ADMIN["email"]}
    env["GATEWAY_ADMIN_PASSWORD"] = ADMIN["password"]
    if command is None:
        return GatewayProcess(path, env=env)
    return GatewayProcess(path, env=env, command=command)


def start(path: Path, dsn: str, port: int, workers: int = 1) -> GatewayProcess:
    gateway = launch(path, dsn)
    try:
        gateway.wait_for(
            lambda _: len(gateway.named("listening")) >= workers, "listening workers", 90
        )
    except BaseException:
        gateway.kill()
        raise
    return gateway


async def event(gateway: GatewayProcess, name: str, **fields: Any) -> dict[str, Any]:
    return await asyncio.to_thread(gateway.wait_event, name, 30, **fields)


async def test_sighup_keeps_the_old_config_on_a_broken_file_and_applies_a_valid_edit(
    database_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    server = {"port": port}
    path = write_config(tmp_path / "config.toml", {"server": server})
    gateway = start(path, database_dsn, port)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, port)
            hook = await api.setup_hook()
            assert (await api.trigger(hook))[0] == 202
            assert await api.bodies_stored(hook) == [True]

            path.write_text('[server]\nport = "eighty"\n[hooks]\nstore_bodies = "sometimes"\n')
            os.kill(gateway.process.pid, signal.SIGHUP)
            rejected = await event(gateway, "config_reload_rejected")
            assert len(rejected["problems"]) == 2
            assert "server.port" in rejected["problems"][0]
            assert (await api.trigger(hook))[0] == 202  # still serving, same port
            assert await api.bodies_stored(hook) == [True, True]  # still store_bodies = all

            write_config(
                path,
                {
                    "server": server,
                    "hooks": {"store_bodies": "none"},
                    "limits": {"default_rate_per_second": 0.001},
                    "database": {"pool_max_size": 5},
                },
            )
            os.kill(gateway.process.pid, signal.SIGHUP)
            applied = await event(gateway, "config_reloaded")
            assert applied["applied"] == ["hooks.store_bodies", "limits.default_rate_per_second"]
            restart = await event(gateway, "config_reload_needs_restart")
            assert restart["keys"] == ["database.pool_max_size"]
            assert (await api.trigger(hook))[0] == 202
            assert await api.bodies_stored(hook) == [False, True, True]
            status, headers = await api.trigger(hook)  # the new default rate: one token
            assert status == 429 and int(headers["Retry-After"]) >= 1

        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0
    finally:
        gateway.kill()


async def test_every_worker_reloads_and_a_scrape_sums_all_workers(
    database_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    server = {"port": port, "workers": 2}
    # data_dir only places the metrics directory (next to it); the database is the test's.
    path = write_config(tmp_path / "config.toml", _sections(tmp_path, server))
    gateway = start(path, database_dsn, port, workers=2)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, port)
            hook = await api.setup_hook()
            for _ in range(10):
                assert (await api.trigger(hook))[0] == 202
            for _ in range(4):  # whichever worker answers, the counts are the fleet's
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(api.base + "/metrics") as response:
                        parsed = parse_metrics(await response.text())
                accepted = {"outcome": "accepted", "status": "202"}
                assert sample(parsed, "hookgate_ingest_requests_total", **accepted) == 10
                assert sample(parsed, "hookgate_batch_size_sum") == 10

            write_config(path, {**_sections(tmp_path, server), "hooks": {"store_bodies": "none"}})
            os.kill(gateway.process.pid, signal.SIGHUP)  # the supervisor forwards it
            await asyncio.to_thread(
                gateway.wait_for,
                lambda _: {e.get("worker") for e in gateway.named("config_reloaded")} == {0, 1},
                "config_reloaded in both workers",
                30,
            )
            for _ in range(6):
                assert (await api.trigger(hook))[0] == 202
            assert await api.bodies_stored(hook) == [False] * 6 + [True] * 10

        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0
    finally:
        gateway.kill()
    assert not (tmp_path / "metrics" / str(gateway.process.pid)).exists()


async def test_every_worker_reads_an_edited_key_file_again(
    database_dsn: str, tmp_path: Path
) -> None:
    """Key rotation through a mounted key file, the same path on every instance: each step
    is an edit of the file and a SIGHUP, no restart (README, "Secrets at rest")."""
    port = free_port()
    old, new = new_key_line("old"), new_key_line("new")
    key_file = tmp_path / "secret-keys"
    key_file.write_text(f"{old}\n")
    key_file.chmod(0o600)
    server = {"port": port, "workers": 2}
    security = {"key_file": str(key_file), "create_key_file": False}
    path = write_config(
        tmp_path / "config.toml", {**_sections(tmp_path, server), "security": security}
    )
    env: dict[str, str | None] = {
        "GATEWAY_DATABASE_DSN": database_dsn,
        "GATEWAY_SECURITY_SECRET_KEYS": None,  # the keys come from the file alone
        "GATEWAY_ADMIN_EMAIL": ADMIN["email"],
        "GATEWAY_ADMIN_PASSWORD": ADMIN["password"],
    }
    gateway = GatewayProcess(path, env=env)

    async def reloaded_in_both_workers(primary: str, key_ids: list[str]) -> None:
        seen = len(gateway.events)

        def both(_: Any) -> bool:
            workers = {
                e.get("worker")
                for e in gateway.events[seen:]
                if e.get("event") == "secret_keys_reloaded"
                and (e.get("primary_key_id"), e.get("key_ids")) == (primary, key_ids)
            }
            return workers == {0, 1}

        os.kill(gateway.process.pid, signal.SIGHUP)  # the supervisor forwards it
        await asyncio.to_thread(gateway.wait_for, both, f"{primary} {key_ids} in both", 30)

    try:
        await asyncio.to_thread(
            gateway.wait_for, lambda _: len(gateway.named("listening")) >= 2, "workers", 90
        )
        async with aiohttp.ClientSession() as http:
            api = Api(http, port)
            hook = await api.setup_hook()  # its secret sealed with "old"
            key_file.write_text(f"{old}\n{new}\n")  # (1) the new key last: can open
            await reloaded_in_both_workers("old", ["old", "new"])
            key_file.write_text(f"{new}\n{old}\n")  # (2) first: seals
            await reloaded_in_both_workers("new", ["new", "old"])
            for _ in range(4):
                assert (await api.trigger(hook))[0] == 202  # "old" still opens it
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0
    finally:
        gateway.kill()


def _sections(tmp_path: Path, server: dict[str, Any]) -> dict[str, Any]:
    return {"server": server, "database": {"data_dir": str(tmp_path / "pgdata")}}


async def test_the_standalone_dispatcher_reloads_too(database_dsn: str, tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.toml", {"outgoing": {"poll_interval": 1.0}})
    gateway = GatewayProcess(path, ("dispatch",), env={"GATEWAY_DATABASE_DSN": database_dsn})
    try:
        await event(gateway, "dispatcher_started")
        path.write_text("[outgoing]\npoll_interval = -1\n")
        os.kill(gateway.process.pid, signal.SIGHUP)
        rejected = await event(gateway, "config_reload_rejected")
        assert "outgoing.poll_interval" in rejected["problems"][0]
        write_config(path, {"outgoing": {"poll_interval": 2.0}})
        os.kill(gateway.process.pid, signal.SIGHUP)
        assert (await event(gateway, "config_reloaded"))["applied"] == ["outgoing.poll_interval"]
        await event(gateway, "dispatcher_reconfigured")
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0
    finally:
        gateway.kill()


async def test_the_standalone_dispatcher_does_not_ask_a_restart_for_keys_it_never_reads(
    database_dsn: str, tmp_path: Path
) -> None:
    """One config.toml for serve and dispatch, both reloaded (systemctl reload): an edit of
    serve's listeners made the dispatcher warn config_reload_needs_restart at every reload,
    although restarting it changes nothing. Its own restart-only keys still warn."""
    sections = {"server": {"port": 8080}, "outgoing": {"concurrency": 64}}
    path = write_config(tmp_path / "config.toml", sections)
    gateway = GatewayProcess(path, ("dispatch",), env={"GATEWAY_DATABASE_DSN": database_dsn})
    try:
        await event(gateway, "dispatcher_started")
        write_config(
            path,
            {
                "server": {"port": 9090, "workers": 4, "shutdown_timeout": 20.0},
                "hooks": {"cache_ttl": 5.0},
                "outgoing": {"concurrency": 8, "poll_interval": 2.0},
            },
        )
        os.kill(gateway.process.pid, signal.SIGHUP)
        reloaded = await event(gateway, "config_reloaded")
        assert reloaded["applied"] == ["outgoing.poll_interval"]
        restart = await event(gateway, "config_reload_needs_restart")
        assert restart["keys"] == ["server.shutdown_timeout", "outgoing.concurrency"]
        not_used = await event(gateway, "config_reload_not_used")
        assert not_used["keys"] == ["server.port", "server.workers", "hooks.cache_ttl"]
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0
    finally:
        gateway.kill()


@pytest.mark.parametrize(
    ("workers", "first"),
    [
        (1, None),
        (2, "config_loaded"),  # the supervisor is bootstrapping: no worker yet
        (2, "worker_started"),  # both spawned, still starting Python
    ],
)
async def test_a_sighup_while_starting_is_remembered_not_fatal(
    database_dsn: str, tmp_path: Path, workers: int, first: str | None
) -> None:
    """`systemctl reload` right after `start`: the gateway (or its new workers, to which the
    supervisor forwards it) is still importing, connecting, bootstrapping. It must survive and
    end up with the edited file in force."""
    port = free_port()
    server = {"port": port, "workers": workers}
    path = write_config(tmp_path / "config.toml", _sections(tmp_path, server))
    gateway = launch(path, database_dsn)
    try:
        await asyncio.to_thread(
            gateway.wait_for,
            lambda e: (
                first is None
                or len(gateway.named(first)) == (workers if first == "worker_started" else 1)
            ),
            "the first log line",
            60,
        )
        assert not gateway.named("listening")
        write_config(path, {**_sections(tmp_path, server), "hooks": {"store_bodies": "none"}})
        os.kill(gateway.process.pid, signal.SIGHUP)
        await serves_with_the_edit(gateway, port, workers, reloaded=first == "worker_started")
        if first == "config_loaded":  # it came while the supervisor was bootstrapping
            [during] = gateway.named("sighup_during_start_up")
            assert during["applied"] == ["hooks.store_bodies"]
    finally:
        gateway.kill()


@pytest.mark.parametrize("command", ["console script", "python -m gateway"])
async def test_a_sighup_while_the_command_line_is_imported_is_remembered(
    database_dsn: str, tmp_path: Path, command: str
) -> None:
    """Importing the command line and its libraries takes a few hundred milliseconds: SIGHUP
    is made harmless before that starts, and one sent then is a reload once the gateway is up.
    (The marker: the process has not loaded ``_decimal`` yet, which the command line's imports
    load about 150 ms in, on a fast machine.)"""
    port = free_port()
    server = {"port": port, "workers": 1}
    path = write_config(tmp_path / "config.toml", _sections(tmp_path, server))
    argv = [CONSOLE_SCRIPT] if command == "console script" else [sys.executable, "-m", "gateway"]
    gateway = launch(path, database_dsn, argv)
    try:
        marker = "/_decimal."
        handled_early = await asyncio.to_thread(sighup_handled_before, gateway, marker)
        assert handled_early, "SIGHUP was still fatal well into the command line's imports"
        write_config(path, {**_sections(tmp_path, server), "hooks": {"store_bodies": "none"}})
        os.kill(gateway.process.pid, signal.SIGHUP)
        await asyncio.to_thread(gateway.wait_event, "listening", 60)
        # The marker means something: the gateway does load it.
        maps = Path(f"/proc/{gateway.process.pid}/maps")
        assert marker in await asyncio.to_thread(maps.read_text)
        await serves_with_the_edit(gateway, port, 1)
    finally:
        gateway.kill()


def sighup_handled_before(gateway: GatewayProcess, library: str) -> bool:
    """Wait until the process handles SIGHUP (Linux: bit 0 of SigCgt in /proc/PID/status);
    whether ``library``'s shared objects were not mapped into it yet at that moment."""
    proc = Path(f"/proc/{gateway.process.pid}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert gateway.process.poll() is None, gateway.output[-4000:]
        status = (proc / "status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & 1 << (signal.SIGHUP - 1):
            return library not in (proc / "maps").read_text()
        time.sleep(0.0005)
    raise AssertionError("the gateway never handled SIGHUP")


async def serves_with_the_edit(
    gateway: GatewayProcess, port: int, workers: int, *, reloaded: bool = False
) -> None:
    """Once up, every worker runs with the edited file (``store_bodies = none``), none was
    lost on the way, and SIGTERM stops the gateway cleanly. ``reloaded``: the workers were
    spawned before the edit, so each must reload."""
    await asyncio.to_thread(
        gateway.wait_for,
        lambda _: len(gateway.named("listening")) >= workers,
        "listening workers",
        60,
    )
    if reloaded:
        # Workers start with the configuration in force in the supervisor when it spawned
        # them (before the edit): the forwarded SIGHUP, delayed until each can take it, is
        # what brings the edit (a second after its start at most).
        await asyncio.to_thread(
            gateway.wait_for,
            lambda _: (
                {e.get("worker") for e in gateway.named("config_reloaded")} == set(range(workers))
            ),
            "config_reloaded in every worker",
            30,
        )
    async with aiohttp.ClientSession() as http:
        api = Api(http, port)
        hook = await api.setup_hook()
        for _ in range(4):  # (with two workers, new connections reach both)
            assert (await api.trigger(hook))[0] == 202
        assert await api.bodies_stored(hook) == [False] * 4
    assert not gateway.named("worker_exited"), gateway.named("worker_exited")
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.finish) == 0, gateway.output[-4000:]


async def test_a_gateway_stopped_while_its_workers_start_exits_cleanly(
    database_dsn: str, tmp_path: Path
) -> None:
    """SIGTERM right after start reaches workers still starting Python (no handler yet): they
    end on the signal itself, which for a stop is clean: exit status 0, not 1."""
    port = free_port()
    path = write_config(tmp_path / "config.toml", _sections(tmp_path, {"port": port, "workers": 2}))
    gateway = launch(path, database_dsn)
    try:
        await asyncio.to_thread(
            gateway.wait_for, lambda _: len(gateway.named("worker_started")) == 2, "workers", 60
        )
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.finish) == 0, gateway.output[-4000:]
    finally:
        gateway.kill()
