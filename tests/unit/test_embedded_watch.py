"""How a process tells that its embedded server is gone: the postmaster's pid and start time
(a pid is reused once its process is gone), an exited but unreaped process counting as gone.
A plain child process stands in for the postmaster here; tests/acceptance/
test_embedded_stopped.py kills a real one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.storage import embedded
from gateway.storage.embedded import EmbeddedPostgres

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the start time from procfs"
)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def _watching(pid: int, started: str | None, tmp_path: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    server._postmaster = (pid, started)  # as start() records it
    return server


def test_running_until_the_process_exits_unreaped_or_not(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    server = _watching(child.pid, embedded._start_time(child.pid), tmp_path)
    assert server.running()
    child.kill()
    # Dead but not reaped yet: a zombie (the gateway, as PID 1 in a container, is the parent
    # of the postmaster it started and might never reap it).
    deadline = time.monotonic() + 10
    while (embedded._process_stat(child.pid) or ["?"])[0] != "Z":
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.01)
    assert not server.running()
    child.wait()
    assert not server.running()


def test_another_process_with_the_same_pid_is_not_the_server(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    assert not _watching(child.pid, "1", tmp_path).running()  # started at another time
    assert not EmbeddedPostgres(tmp_path / "pgdata").running()  # never started


async def test_watch_reports_once_the_server_is_gone(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    server = _watching(child.pid, embedded._start_time(child.pid), tmp_path)
    stopped = asyncio.Event()
    watcher = asyncio.create_task(server.watch(stopped.set, interval=0.02))
    await asyncio.sleep(0.1)
    assert not stopped.is_set() and not server.lost
    child.kill()
    await asyncio.wait_for(stopped.wait(), timeout=5)
    await watcher
    assert server.lost


def test_a_start_waits_while_the_old_postmaster_is_an_unreaped_zombie(tmp_path: Path) -> None:
    # The wheel takes a zombie postmaster for a running server and joins it (a restart right
    # after a kill -9: CI saw the restarted gateway refused by a server that was not there).
    import threading

    from gateway.storage.embedded import _process_stat, _wait_reaped

    child = subprocess.Popen(["true"])
    while (_process_stat(child.pid) or ["?"])[0] != "Z":
        time.sleep(0.01)
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text(f"{child.pid}\n/data\n")
    threading.Timer(0.3, child.wait).start()  # the init process reaps it a moment later
    started = time.monotonic()
    _wait_reaped(pid_file)
    assert time.monotonic() - started >= 0.25
    assert _process_stat(child.pid) is None
