"""A stop that does not finish can be forced: a second SIGTERM/SIGINT (Ctrl-C again) cancels
what is left at once, and a stop still running ``shutdown_timeout`` + KILL_GRACE seconds after
the first signal is forced by the process itself, with what each task was waiting for in the
log (``stop_overdue``). Before, ``gateway serve`` ignored further signals and a clean-up stuck
on an unreachable database kept the process alive until someone used SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.live_gateway import LiveGateway, fresh_database, start_gateway, stop_gateway
from tests.acceptance.process_helpers import (
    ROOT,
    GatewayProcess,
    clean_environment,
    free_port,
    write_config,
)

# Long enough that a graceful stop could not pass for a forced one within the test's bounds.
SHUTDOWN_TIMEOUT = 30.0


@pytest.fixture
def live(server_dsn: str, template_database: str, tmp_path: Path) -> Iterator[LiveGateway]:
    with fresh_database(server_dsn, template_database) as dsn:
        gateway = start_gateway(
            tmp_path, dsn, server={"shutdown_timeout": SHUTDOWN_TIMEOUT, "body_timeout": 60.0}
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


async def _request_whose_body_never_ends(port: int) -> asyncio.StreamWriter:
    """A request whose body never finishes, being read by its handler: it keeps the graceful
    drain waiting. Close the writer when done."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"email"'
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the handler is reading the body
    return writer


async def test_a_second_sigterm_forces_a_stop_held_up_by_a_request_in_flight(
    live: LiveGateway,
) -> None:
    writer = await _request_whose_body_never_ends(live.port)
    try:
        process = live.gateway.process
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(live.gateway.wait_event, "shutting_down")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(live.gateway.finish, 10)
        assert time.monotonic() - started < 10
        assert code == 1
        assert [e["signal"] for e in live.gateway.named("stop_forced")] == ["SIGTERM"]
        assert live.gateway.named("stopped")[-1].get("forced") is True
    finally:
        writer.close()


@pytest.fixture
def workers_in_a_group(tmp_path: Path, database_dsn: str) -> Iterator[tuple[GatewayProcess, int]]:
    """``[server] workers = 2`` leading a process group of its own (as in a terminal)."""
    port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {
                "port": port,
                "workers": 2,
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
                "body_timeout": 60.0,
            },
            "database": {"dsn": database_dsn},
            "log": {"format": "json"},
        },
    )
    gateway = GatewayProcess(config, new_session=True)
    try:
        gateway.wait_for(lambda _: len(gateway.named("listening")) >= 2, "two workers", 60)
        yield gateway, port
    finally:
        gateway.kill()


def test_ctrl_c_to_the_process_group_stops_the_workers_gracefully(
    workers_in_a_group: tuple[GatewayProcess, int],
) -> None:
    # A terminal's Ctrl-C (or a service manager's stop of the whole group) reaches the workers
    # and the supervisor, which forwards it: one stop reaching each worker twice. It used to
    # force their stop (stop_forced, exit status 1).
    gateway, _ = workers_in_a_group
    os.killpg(gateway.process.pid, signal.SIGINT)
    assert gateway.finish(SHUTDOWN_TIMEOUT) == 0, gateway.output
    assert not gateway.named("stop_forced"), gateway.output
    assert len(gateway.named("worker_exiting")) == 2


async def test_a_second_ctrl_c_to_the_process_group_forces_the_workers_stop(
    workers_in_a_group: tuple[GatewayProcess, int],
) -> None:
    gateway, port = workers_in_a_group
    writer = await _request_whose_body_never_ends(port)  # its worker's drain waits
    try:
        os.killpg(gateway.process.pid, signal.SIGINT)
        await asyncio.to_thread(gateway.wait_event, "supervisor_stopping")
        await asyncio.sleep(0.5)  # both signals have reached the workers
        os.killpg(gateway.process.pid, signal.SIGINT)
        started = time.monotonic()
        code = await asyncio.to_thread(gateway.finish, 20)
        assert time.monotonic() - started < 20  # not the 30 s of shutdown_timeout
        assert code == 1, gateway.output
        forced = gateway.named("stop_forced")
        assert forced and {e["signal"] for e in forced} == {"SIGUSR1"}, gateway.output
    finally:
        writer.close()


