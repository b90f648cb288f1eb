"""Running one run's command: its environment, a bounded output tail, and termination.

The command is an argv list (never a shell string), started by a small guard process
(:mod:`gateway.executor.guard`) that leads a session of its own: terminating the group reaches
the command and its children (``sh -c``), and the guard stops that group when the executor dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.executor.guard import frame, parse_frame
from gateway.logs import log_format
from gateway.run_states import OUTPUT_LIMIT_BYTES, with_truncation_note

VAR_PREFIX = "HOOK_VAR_"
_NOT_ENV_SAFE = re.compile(r"[^A-Za-z0-9_]")
_READ_CHUNK = 64 * 1024
# After the command exits, background children may still hold its output pipe open.
_DRAIN_AFTER_EXIT = 2.0
_EXIT_POLL = 0.1  # seconds between looks at the exit status while that pipe stays open
# Readers of the output pipes that background children hold after their command's run ended
# (asyncio keeps only weak references to tasks).
_LINGERING: set[asyncio.Task[None]] = set()
GUARD = Path(__file__).with_name("guard.py")


def env_name(variable: str) -> str:
    """``source_ref`` → ``HOOK_VAR_SOURCE_REF`` (characters a shell cannot name become ``_``)."""
    return VAR_PREFIX + _NOT_ENV_SAFE.sub("_", variable).upper()


def env_value(value: Any) -> str:
    """Strings as they are, null as empty, everything else as JSON (``42``, ``true``, ``[1]``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def command_env(base: Mapping[str, str], run: Mapping[str, Any]) -> dict[str, str]:
    """``base`` (the executor's environment, minus inherited HOOK_* values and the gateway's
    own GATEWAY_* settings) plus the run's variables as ``HOOK_VAR_<NAME>`` and ``HOOK_RUN_ID``,
    ``HOOK_PIPELINE_ID``, ``HOOK_ATTEMPT``.

    GATEWAY_* goes because it carries the executor's credentials (GATEWAY_DATABASE_DSN with its
    password, GATEWAY_SECURITY_SECRET_KEYS, GATEWAY_ADMIN_PASSWORD), which a command started by
    a webhook has no business reading; so do libpq's PGPASSWORD and PGPASSFILE (asyncpg reads
    them for the executor's own connection). See also :func:`hide_environment`."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(("HOOK_", "GATEWAY_")) and k not in _EXECUTOR_CREDENTIALS
    }
    for name, value in (run["variables"] or {}).items():
        env[env_name(name)] = env_value(value).replace("\x00", "")
    env["HOOK_RUN_ID"] = str(run["id"])
    env["HOOK_PIPELINE_ID"] = str(run["pipeline_id"])
    env["HOOK_ATTEMPT"] = str(run["attempt"])
    return env


# Linux: one argument or environment string ("NAME=value") holds at most 32 pages, its NUL
# included; execve refuses more with E2BIG ("Argument list too long").
MAX_ARG_STRLEN = 32 * 4096


def too_large(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """Why execve answered E2BIG for ``argv`` with ``env``, naming what is too large (the
    environment strings longer than one may be, else the total), never a value."""

    def size(text: str) -> int:
        return len(text.encode("utf-8", errors="surrogateescape")) + 1  # and its NUL

    entries = {name: size(f"{name}={value}") for name, value in env.items()}
    over = sorted((n for n, s in entries.items() if s > MAX_ARG_STRLEN), key=lambda n: -entries[n])
    if over:
        listed = ", ".join(f"{name} ({entries[name] - 1} bytes)" for name in over)
        return (
            f"{listed} longer than the {MAX_ARG_STRLEN - 1} bytes the system allows one "
            "environment variable"
        )
    total = sum(entries.values()) + sum(size(arg) for arg in argv)
    ours = sum(s for n, s in entries.items() if n.startswith(VAR_PREFIX))
    return (
        f"the command's arguments and environment take {total} bytes ({VAR_PREFIX}* {ours}), "
        "more than the system allows"
    )


# libpq variables that carry the executor's database password (asyncpg honours them too).
_EXECUTOR_CREDENTIALS = frozenset({"PGPASSWORD", "PGPASSFILE"})
_PR_SET_DUMPABLE = 4


def hide_environment() -> bool:
    """Make this process non-dumpable (Linux): its /proc/<pid>/environ, holding the DSN and
    keys, is then readable by root only, not by the commands it starts under the same user.
    True when that worked. (A command still runs as the executor's user: files that user can
    read, such as the config file, are readable to it; run commands as another user to keep
    those out of reach too.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux
        return False


class OutputTail:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int = OUTPUT_LIMIT_BYTES) -> None:
        self.limit = limit
        self.dropped = 0
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]
            self.dropped += excess

    def text(self) -> str:
        """The tail as text (invalid UTF-8 replaced), noting how much was dropped."""
        return with_truncation_note(self.dropped, self._data.decode("utf-8", errors="replace"))


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int  # negative: killed by that signal
    output: str

    @property
    def description(self) -> str:
        """``exit code 3`` or ``killed by SIGTERM``."""
        if self.exit_code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-self.exit_code).name}"
        return f"exit code {self.exit_code}"


