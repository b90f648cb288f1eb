"""The guard between ``gateway executor`` and one run's command: the command dies with the executor.

The executor starts this file (``python -I -S guard.py``: standard library only, nothing from
the environment) in a session of its own, so the guard leads the process group that the command
and everything it starts belong to. The two share a socket pair, whose other end only the
executor holds (it is close-on-exec, and never passed to another child):

1. The executor sends one message: the command's argv and environment, how long the command
   may take to stop, and a log context (the run id). The guard starts the command in its own
   group, with exactly that argv and environment and the guard's stdin/stdout/stderr (the
   executor's output capture), and answers ``("started", pid)`` or ``("error", errno,
   strerror)`` when it cannot be executed.
2. When the command exits, the guard exits the same way: with its exit code, or killed by the
   same signal, so the executor sees what it would have seen without a guard.
3. When the socket reaches end-of-file before that, the executor is gone (killed, crashed, its
   host's service manager stopped only its main pid): the guard writes ``command_orphaned``
   to the executor's log stream (a copy of the executor's stderr it was given, in the
   executor's log format; the output capture has no reader any more), sends SIGTERM to the
   whole group, and SIGKILL once the command has exited or the grace is over. A live executor
   stops its command itself a margin (a third of the lease, at most 10 s) before the lease it
   last renewed runs out, so a dead one left at least that margin, and the grace is half of
   it: no other executor can have claimed the run yet, and one run never executes twice at
   once.
4. When the executor is alive but does not renew the run's lease in time (it was sent
   SIGSTOP, it hangs, its event loop is blocked), the guard stops the group the same way,
   logging ``command_unattended``. The executor gives the guard a deadline with the start
   request and after each renewal (``("attend", seconds)``): a quarter of the margin after the
   executor's own local deadline, when a live executor would have begun stopping the command
   and told the guard so (``("terminating", kill_after)``, which replaces that deadline).
   SIGKILL follows another quarter of the margin later, so the command is gone half the margin
   before the lease can expire. An executor stopping the command itself sends SIGKILL
   ``kill_after`` after its SIGTERM; should it stop or hang in between, the guard sends it half
   of ``kill_after`` later (``command_unattended`` too), still before the lease can expire.

The executor's own SIGTERM/SIGKILL to the group (a cancelled run, a lost lease, shutdown) reach
the guard too: it ignores SIGTERM (the command decides how to end) and dies with SIGKILL like
the rest of the group. On Linux the command itself also gets ``PR_SET_PDEATHSIG(SIGKILL)``:
should the guard be killed on its own (an OOM kill), its direct child does not live on.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time

# Imports only the rarely taken paths need wait until then: the guard's start-up delays every
# run's start (typing, json, datetime and ctypes would add about a third to it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_HEADER = 4  # bytes of a frame's big-endian length
_MAX_FRAME = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def frame(value: Any) -> bytes:
    """``value`` as one length-prefixed frame (marshal: a str with surrogates survives)."""
    data = marshal.dumps(value)
    return len(data).to_bytes(_HEADER, "big") + data


def parse_frame(data: bytes) -> tuple[Any, bytes] | None:
    """``(value, rest)`` when ``data`` starts with a whole frame, else None."""
    if len(data) < _HEADER:
        return None
    size = int.from_bytes(data[:_HEADER], "big")
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    if len(data) < _HEADER + size:
        return None
    # Only ever from the other end of a private socket pair: the executor, or its own guard.
    value = marshal.loads(data[_HEADER : _HEADER + size])  # noqa: S302
    return value, data[_HEADER + size :]


def _receive_frame(sock: socket.socket) -> Any:
    """One frame; None when the socket ends first (the executor died before sending it)."""
    data = b""
    while (parsed := parse_frame(data)) is None:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return parsed[0]


def _die_with_parent() -> None:
    """In the command, before exec (Linux): SIGKILL when the guard dies."""
    import ctypes  # Linux only, and the guard itself never needs it

    guard = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != guard:  # the guard died before the prctl
        os._exit(137)


def render_line(fmt: str, event: str, level: str, timestamp: str, **fields: Any) -> str:
    """One log line as the executor's own format renders it: JSON with the event first, or
    structlog's plain console layout (``gateway.logs``), without colours."""
    logger = "gateway.executor.guard"
    if fmt != "console":
        import json

        line = {"event": event, "level": level, "logger": logger, "timestamp": timestamp}
        return json.dumps({**line, **fields}) + "\n"
    pairs = " ".join(f"{key}={_console_value(fields[key])}" for key in sorted(fields))
    return f"{timestamp} [{level:<9}] {event:<30} [{logger}] {pairs}".rstrip() + "\n"


def _console_value(value: Any) -> str:
    """A value as structlog's console renderer shows it: plain strings bare, the rest repr()."""
    if isinstance(value, str) and not set(value) & {" ", "\t", "=", "\r", "\n", '"', "'"}:
        return value
    return repr(value)


