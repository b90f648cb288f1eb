"""One deadline for stopping a process: draining the listeners and stopping the services share
``[server] shutdown_timeout``, instead of each taking a full one (a worker would otherwise be
killed by its supervisor while its dispatcher still waits for deliveries in flight)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gateway.logs import get_logger

if TYPE_CHECKING:
    from gateway.config import Config

log = get_logger(__name__)

SHUTDOWN = "shutdown"  # key in app[appkeys.SERVICES]
# Extra seconds a stop gets beyond shutdown_timeout (pool close, batcher flush): then a
# supervisor kills the worker, and a process of its own forces its stop (StopSignals).
KILL_GRACE = 5.0


def stop_bound(config: Config) -> float:
    """Seconds after the first stop signal past which a stop is overdue: a supervisor kills
    its worker then, and a process of its own forces its stop."""
    server = config.server
    return server.drain_delay + server.shutdown_timeout + KILL_GRACE


# What a supervisor sends its workers to force their stop (its own second signal). SIGTERM and
# SIGINT only ever begin a worker's graceful stop: they may reach it twice for one stop.
WORKER_FORCE_SIGNAL = signal.SIGUSR1


class Shutdown:
    """Set once the process starts stopping: its deadline, and what to tell services then (a
    dispatcher stops claiming new deliveries while requests in flight are still draining)."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._on_begin: list[Callable[[], None]] = []
        self._announced = False

    @property
    def announced(self) -> bool:
        """The process is stopping, or will once ``[server] drain_delay`` is over: readiness
        probes fail from now on."""
        return self._announced or self.begun

    def announce(self) -> None:
        """A stop is coming: the listeners still serve, but /readyz says 503."""
        self._announced = True

    @property
    def begun(self) -> bool:
        return self._deadline is not None

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when stopping begins (at once if it has)."""
        if self.begun:
            callback()
        else:
            self._on_begin.append(callback)

    def begin(self, seconds: float) -> None:
        """Start stopping: everything still to do must be done within ``seconds``."""
        if self.begun:
            return
        self._deadline = asyncio.get_running_loop().time() + seconds
        callbacks, self._on_begin = self._on_begin, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one service's failure must not keep the others running
                log.exception("shutdown_callback_failed", callback=repr(callback))

    def remaining(self, default: float) -> float:
        """Seconds left before the deadline (never negative); ``default`` before stopping
        has begun (a service stopped on its own, as in tests)."""
        if self._deadline is None:
            return default
        return max(0.0, self._deadline - asyncio.get_running_loop().time())


# After a forced stop has cancelled the main task, the seconds its clean-up (pool close, the
# embedded server's stop) gets before the process exits regardless.
FORCED_EXIT_AFTER = 30.0
_MAX_TASKS_SHOWN, _MAX_FRAMES_SHOWN = 20, 6


class StopSignals:
    """SIGTERM and SIGINT for a process's main task.

    While the process is still starting (``starting=True`` until ``started()``: the database,
    the embedded server, the schema), nothing is in flight yet and the first signal cancels
    the main task at once instead of letting a connect or a lock wait run to its timeout;
    ``forced_exit`` then logs ``stopped_while_starting`` and returns 0.

    A start that **failed** is not stopped: once its failure is known (``failing``: a database
    that refused, a key file missing, a port taken), a signal lets its clean-up finish (the
    pool, the embedded server) and the process exits with the failure's status, as without the
    signal (a service manager must see a failed start, not a clean stop). The signal is logged
    (``stop_while_failing``) and counts as a first one: a second one forces the stop, whose
    status is still the failure's.

    Once started, the first sets ``stop``: stop accepting, finish what is in flight. A second
    one (Ctrl-C again), or a stop still not done ``overdue_after`` seconds after the first,
    **forces** it: the stop is logged with what every task was waiting for (``stop_overdue``),
    the main task is cancelled, so its clean-up (the pool, an embedded PostgreSQL) still runs,
    and if even that is not done within FORCED_EXIT_AFTER seconds, or a third signal comes, the
    process exits with status 1 at once. Nothing answered 2xx is lost by a forced stop: a
    request is answered only once its rows are committed.
    """

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        overdue_after: float | None = None,
        starting: bool = False,
        force_signal: signal.Signals | None = None,
    ) -> None:
        """``force_signal`` (a supervisor's worker, WORKER_FORCE_SIGNAL): only that signal
        forces the stop; a repeated SIGTERM/SIGINT does not (it is the same stop reaching the
        worker twice: a terminal's Ctrl-C or a service manager's stop sent to the whole process
        group, and the supervisor forwarding it)."""
        self._stop = stop
        self._starting = starting
        self._force_signal = force_signal
        self._start_cancelled_by: str | None = None
        self._failure: Exception | None = None
        self._main = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._overdue_after = overdue_after
        self._overdue: asyncio.TimerHandle | None = None
        self.forced = False
        self._listen()

    def _listen(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._received, sig.name)
        if self._force_signal is not None:
            self._loop.add_signal_handler(self._force_signal, self._received_force)

    def request_stop(self) -> None:
        """Stop as a first signal does, for a reason of the process's own (its embedded
        database is gone); nothing more when stopping has begun."""
        if not self._stop.is_set():
            self._stop.set()
            if self._overdue_after is not None:
                self._overdue = self._loop.call_later(self._overdue_after, self._overdue_now)

    def started(self) -> None:
        """The start is done: from now on the first signal stops gracefully."""
        self._starting = False

    @contextmanager
    def failing(self) -> Iterator[None]:
        """Around a step whose failure ends the process (the start, mostly): an exception
        leaving the block is taken as the process's outcome before the clean-up outside the
        block awaits anything, so that a stop signal no longer turns it into a clean stop."""
        try:
            yield
        except Exception as failure:
            if self._failure is None and self._start_cancelled_by is None:
                # (After a signal cancelled the start, what fails is that cancellation's doing.)
                self._failure = failure
            raise

    def listen_again(self) -> None:
        """Take SIGTERM and SIGINT back after another handler had them and gave them up (the
        supervisor's, whose ``run`` removes its own on the way out). The stop has begun, so the
        next signal forces it; without this one would kill the process outright, halfway
        through its clean-up (an embedded server left running)."""
        self._stop.set()
        self._listen()

    def forced_exit(self, cancelled: asyncio.CancelledError, event: str, **fields: Any) -> int:
        """For the main task's ``except asyncio.CancelledError``: once this stop was forced,
        log ``event`` (``forced=True``) and return the exit status, 1, or raise the failure the
        process was cleaning up after (``failing``: its own status, so an ``exit_code`` among
        ``fields``, the 1 returned otherwise, is left out of the line); any other cancellation
        is raised again."""
        if self.forced:
            if self._failure is not None:
                fields.pop("exit_code", None)
                log.warning(event, forced=True, **fields)
                raise self._failure
            log.warning(event, forced=True, **fields)
            return 1
        if self._start_cancelled_by is not None:
            log.info("stopped_while_starting", signal=self._start_cancelled_by)
            return 0
        raise cancelled

    def _received(self, name: str) -> None:
        if not self._stop.is_set() and self._failure is not None:
            log.info(
                "stop_while_failing",
                signal=name,
                hint="the process failed already: its clean-up goes on, then it exits with "
                "the failure's status",
            )
            self.request_stop()
            return
        if not self._stop.is_set() and self._starting and self._main is not None:
            log.info("stop_while_starting", signal=name, hint="the start is cancelled")
            self._start_cancelled_by = name
            self._stop.set()  # the next signal forces, as after any first one
            self._main.cancel()
            self._loop.call_later(FORCED_EXIT_AFTER, _exit_now)  # a bound for the clean-up
            return
        if not self._stop.is_set():
            self.request_stop()
            return
        if self._force_signal is not None:
            log.debug("stop_signal_repeated", signal=name)  # the stop goes on as it was
            return
        self._received_force(name)

    def _received_force(self, name: str | None = None) -> None:
        name = name or (self._force_signal.name if self._force_signal else "")
        if self.forced:
            log.error("stop_forced_exit", signal=name)
            _exit_now()
        log.warning(
            "stop_forced",
            signal=name,
            hint="a second signal: requests and deliveries in flight are cancelled (not "
            "answered, so senders retry them); a third one exits at once",
        )
        self._force()

    def _overdue_now(self) -> None:
        log.error(
            "stop_overdue",
            after_s=self._overdue_after,
            waiting=_task_stacks(self._main),
            hint="the stop did not finish in time; cancelling what is left",
        )
        self._force()

    def _force(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
        self.forced = True
        if self._start_cancelled_by is not None:
            return  # cancelled already, its clean-up runs (and is bounded): cancel it not again
        if self._main is not None:
            self._main.cancel()
        self._loop.call_later(FORCED_EXIT_AFTER, _exit_now)


def _exit_now() -> None:
    logging.shutdown()  # flush the log handlers: os._exit skips every clean-up
    os._exit(1)


def _task_stacks(main: asyncio.Task[Any] | None) -> list[str]:
    """One line per pending task, ``main`` first (at most ``_MAX_TASKS_SHOWN``): its name and
    the chain of awaits it is suspended in, outer to inner (the innermost ``_MAX_FRAMES_SHOWN``;
    Task.get_stack shows only the outermost)."""
    shown = []
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task is not main)
    for task in tasks[:_MAX_TASKS_SHOWN]:
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 100:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            frame = frame or getattr(awaited, "gi_frame", None)
            if frame is None:  # a future, or a coroutine that has finished
                chain.append(type(awaited).__name__)
                break
            code = frame.f_code
            chain.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
            awaited = (
                getattr(awaited, "cr_await", None)
                or getattr(awaited, "ag_await", None)
                or getattr(awaited, "gi_yieldfrom", None)
            )
        shown.append(f"{task.get_name()}: {' -> '.join(chain[-_MAX_FRAMES_SHOWN:])}")
    return shown