def _live_member(group: int) -> bool:
    """Whether a process of ``group`` is still running, not a zombie; True where /proc cannot
    tell. A zombie is still a member (os.killpg finds it) until its parent reaps it, and an
    orphan of the group is reparented to PID 1 or to the nearest subreaper: when that is this
    process (``gateway executor`` as a container's PID 1), nothing reaps it, and a stop would
    wait for it until the SIGKILL it cannot feel."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            return True
    return False


class RunningCommand:
    """A started command whose combined stdout/stderr is collected into an :class:`OutputTail`."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.process = process  # the guard, which exits as the command does
        self._control = control  # closing it (or dying) makes the guard stop the command
        self.tail = OutputTail()
        self.terminated = False

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        kill_after: float = 5.0,
        context: Mapping[str, Any] | None = None,
        unattended_after: float | None = None,
    ) -> RunningCommand:
        """Start ``argv`` under its guard (:mod:`gateway.executor.guard`), which stops the
        command's whole process group, SIGKILL ``kill_after`` seconds after SIGTERM, should this
        process die first; ``context`` (the run id) goes into the guard's log line then.
        ``unattended_after`` (seconds): the guard stops the group then too (SIGKILL half of
        ``kill_after`` after SIGTERM) unless :meth:`attend` moves that deadline first, or
        :meth:`terminate` is called (then the guard sends the SIGKILL, should this process not
        send it in time).

        Raises OSError when the command cannot be executed."""
        ours, theirs = socket.socketpair()  # close-on-exec: no other child inherits ours
        try:
            log_fd = os.dup(2)  # the guard's log stream: our stderr, which outlives us
        except OSError:
            log_fd = os.open(os.devnull, os.O_WRONLY)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",  # nothing from the command's environment (PYTHON*) changes the guard
                "-S",
                str(GUARD),
                str(theirs.fileno()),
                str(log_fd),
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(theirs.fileno(), log_fd),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(log_fd)
        command = cls(process, ours)
        try:
            request = {
                "argv": list(argv),
                "env": dict(env),
                "kill_after": kill_after,
                "context": dict(context or {}),
                "log_format": log_format(),  # its line then looks like ours
                "unattended_after": unattended_after,
            }
            loop = asyncio.get_running_loop()
            ours.setblocking(False)
            await loop.sock_sendall(ours, frame(request))
            answer = await command._answer(loop)
        except BaseException:
            command._signal(signal.SIGKILL)
            await command._close()
            raise
        if answer is None or answer[0] != "started":
            await command._close()
            if answer is None:
                raise OSError(f"its guard exited first ({process.returncode})")
            raise OSError(answer[1], answer[2])
        return command

    async def _answer(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The guard's answer to the start request; None when it closed the socket first."""
        data = b""
        while (parsed := parse_frame(data)) is None:
            chunk = await loop.sock_recv(self._control, 4096)
            if not chunk:
                return None
            data += chunk
        return parsed[0]

    async def _close(self) -> None:
        """After a failed start: wait for the guard, then close its socket."""
        await self.process.wait()
        self._control.close()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.read(_READ_CHUNK):
            self.tail.add(chunk)

    async def wait(self) -> CommandResult:
        """Wait for the command to exit and return its exit code and output tail."""
        reader = asyncio.create_task(self._read())
        code = await self._exited()
        self._control.close()  # only now: before the guard exits, closing it stops the command
        try:
            async with asyncio.timeout(_DRAIN_AFTER_EXIT):
                await asyncio.shield(reader)
        except TimeoutError:
            # A background child still holds the pipe. It is read (and what it writes dropped)
            # until that child closes it: it neither blocks on a full pipe nor dies of SIGPIPE,
            # and the pipe is closed then, not left to the garbage collector.
            _LINGERING.add(reader)
            reader.add_done_callback(_LINGERING.discard)
        return CommandResult(code, self.tail.text())

    async def _exited(self) -> int:
        """The guard's exit status, once it has exited. ``Process.wait()`` alone also waits for
        the output pipe to close (asyncio wakes it only then), which a background child of the
        command holds open for as long as it runs: a run would last as long as a daemon it
        started."""
        exited = asyncio.ensure_future(self.process.wait())
        try:
            while (code := self.process.returncode) is None:
                await asyncio.wait({exited}, timeout=_EXIT_POLL)
        finally:
            exited.cancel()
        return code

    def attend(self, seconds: float) -> None:
        """Tell the guard to stop the command ``seconds`` from now unless told again first (the
        lease was renewed: see ``unattended_after``)."""
        self._tell(("attend", seconds))

    def _tell(self, message: tuple[Any, ...]) -> None:
        # A few bytes on a socket only the guard reads: the buffer never fills. A guard that
        # has exited (the command is over) has nothing left to be told.
        with contextlib.suppress(OSError):
            self._control.send(frame(message))

    async def terminate(self, kill_after: float = 10.0) -> None:
        """SIGTERM the command's process group; SIGKILL what is left of it (the command, or
        children it started, whether or not they hold the output pipe) after ``kill_after``.
        Returns once the whole group is gone."""
        self.terminated = True
        # The guard's own deadline no longer applies; it sends the SIGKILL itself if this
        # process does not (stopped or hung meanwhile), half of kill_after late.
        self._tell(("terminating", kill_after))
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(kill_after):
                await self._group_gone()
        except TimeoutError:
            self._signal(signal.SIGKILL)

    async def _group_gone(self) -> None:
        """Wait for the guard's exit, then for the rest of its process group: a child that
        ignored SIGTERM, or one started as the signal went out, outlives the command."""
        await self._exited()
        # Nothing signals a process group's last member leaving (they are not our children).
        # On a thread: telling a zombie from a live member reads /proc, a file per process.
        while await asyncio.to_thread(self._group_alive):  # noqa: ASYNC110
            await asyncio.sleep(_EXIT_POLL)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # a member we may not signal (it changed user) is still a member
        return _live_member(self.process.pid)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
