"""The reference executor: claim runs of one pipeline, run a command for each, report back.

- Claims when it has a free slot and something may be claimable: woken by LISTEN
  ``hookgate_run_changed`` (a run of its pipeline queued or finished), with a poll every
  ``poll_interval`` as the fallback (expired leases and a lost listener make no notification).
  A lost LISTEN connection (a database restart or failover) is noticed at once and opened again
  with backoff (:class:`~gateway.storage.listener.KeptListener`); once it is back, the executor
  claims and heartbeats every lease at once, to make up for the notifications it missed.
- Heartbeats each lease every ``lease_seconds / 3`` (and at once when a notification says the
  run changed); when a heartbeat is refused (the run was cancelled, e.g. superseded under
  cancel-in-progress, or the lease was lost) it terminates the command and reports nothing: the
  run belongs to someone else now.
- Keeps its own lease deadline (:class:`RunLease`): when the database cannot be reached long
  enough that the lease may have expired there, it terminates the command *before* another
  executor can claim the run, so one run never executes twice at once. A finished run's report
  is retried, with the heartbeats going on, until that same deadline.
- Stops on SIGTERM/SIGINT: no new claims; running commands get ``grace_seconds`` to finish and
  are reported as usual; the rest are terminated and *released* (back to queued, attempt not
  used up), so another executor starts them at once instead of after the lease expires.
  A second signal ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import run_states
from gateway.exceptions import Conflict, DatabaseUnavailable, GatewayError, NotFound
from gateway.executor.command import CommandResult, RunningCommand, command_env, too_large
from gateway.log_throttle import LogThrottle, OutageLog
from gateway.logs import get_logger
from gateway.storage import runs
from gateway.storage.database import Database, Record
from gateway.storage.listener import KeptListener

log = get_logger(__name__)

CHANNEL = "hookgate_run_changed"
_RETRY_AFTER_FAILURE = 1.0  # seconds before a failed heartbeat or report is tried again
_MAX_MARGIN = 10.0  # seconds: the most the local deadline runs ahead of the database's
_MAX_REPORT_PAUSE = 2.0  # seconds between tries of a report while the database is away
_LAST_CHANCE = 0.02  # seconds left on the local deadline below which no heartbeat is tried
# While the database is away: a warning for the first failed claim (and each run's first failed
# heartbeat), then one per interval with the count; the rest are debug lines.
FAILURE_LOG_INTERVAL = 60.0


class RunLease:
    """This executor's view of one run's lease.

    The database's lease ends ``lease_seconds`` after it granted or renewed it, which is no
    earlier than when the claim or heartbeat was *sent*; so the lease is certainly still held
    until ``sent + lease_seconds``. The local deadline comes ``margin`` (a third of the lease,
    at most 10 s) before that: terminating the command then, with SIGKILL after half the
    margin, ends it before the lease can expire and another executor claim the run.
    """

    def __init__(self, seconds: float, sent: float) -> None:
        self.seconds = seconds
        self.margin = min(seconds / 3, _MAX_MARGIN)
        self.deadline = sent + seconds - self.margin
        self.check_now = asyncio.Event()  # set when a notification says the run changed

    def renewed(self, sent: float) -> None:
        self.deadline = max(self.deadline, sent + self.seconds - self.margin)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def kill_after(self) -> float:
        return self.margin / 2

    def unattended_after(self) -> float:
        """Seconds until the command's guard stops the command on its own: a quarter of the
        margin after the local deadline (this process, alive, has begun stopping it by then),
        with SIGKILL another quarter later, half the margin before the lease can expire."""
        return self.remaining() + self.margin / 4


def default_name() -> str:
    """``host:pid``, recorded as the run's ``claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    pipeline_id: int
    command: Sequence[str]
    concurrency: int = 1
    lease_seconds: float = 60.0
    poll_interval: float = 5.0
    grace_seconds: float = 30.0
    name: str = field(default_factory=default_name)

    @property
    def heartbeat_interval(self) -> float:
        return max(self.lease_seconds / 3, 0.2)