# A process whose stop hangs in its clean-up: it waits for an event nobody sets (as a clean-up
# waiting on an unreachable database did), and, with IGNORE_CANCEL, also refuses cancellation.
_STUCK_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.logs import configure_logging
    from gateway.shutdown import StopSignals

    IGNORE_CANCEL = sys.argv[1] == "ignore-cancel"

    async def clean_up_that_never_ends():
        never = asyncio.Event()
        while True:
            try:
                await never.wait()
            except asyncio.CancelledError:
                print("cleanup-cancelled", flush=True)
                if not IGNORE_CANCEL:
                    raise

    async def main():
        stop = asyncio.Event()
        signals = StopSignals(stop, overdue_after=float(sys.argv[2]))
        # Tasks enough that not all can be shown (a dispatcher has one per delivery).
        others = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(30)]
        print("ready", flush=True)
        await stop.wait()
        try:
            await clean_up_that_never_ends()
        except asyncio.CancelledError:
            print("forced" if signals.forced else "not-forced", flush=True)
            return 3

    configure_logging("info", "json", sys.stderr)
    sys.exit(asyncio.run(main()))
    """
)


def _start_stuck(mode: str, overdue_after: float) -> subprocess.Popen[str]:
    return _start_script(_STUCK_PROCESS, mode, str(overdue_after))


def _start_script(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` in a Python process of its own, once it printed "ready"."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=clean_environment({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_stop_that_overruns_is_forced_and_says_what_it_waited_for() -> None:
    process = _start_stuck("cancel", overdue_after=0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 3  # main() returned: its clean-up ran after the cancellation
    assert stdout.splitlines() == ["cleanup-cancelled", "forced"]
    (overdue,) = [e for e in _events(stderr) if e["event"] == "stop_overdue"]
    assert overdue["after_s"] == 0.5
    waiting = overdue["waiting"]
    assert isinstance(waiting, list)
    # The main task first, with its chain of awaits down to the clean-up that never ends.
    assert len(waiting) == 20
    assert "main (" in waiting[0] and "clean_up_that_never_ends (" in waiting[0], waiting[0]


def test_a_third_signal_exits_at_once_when_the_clean_up_ignores_cancellation() -> None:
    process = _start_stuck("ignore-cancel", overdue_after=600)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # forced: the main task is cancelled, and ignores it
    assert process.stdout is not None
    assert process.stdout.readline() == "cleanup-cancelled\n"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1
    events = [e["event"] for e in _events(stderr)]
    assert events == ["stop_forced", "stop_forced_exit"]


def test_without_a_second_signal_a_stop_is_not_forced_before_it_is_overdue() -> None:
    process = _start_stuck("cancel", overdue_after=600)
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=2)
        raise AssertionError("the stuck stop ended without being forced")
    except subprocess.TimeoutExpired:
        pass
    finally:
        process.kill()
        process.communicate(timeout=10)


async def test_a_client_sending_back_to_back_does_not_hold_up_the_stop(live: LiveGateway) -> None:
    # Each request's body takes ~0.3 s to arrive, so the connection is busy whenever the drain
    # looks, and the client sends its next request on it at once. The drain used to keep
    # serving such a connection until shutdown_timeout (30 s here).
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    body = b'{"email": "nobody@example.com", "password": "not the password"}'

    async def one_request() -> bytes:
        writer.write(
            b"POST /users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 16):
            writer.write(body[start : start + 16])
            await writer.drain()
            await asyncio.sleep(0.06)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        return head

    try:
        assert (await one_request()).startswith(b"HTTP/1.1 401 ")
        in_flight = asyncio.create_task(one_request())
        await asyncio.sleep(0.15)  # its body is half sent
        live.gateway.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        head = await in_flight
        # Answered, and told that the connection ends with it.
        assert head.startswith(b"HTTP/1.1 401 ")
        assert b"\r\nConnection: close\r\n" in head, head
        served_after: list[bytes] = []
        while time.monotonic() - stopped_at < 15:
            try:
                served_after.append(await one_request())
            except (asyncio.IncompleteReadError, ConnectionError):
                break
        code = await asyncio.to_thread(live.gateway.finish, 15)
    finally:
        writer.close()
    assert served_after == []
    assert code == 0
    assert time.monotonic() - stopped_at < 10


# A process whose signal handlers another handler (a supervisor's run) took over and gave up,
# and whose clean-up then takes a while (stopping an embedded server).
_HANDLERS_TAKEN_BACK = textwrap.dedent(
    """
    import asyncio, signal, sys
    from gateway.logs import configure_logging
    from gateway.shutdown import StopSignals

    async def main():
        stop = asyncio.Event()
        signals = StopSignals(stop)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)  # as Supervisor.run does
        print("ready", flush=True)
        await stop.wait()
        loop.remove_signal_handler(signal.SIGTERM)  # ... on its way out
        if sys.argv[1] == "listen-again":
            signals.listen_again()
        print("cleaning-up", flush=True)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("forced" if signals.forced else "not-forced", flush=True)
            return 3

    configure_logging("info", "json", sys.stderr)
    sys.exit(asyncio.run(main()))
    """
)


@pytest.mark.parametrize("mode", ["listen-again", "as-before"])
def test_a_signal_after_the_supervisor_gave_up_its_handlers_forces_the_stop(mode: str) -> None:
    """Supervisor.run removes its SIGTERM handler when it returns; the clean-up that follows
    (the embedded server's stop) must not then be killed by the next SIGTERM."""
    process = _start_script(_HANDLERS_TAKEN_BACK, mode)
    assert process.stdout is not None
    process.send_signal(signal.SIGTERM)
    assert process.stdout.readline() == "cleaning-up\n"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=20)
    if mode == "as-before":  # what happened without listen_again: killed outright
        assert process.returncode == -signal.SIGTERM
        return
    assert (process.returncode, stdout) == (3, "forced\n"), stderr
    assert [e["signal"] for e in _events(stderr) if e["event"] == "stop_forced"] == ["SIGTERM"]
