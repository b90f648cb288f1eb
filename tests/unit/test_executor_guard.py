"""The command's guard (gateway.executor.guard), with real processes: the command sees exactly
what it would without a guard (argv, environment, exit status, output), and its whole process
group is stopped when the executor's end of the guard's socket closes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.executor.command import RunningCommand
from gateway.executor.guard import render_line
from gateway.logs import configure_logging, get_logger
from tests.acceptance.process_helpers import until_gone

PATH = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
ROOT = Path(__file__).resolve().parents[2]


async def _start_stubborn_group(**options: Any) -> tuple[RunningCommand, list[int]]:
    """A command that ignores SIGTERM, as does the background child it starts; with the pids
    of the child and of the command (``options`` go to RunningCommand.start)."""
    script = "trap '' TERM; sleep 60 & echo $!; echo $$; wait"
    command = await RunningCommand.start(["sh", "-c", script], PATH, **options)
    out = command.process.stdout
    assert out is not None
    return command, [int(await out.readline()), int(await out.readline())]


async def test_exit_codes_signals_and_output_are_the_commands() -> None:
    failed = await RunningCommand.start(["sh", "-c", "echo out; echo err >&2; exit 3"], PATH)
    assert (await failed.wait()).exit_code == 3
    assert failed.tail.text() == "out\nerr\n"
    killed = await RunningCommand.start(["sh", "-c", "kill -9 $$"], PATH)
    assert (await killed.wait()).description == "killed by SIGKILL"


async def test_the_environment_reaches_the_command_exactly() -> None:
    # Not even what Python would add for itself (LC_CTYPE under a C locale) or take from
    # PYTHON* variables: the command's environment is the one it was given, undecodable bytes
    # included.
    env = {**PATH, "LANG": "C", "PYTHONPATH": "/nowhere", "ODD": "a\udcffb", "EMPTY": ""}
    command = await RunningCommand.start(["env", "-0"], env)
    result = await command.wait()
    assert result.exit_code == 0
    seen = dict(line.split("=", 1) for line in result.output.split("\0") if line)
    assert seen == {**env, "ODD": "a\ufffdb"}  # the byte 0xff, read back as text


async def test_a_command_that_cannot_be_executed_raises_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        await RunningCommand.start(["/nonexistent/deploy.sh"], PATH)
    with pytest.raises(PermissionError):
        await RunningCommand.start([os.devnull], PATH)


async def test_terminate_reaches_the_command_which_decides_how_to_end() -> None:
    trapping = await RunningCommand.start(
        ["sh", "-c", "trap 'echo stopping; exit 143' TERM; sleep 30 & echo ready; wait"], PATH
    )
    assert await trapping.process.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    await trapping.terminate(kill_after=10)
    assert (await trapping.wait()).exit_code == 143
    stubborn = await RunningCommand.start(["sh", "-c", "trap '' TERM; echo ready; sleep 30"], PATH)
    assert await stubborn.process.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    await stubborn.terminate(kill_after=0.2)
    assert (await stubborn.wait()).description == "killed by SIGKILL"


async def test_terminate_also_ends_a_child_that_outlives_the_command() -> None:
    # The command exits on SIGTERM; its background child ignores it and no longer holds the
    # output pipe, so only the SIGKILL after kill_after ends it, and terminate waits for that.
    script = "(trap '' TERM; exec sleep 60) >/dev/null 2>&1 & echo $!; wait"
    command = await RunningCommand.start(["sh", "-c", script], PATH)
    out = command.process.stdout
    assert out is not None
    child = int(await out.readline())

    await command.terminate(kill_after=0.3)

    assert (await command.wait()).description == "killed by SIGTERM"
    await until_gone([child], within=1)


async def test_closing_the_executors_end_stops_the_whole_group() -> None:
    # What the executor's death does: its end of the socket closes. The command and its child
    # ignore SIGTERM, so the guard's SIGKILL after kill_after is what ends them.
    command, pids = await _start_stubborn_group(kill_after=0.2)

    command._control.close()

    await until_gone(pids, within=10)
    assert await asyncio.wait_for(command.process.wait(), 10) == -signal.SIGKILL


@pytest.fixture
def console_logs() -> Iterator[None]:
    configure_logging("info", "console")
    yield
    configure_logging("info", "json")


async def test_the_orphan_warning_comes_in_the_executors_log_format(
    console_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    command = await RunningCommand.start(
        ["sh", "-c", "sleep 60"], PATH, kill_after=0.2, context={"run_id": "r-1"}
    )
    command._control.close()
    assert await asyncio.wait_for(command.process.wait(), 10) == -signal.SIGKILL
    [line] = [line for line in capfd.readouterr().err.splitlines() if "command_orphaned " in line]
    assert not line.startswith("{")
    assert "[warning  ] command_orphaned " in line and " run_id=r-1" in line


@pytest.mark.parametrize(
    "fields",
    [
        {"reason": "the executor is gone; stopping", "pid": 12, "kill_after": 5.0, "run_id": "abc"},
        {"pid": 7, "run_id": 'it\'s "quoted"', "empty": "", "eq": "a=b", "tab": "a\tb"},
    ],
)
def test_a_console_line_is_laid_out_as_structlog_lays_out_the_executors_own(
    fields: dict[str, object],
) -> None:
    out = io.StringIO()
    configure_logging("info", "console", out)
    try:
        get_logger("gateway.executor.guard").warning("command_orphaned", **fields)
    finally:
        configure_logging("info", "json")
    timestamp = out.getvalue().split(" ", 1)[0]
    assert (
        render_line("console", "command_orphaned", "warning", timestamp, **fields) == out.getvalue()
    )
    line = orjson.loads(render_line("json", "command_orphaned", "warning", timestamp, **fields))
    assert list(line)[:2] == ["event", "level"] and line["pid"] == fields["pid"]


async def test_a_guard_left_unattended_stops_the_group_on_its_own(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # What a stopped (SIGSTOP) or hung executor leaves: a socket that stays open, but no word
    # that the lease was renewed. The command ignores SIGTERM: the SIGKILL half of kill_after
    # later ends it, the guard with it.
    command, pids = await _start_stubborn_group(
        kill_after=0.4, context={"run_id": "r-2"}, unattended_after=0.5
    )
    await until_gone(pids, within=10)
    assert (await asyncio.wait_for(command.wait(), 10)).exit_code == -signal.SIGKILL
    events = [orjson.loads(line) for line in capfd.readouterr().err.splitlines()]
    [unattended] = [e for e in events if e["event"] == "command_unattended"]
    assert (unattended["run_id"], unattended["kill_after"]) == ("r-2", 0.2)
    assert [e["event"] for e in events if e["event"].endswith("_killed")] == [
        "command_unattended_killed"
    ]


async def test_renewals_keep_the_command_running_and_terminate_disarms_the_guard() -> None:
    # The command takes 1 s to end after SIGTERM, well past the guard's deadline of 0.3 s: its
    # exit status 143 shows the guard let it (it would have been killed by SIGKILL).
    script = "trap 'sleep 1; exit 143' TERM; echo ready; sleep 60 & wait"
    command = await RunningCommand.start(
        ["sh", "-c", script], PATH, kill_after=0.2, unattended_after=0.3
    )
    assert await command.process.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    for _ in range(10):  # 1.5 s, five times the deadline, renewed every 0.15 s
        command.attend(0.3)
        await asyncio.sleep(0.15)
    assert command.process.returncode is None
    await command.terminate(kill_after=10)
    assert (await command.wait()).exit_code == 143


async def test_an_executor_that_stops_while_terminating_leaves_the_sigkill_to_the_guard(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # The executor sends SIGTERM, then is stopped (SIGSTOP) or hangs before its SIGKILL
    # kill_after later: here its terminate() is cancelled after the SIGTERM. The command
    # ignores SIGTERM; the guard, told that the executor was terminating, sends the SIGKILL
    # half of kill_after late instead of letting the command outlive the lease.
    command, pids = await _start_stubborn_group(
        kill_after=0.2, context={"run_id": "r-3"}, unattended_after=30
    )
    terminating = asyncio.create_task(command.terminate(kill_after=0.4))
    await asyncio.sleep(0.1)
    terminating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await terminating
    await until_gone(pids, within=5)
    assert (await asyncio.wait_for(command.wait(), 10)).exit_code == -signal.SIGKILL
    events = [orjson.loads(line) for line in capfd.readouterr().err.splitlines()]
    unattended = [e for e in events if e["event"].startswith("command_")]
    assert [e["event"] for e in unattended] == ["command_unattended", "command_unattended_killed"]
    assert "did not send SIGKILL in time" in unattended[0]["reason"]


async def test_a_renewal_sent_in_time_but_read_late_still_counts() -> None:
    # The guard is not scheduled (here: stopped) from before the renewal until past the
    # deadline the renewal replaced; it reads the renewal only then, and must not stop the
    # command for a deadline that no longer holds.
    script = "trap 'exit 143' TERM; echo ready; sleep 60 & wait"
    # 2 s: the start and the stop below must come before it, on a loaded machine too.
    command = await RunningCommand.start(
        ["sh", "-c", script], PATH, kill_after=0.2, unattended_after=2.0
    )
    assert await command.process.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    os.kill(command.process.pid, signal.SIGSTOP)  # the guard
    try:
        command.attend(30)
        await asyncio.sleep(2.5)
    finally:
        os.kill(command.process.pid, signal.SIGCONT)
    await asyncio.sleep(0.5)
    assert command.process.returncode is None
    await command.terminate(kill_after=10)
    assert (await command.wait()).exit_code == 143


async def test_a_command_is_over_when_it_exits_not_when_its_background_child_does() -> None:
    # The background child keeps the output pipe open; the run ends with the command (its
    # output read for at most a short while after), not 12 s later with the child.
    command = await RunningCommand.start(["sh", "-c", "sleep 12 & echo $!; echo started"], PATH)
    out = command.process.stdout
    assert out is not None
    child = int(await out.readline())
    started = asyncio.get_running_loop().time()
    try:
        result = await asyncio.wait_for(command.wait(), 20)
        assert asyncio.get_running_loop().time() - started < 6
        assert (result.exit_code, result.output) == (0, "started\n")
    finally:
        os.kill(child, signal.SIGKILL)
    # What the child holds is read to its end, then closed (not left to the collector).
    for _ in range(100):
        if out.at_eof():
            break
        await asyncio.sleep(0.05)
    assert out.at_eof()


_REAPERLESS_STOP = """
import asyncio, ctypes, os, sys, time
from gateway.executor.command import RunningCommand

async def main() -> None:
    # As PID 1 of a container is: the group's orphans become this process's children, and
    # nothing here reaps them (asyncio waits only for the children it started).
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # CHILD_SUBREAPER
    script = "sleep 60 >/dev/null 2>&1 & echo $!; wait"
    command = await RunningCommand.start(["sh", "-c", script], {"PATH": os.environ["PATH"]})
    await command.process.stdout.readline()
    started = time.monotonic()
    await command.terminate(kill_after=10)
    print(time.monotonic() - started)
    await command.wait()

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a child subreaper: Linux")
async def test_terminate_does_not_wait_for_members_that_are_only_zombies() -> None:
    # The command and its background child both end on SIGTERM; the child, an orphan by then,
    # stays a zombie of the executor, which is still in the group: terminate returns at once
    # all the same, not after kill_after.
    root = str(ROOT)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _REAPERLESS_STOP,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert child.returncode == 0, err.decode()
    assert float(out.decode().strip().splitlines()[-1]) < 3.0