class Executor:
    """One executor process: ``await Executor(db, settings).run()`` until :meth:`stop`."""

    def __init__(self, db: Database, settings: ExecutorSettings) -> None:
        self.db = db
        self.settings = settings
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._commands: dict[uuid.UUID, RunningCommand] = {}
        self._leases: dict[uuid.UUID, RunLease] = {}
        # Set when a claim found the pipeline deleted: nothing can ever be claimed again.
        self.pipeline_deleted = False
        # Claims in a row that found the database unavailable.
        self._claim_outage = OutageLog(log, FAILURE_LOG_INTERVAL, "polls")
        self._heartbeat_log = LogThrottle(FAILURE_LOG_INTERVAL)  # keyed by run id
        self._listener = KeptListener(
            db,
            CHANNEL,
            self._on_notify,
            name="executor",
            on_listening=self._catch_up,
            fallback=f"claims every {settings.poll_interval:g} s and heartbeats every "
            f"{settings.heartbeat_interval:g} s until it is back",
        )

    def stop(self) -> None:
        """Stop claiming and drain; a second call ends the grace period at once."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and execute until stopped, then drain."""
        s = self.settings
        log.info(
            "executor_started",
            pipeline_id=s.pipeline_id,
            concurrency=s.concurrency,
            executor=s.name,
        )
        try:
            await self._listener.start()
            while not self._stopping.is_set():
                self._wake.clear()
                free = s.concurrency - len(self._tasks)
                if free > 0:
                    sent = time.monotonic()
                    for row in await self._claim(free):
                        self._start(row, RunLease(s.lease_seconds, sent))
                try:
                    async with asyncio.timeout(s.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            await self._drain()
        finally:
            await self._listener.close()
        log.info("executor_stopped", pipeline_id=s.pipeline_id)

    async def _claim(self, limit: int) -> list[Record]:
        try:
            claimed = await runs.claim(
                self.db,
                pipeline_id=self.settings.pipeline_id,
                limit=limit,
                lease_seconds=self.settings.lease_seconds,
                claimed_by=self.settings.name,
            )
            if not claimed:
                await self._check_pipeline()
        except DatabaseUnavailable as exc:
            self._claim_outage.failed("claim_failed", error=str(exc))
            return []
        except Exception:
            # A bug, or an answer nobody expected: leaving the loop would abandon the commands
            # running now (their runs redone once the leases expire). Log it, try again.
            log.exception("claim_failed_unexpectedly", pipeline_id=self.settings.pipeline_id)
            return []
        if failed := self._claim_outage.recovered():
            log.info("claims_resumed", failed_polls=failed)
        return claimed

    async def _check_pipeline(self) -> None:
        """After a claim that found nothing: stop when the pipeline was deleted meanwhile (its
        runs were cancelled with it, and no run of it can be queued again), rather than poll it
        for ever without a word, as ``gateway executor`` refuses to start for a missing one."""
        if await runs.pipeline_settings(self.db, self.settings.pipeline_id) is None:
            self.pipeline_deleted = True
            log.error(
                "executor_pipeline_deleted",
                pipeline_id=self.settings.pipeline_id,
                hint="nothing can be claimed for it any more; the executor stops",
            )
            self.stop()

    def _start(self, row: Record, lease: RunLease) -> None:
        task = asyncio.create_task(self._execute(row, lease))
        self._tasks[row["id"]] = task
        self._leases[row["id"]] = lease

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.pop(row["id"], None)
            self._leases.pop(row["id"], None)
            self._wake.set()  # a slot is free
            if not done.cancelled() and done.exception() is not None:
                log.error("run_task_crashed", run_id=str(row["id"]), exc_info=done.exception())

        task.add_done_callback(finished)

    # -- one run -------------------------------------------------------------------------------

    async def _execute(self, row: Record, lease: RunLease) -> None:
        run_id, token = row["id"], row["lease_token"]
        context = {
            "run_id": str(run_id),
            "pipeline_id": row["pipeline_id"],
            "attempt": row["attempt"],
        }
        started = time.monotonic()
        log.info("run_started", **context)
        env = command_env(os.environ, row)
        try:
            command = await RunningCommand.start(
                self.settings.command,
                env,
                kill_after=lease.kill_after,  # should this process die, well inside the lease
                context=context,
                unattended_after=lease.unattended_after(),  # or stop renewing it (SIGSTOP)
            )
        except OSError as exc:
            message = f"cannot start {self.settings.command[0]!r}: {exc.strerror or exc}"
            if exc.errno == errno.E2BIG:  # a variable too long for the environment, most often
                message += f": {too_large(self.settings.command, env)}"
            recorded = await self._report(
                run_id, token, lease, run_states.FAILED, message, None, 127, context
            )
            self._log_outcome(context, run_states.FAILED, 127, started, message, recorded)
            return
        self._commands[run_id] = command
        lost: list[str] = []
        beats = asyncio.create_task(self._heartbeats(run_id, token, lease, command, lost))
        try:
            result = await command.wait()
            self._commands.pop(run_id, None)
            if lost:
                # Nothing written: the run is left to its lease expiring in the database.
                self._log_outcome(
                    context, "abandoned", result.exit_code, started, lost[0], recorded=False
                )
            elif command.terminated and result.exit_code != 0:  # stopped by us, at shutdown
                released = await self._release(run_id, token, context)
                self._log_outcome(
                    context, run_states.QUEUED, result.exit_code, started, "released", released
                )
            else:
                # The heartbeats go on while the report is retried: the lease must outlive it.
                status = run_states.COMPLETED if result.exit_code == 0 else run_states.FAILED
                message = self._message(result)
                recorded = await self._report(
                    run_id, token, lease, status, message, result.output, result.exit_code, context
                )
                self._log_outcome(context, status, result.exit_code, started, message, recorded)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            self._commands.pop(run_id, None)

    @staticmethod
    def _message(result: CommandResult) -> str:
        return "" if result.exit_code == 0 else f"command failed: {result.description}"

    async def _heartbeats(
        self,
        run_id: uuid.UUID,
        token: uuid.UUID,
        lease: RunLease,
        command: RunningCommand,
        lost: list[str],
    ) -> None:
        interval = self.settings.heartbeat_interval
        wait = interval
        while True:
            # Never sleep through the deadline: the next beat comes at half the time left at
            # the latest, so a slow or failed beat still leaves room for another before it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, lease.remaining() / 2)):
                    await lease.check_now.wait()
            lease.check_now.clear()
            if command.process.returncode is not None and lease.remaining() <= _LAST_CHANCE:
                return  # the command is over; the report gives up at the same deadline
            if lease.remaining() <= _LAST_CHANCE:
                reason = "the lease may have expired: the database was unreachable for too long"
                lost.append(reason)
                log.warning("run_lease_expired_locally", run_id=str(run_id), reason=reason)
                await command.terminate(kill_after=lease.kill_after)
                return
            sent = time.monotonic()
            try:
                async with asyncio.timeout(lease.remaining()):
                    await runs.heartbeat(self.db, run_id, token, self.settings.lease_seconds)
            except (Conflict, NotFound) as exc:
                if command.process.returncode is not None:
                    # The command is over and its report is on its way (or just recorded: the
                    # notification of our own report woke this beat): nothing to stop.
                    return
                lost.append(str(exc))
                log.warning("run_lease_lost", run_id=str(run_id), reason=str(exc))
                await command.terminate(kill_after=5.0)
                return
            except Exception as exc:  # keep trying (database down?) until the local deadline
                logged = self._heartbeat_log.take(str(run_id)) is not None
                (log.warning if logged else log.debug)(
                    "heartbeat_failed", run_id=str(run_id), error=str(exc) or repr(exc)
                )
                wait = _RETRY_AFTER_FAILURE
            else:
                lease.renewed(sent)
                command.attend(lease.unattended_after())
                self._heartbeat_log.forget(str(run_id))  # a later outage warns again
                wait = interval

    async def _report(
        self,
        run_id: uuid.UUID,
        token: uuid.UUID,
        lease: RunLease,
        status: str,
        message: str,
        output: str | None,
        exit_code: int | None,
        context: dict[str, Any],
    ) -> bool:
        """Record the outcome, retrying until the local lease deadline; True when recorded."""
        attempt = 0
        while lease.remaining() > 0:
            attempt += 1
            try:
                async with asyncio.timeout(lease.remaining()):
                    await runs.report_status(
                        self.db,
                        run_id,
                        token,
                        status,
                        message=message,
                        output=output,
                        exit_code=exit_code,
                    )
                return True
            except (Conflict, NotFound) as exc:
                # Cancelled or lease lost meanwhile, or the run is gone (deleted by a prune
                # just after a cancel): not ours to report, as a heartbeat would have found.
                log.warning("run_report_refused", reason=str(exc), **context)
                return False
            except (DatabaseUnavailable, TimeoutError) as exc:
                log.warning(
                    "run_report_failed", error=str(exc) or repr(exc), retry=attempt, **context
                )
                pause = min(2**attempt * 0.25, _MAX_REPORT_PAUSE, max(lease.remaining(), 0))
                await asyncio.sleep(pause)
        # The lease runs out in the database next, and the run is retried (at least once).
        log.error("run_report_gave_up", **context)
        return False

    async def _release(self, run_id: uuid.UUID, token: uuid.UUID, context: dict[str, Any]) -> bool:
        """Give the run back to the queue; True when that was recorded."""
        try:
            await runs.release(
                self.db, run_id, token, "released by a stopping executor; will run again"
            )
        except GatewayError as exc:  # the lease expiring does the same, only later
            log.warning("run_release_failed", error=str(exc), **context)
            return False
        return True

    @staticmethod
    def _log_outcome(
        context: dict[str, Any],
        status: str,
        exit_code: int | None,
        started: float,
        message: str,
        recorded: bool,
    ) -> None:
        """``run_finished``; ``recorded=False``: the outcome could not be written (the run's
        status is then whatever the database says, see run_report_refused/gave_up)."""
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        log.info(
            "run_finished",
            status=status,
            recorded=recorded,
            exit_code=exit_code,
            duration_ms=duration_ms,
            message=message,
            **context,
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def _drain(self) -> None:
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.info("executor_draining", running=len(tasks), grace_seconds=self.settings.grace_seconds)
        # Until every run finished, the grace period is over, or a second signal hurries us.
        finished: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
        hurry: asyncio.Future[Any] = asyncio.create_task(self._hurry.wait())
        await asyncio.wait(
            [finished, hurry],
            timeout=self.settings.grace_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        hurry.cancel()
        pending = [t for t in tasks if not t.done()]
        await asyncio.gather(*(c.terminate(kill_after=5.0) for c in self._commands.values()))
        await asyncio.gather(*pending, return_exceptions=True)

    # -- notifications -------------------------------------------------------------------------

    def _on_notify(self, payload: str) -> None:
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        # One of ours changed under us (cancelled, superseded, expired): heartbeat at once, so
        # that its command stops now rather than at the next beat.
        run_id = _run_id(change.get("run_id"))
        lease = None if run_id is None else self._leases.get(run_id)
        if lease is not None and change.get("status") != run_states.IN_PROGRESS:
            lease.check_now.set()
        # A queued run may be claimable; a finished one may free its concurrency key.
        if (
            change.get("pipeline_id") == self.settings.pipeline_id
            and change.get("status") != run_states.IN_PROGRESS
        ):
            self._wake.set()

    def _catch_up(self) -> None:
        """Listening (again): notifications sent while nobody listened are lost, so claim and
        heartbeat every lease now rather than at the next poll or beat."""
        for lease in self._leases.values():
            lease.check_now.set()
        self._wake.set()


def _run_id(text: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if isinstance(text, str) else None
    except ValueError:
        return None
