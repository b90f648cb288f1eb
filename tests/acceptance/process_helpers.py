"""Running the real ``gateway`` command as a subprocess: environment, ports, JSON log events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_SECRET_KEY
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 90.0
# The three commands that bootstrap a long-running process: gateway serve as a supervisor of
# workers, gateway serve in one process, gateway dispatch.
BOOTSTRAPS = [
    pytest.param(("serve",), 2, id="supervisor"),
    pytest.param(("serve",), 1, id="serve"),
    pytest.param(("dispatch",), 1, id="dispatch"),
]
Event = dict[str, Any]


# The ``gateway`` console script of the interpreter running the tests (the venv's).
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "gateway")


def clean_environment(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without any GATEWAY_* variable, plus the tests' secret key
    (so that no run creates var/secret-keys in the checkout) and ``extra`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_SECURITY_SECRET_KEYS"] = TEST_SECRET_KEY
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_gateway(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    input: str | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` to completion (stdout/stderr captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=clean_environment(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def http_status(url: str) -> int:
    """GET ``url`` on a fresh connection (with workers, the kernel picks one each time); the
    status."""
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status


@contextmanager
def occupied_port() -> Iterator[int]:
    """A loopback port another program listens on (without SO_REUSEPORT) while inside."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when the port can be bound (nobody listens on it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (Linux: from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pending_signals(pid: int) -> int:
    """The signals sent to the process that no thread of it has taken yet, as a mask (bit
    ``n - 1`` for signal ``n``; Linux): a stopped process keeps them until it continues."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def send_twice(process: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> None:
    """``sig``, and once the process has taken it (no longer pending: two pending SIGTERMs
    would be one), ``sig`` again."""
    process.send_signal(sig)
    deadline = time.monotonic() + 10
    while pending_signals(process.pid) & (1 << (sig - 1)):
        assert time.monotonic() < deadline, "the first signal was never delivered"
        time.sleep(0.005)
    process.send_signal(sig)


async def until_gone(pids: Sequence[int], within: float) -> None:
    """Wait until none of ``pids`` runs (polled); after ``within`` seconds, SIGKILL those left
    (a failing test leaves nothing behind) and fail naming them."""
    deadline = time.monotonic() + within
    while alive := [pid for pid in pids if process_alive(pid)]:
        if time.monotonic() > deadline:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running after {within} s: {alive}")
        await asyncio.sleep(0.05)


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a small TOML config (strings, numbers, booleans) and return its path."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def release_data_dir(data_dir: Path) -> None:
    """Stop an embedded server a failed test left running in ``data_dir``, then delete it."""
    if (data_dir / "postmaster.pid").exists():
        from gateway.storage.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(data_dir)
        server.start()
        server.stop()
    shutil.rmtree(data_dir.parent, ignore_errors=True)


@contextmanager
def private_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for an embedded server, under a private (0700) parent; a server a
    failed test left running there is stopped on the way out."""
    path = tmp_path / "private" / "pgdata"
    path.parent.mkdir(mode=0o700)
    try:
        yield path
    finally:
        release_data_dir(path)


def embedded_gateway(
    tmp_path: Path,
    data_dir: Path,
    args: Sequence[str] = ("serve",),
    workers: int = 1,
    server: Mapping[str, Any] | None = None,
    **database: Any,
) -> GatewayProcess:
    """``gateway ARGS`` (JSON log, a free port, ``workers``, ``server`` settings besides) on
    the embedded server in ``data_dir``, with ``database`` settings besides."""
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"port": free_port(), "workers": workers, **(server or {})},
            "database": {"data_dir": str(data_dir), **database},
            "log": {"format": "json"},
        },
    )
    return GatewayProcess(config, args=args)


class GatewayProcess:
    """A long-running ``gateway ... serve`` whose JSON log events are collected as they arrive."""

    def __init__(
        self,
        config_path: Path,
        args: Sequence[str] = ("serve",),
        env: Mapping[str, str | None] | None = None,
        command: Sequence[str] = (sys.executable, "-m", "gateway"),
        stdout: Any = subprocess.DEVNULL,
        new_session: bool = False,
    ) -> None:
        """``stdout``: where the process's standard output goes (default: nowhere).
        ``new_session``: the process leads a process group of its own, which its workers join
        (``os.killpg`` then signals them all, as Ctrl-C in a terminal does)."""
        self.process = subprocess.Popen(
            [*command, "--config", str(config_path), *args],
            cwd=ROOT,
            env=clean_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        self.events: list[Event] = []
        self.raw_lines: list[str] = []
        self._arrived: queue.Queue[Event] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.rstrip()}
            self.events.append(event)
            self._arrived.put(event)

    @property
    def output(self) -> str:
        """Everything written to stderr so far."""
        return "".join(self.raw_lines)

    def wait_for(self, predicate: Callable[[Event], bool], what: str, timeout: float) -> Event:
        """The first event (already seen or arriving within ``timeout``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self._reader.is_alive() and self._arrived.empty()):
                tail = "".join(self.raw_lines[-20:])
                raise AssertionError(f"no {what} within {timeout}s; last output:\n{tail}")
            try:
                self._arrived.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                pass

    def wait_event(self, name: str, timeout: float = STARTUP_TIMEOUT, **fields: Any) -> Event:
        """The first event called ``name`` whose fields include ``fields``."""
        return self.wait_for(
            lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
            f"{name} {fields or ''}".strip(),
            timeout,
        )

    def named(self, name: str) -> list[Event]:
        """Every event called ``name`` so far."""
        return [e for e in self.events if e.get("event") == name]

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit and for stderr to be read completely; the exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=15)
        return code

    def kill(self) -> None:
        """Clean-up after a failed test: kill the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=15)
        if self.process.stderr is not None:
            self.process.stderr.close()