def _log(fd: int, fmt: str, event: str, level: str, **fields: Any) -> None:
    """One line in the executor's log format (event first) on ``fd``; never raises."""
    from datetime import UTC, datetime

    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with contextlib.suppress(OSError, ValueError):
        os.write(fd, render_line(fmt, event, level, timestamp, **fields).encode())


def _exit_like(code: int) -> None:
    """Exit with the command's status: its exit code, or killed by its signal."""
    if code >= 0:
        os._exit(code)
    sig = -code
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSEGV here is not ours to dump
    with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal that does not end a process (SIGCHLD...)


ORPHANED = (
    "command_orphaned",
    "the executor that started the command is gone; stopping its process group",
)
UNATTENDED = (
    "command_unattended",
    "the executor did not renew the run's lease in time (stopped, hung or paused); stopping "
    "the command's process group before the lease can expire",
)
UNFINISHED = (
    "command_unattended",
    "the executor began stopping the command but did not send SIGKILL in time (stopped, hung "
    "or paused); sending it",
)


def _stop_group(
    child: subprocess.Popen[bytes],
    selector: selectors.BaseSelector,
    grace: float,
    log: tuple[int, str],
    context: dict[str, Any],
    why: tuple[str, str] = ORPHANED,
) -> None:
    """The executor is gone or not attending: SIGTERM the group, SIGKILL it (the guard too)
    after ``grace``."""
    started = time.monotonic()
    event, reason = why
    _log(*log, event, "warning", reason=reason, pid=child.pid, kill_after=grace, **context)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
    deadline = started + grace
    while child.poll() is None and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(key.fd, 512)
    if child.returncode is None:
        _log(*log, f"{event}_killed", "warning", pid=child.pid, **context)
    # Whatever is left of the group (background children that ignored SIGTERM), and the guard.
    os.killpg(0, signal.SIGKILL)


def _earliest(*deadlines: float | None) -> float | None:
    """The first of the deadlines that are set, or None."""
    return min((when for when in deadlines if when is not None), default=None)


def main(argv: list[str]) -> None:
    """``guard.py CONTROL_FD LOG_FD``: see the module docstring."""
    control = socket.socket(fileno=int(argv[1]))
    log_fd = int(argv[2])
    # Before anything can reach us: SIGTERM to the group is for the command (a Python handler,
    # unlike SIG_IGN, is reset to the default in the command by exec).
    signal.signal(signal.SIGTERM, lambda *_: None)
    request = _receive_frame(control)
    if request is None:
        os._exit(1)  # the executor died before telling us what to run
    context: dict[str, Any] = request.get("context", {})
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        # The executor's configured command (argv, no shell), as it would have started it.
        child = subprocess.Popen(  # noqa: S603
            request["argv"],
            env=request["env"],
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as exc:
        control.sendall(frame(("error", exc.errno or 0, exc.strerror or str(exc))))
        os._exit(127)
    with contextlib.suppress(OSError):
        control.sendall(frame(("started", child.pid)))
    selector = selectors.DefaultSelector()
    selector.register(wake_read, selectors.EVENT_READ, "wake")
    selector.register(control, selectors.EVENT_READ, "control")
    log = (log_fd, str(request.get("log_format", "json")))
    kill_after = float(request["kill_after"])
    unattended_after = request.get("unattended_after")
    attend_by = None if unattended_after is None else time.monotonic() + unattended_after
    # Set by ("terminating", seconds): the executor's SIGKILL is due by then, or it is not
    # attending (stopped, hung) and the guard sends it.
    killed_by: float | None = None
    received = b""
    while (code := child.poll()) is None:
        due = _earliest(attend_by, killed_by)
        left = None if due is None else max(0.0, due - time.monotonic())
        events = selector.select(left)
        if not events and left is not None:
            # The deadline, or a signal past it (after SIGSTOP/SIGCONT the select gives up
            # without looking again): what came meanwhile is read before the deadline counts.
            events = selector.select(0)
        for key, _ in events:
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
                continue
            try:
                data = control.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(control)
                _stop_group(child, selector, kill_after, log, context)
                continue
            received += data
            while (parsed := parse_frame(received)) is not None:
                message, received = parsed
                if message[0] == "attend":  # the lease was renewed: a new deadline
                    attend_by = time.monotonic() + float(message[1])
                elif message[0] == "terminating":  # the executor stops the command itself
                    attend_by = None  # (a later renewal, at shutdown, sets it again)
                    by = time.monotonic() + float(message[1]) * 1.5
                    killed_by = by if killed_by is None else min(killed_by, by)
        # Only after reading what came meanwhile: a renewal sent in time but read late (this
        # guard was not scheduled, or stopped with the executor) still counts.
        due = _earliest(attend_by, killed_by)
        now = time.monotonic()
        if due is not None and now >= due and child.poll() is None:
            if killed_by is not None and now >= killed_by:
                # The executor's SIGTERM went out long ago: SIGKILL at once.
                _stop_group(child, selector, 0.0, log, context, UNFINISHED)
            else:
                _stop_group(child, selector, kill_after / 2, log, context, UNATTENDED)
    _exit_like(code)


if __name__ == "__main__":
    main(sys.argv)
