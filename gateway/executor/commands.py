"""The ``gateway executor`` and ``gateway prune`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.config import Config
from gateway.executor.command import hide_environment
from gateway.logs import get_logger
from gateway.run_states import MAX_LEASE_SECONDS, MIN_LEASE_SECONDS
from gateway.storage.retention import PRUNE_BATCH

log = get_logger(__name__)

COMMANDS = ("executor", "prune")
_AGE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


MAX_ID = 2**63 - 1  # the largest bigint (pipeline ids)

# The oldest age prune takes: beyond it "now - age" leaves the calendar (an OverflowError).
MAX_AGE = timedelta(days=36_500)


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` → timedelta; ValueError saying what is accepted."""
    match = _AGE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(
            f"{option}: {text!r} is not an age; use a positive whole number and a unit: "
            "30d, 12h, 90m or 3600s"
        )
    number, unit = int(match.group(1)), _UNITS[match.group(2)]
    if number > MAX_AGE / timedelta(**{unit: 1}):
        raise ValueError(f"{option}: {text!r} is too large; at most {MAX_AGE.days}d")
    return timedelta(**{unit: number})


MAX_PRUNE_BATCH = 100_000  # rows per prune statement at most (the default is PRUNE_BATCH)


def positive(
    kind: type,
    maximum: float | None = None,
    *,
    zero: bool = False,
    minimum: float | None = None,
) -> Any:
    """An argparse type: a finite number > 0 (>= 0 with ``zero``), at most ``maximum``; with
    ``minimum`` (and ``maximum``), one in that range, which the refusal names."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        top = math.inf if maximum is None else maximum
        if minimum is not None and not minimum <= value <= top:  # nan fails it too
            upper = " or more" if maximum is None else f" to {maximum:g}"
            raise argparse.ArgumentTypeError(
                f"must be a number from {minimum:g}{upper}, got {text}"
            )
        # nan passes any comparison, inf any minimum: both would fail later, mid-run.
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = "at least 0" if zero else "greater than 0"
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
        if maximum is not None and value > maximum:
            bound = f"{maximum:g}" if isinstance(maximum, float) else str(maximum)
            raise argparse.ArgumentTypeError(f"must be at most {bound}, got {text}")
        return value

    return parse


def add_commands(commands: Any) -> None:
    """Register ``executor`` and ``prune`` on the CLI's subparsers."""
    executor = commands.add_parser(
        "executor",
        help="claim runs of a pipeline and run a command for each",
        description="Claim runs of a pipeline and run CMD for each, with the run's variables "
        "as HOOK_VAR_<NAME> environment variables (plus HOOK_RUN_ID, HOOK_PIPELINE_ID, "
        "HOOK_ATTEMPT). CMD is executed directly, never through a shell.",
        usage="gateway executor --pipeline ID [options] -- CMD [ARGS...]",
    )
    # A pipeline id is a bigint: past it the claim failed with a driver traceback.
    executor.add_argument(
        "--pipeline", type=positive(int, maximum=MAX_ID), required=True, metavar="ID"
    )
    executor.add_argument(
        "--concurrency",
        type=positive(int),
        default=1,
        metavar="N",
        help="runs at once (default 1)",
    )
    executor.add_argument(
        "--lease-seconds",
        # As POST /runs/claim allows: a shorter lease has runs change executors at any pause.
        type=positive(float, minimum=MIN_LEASE_SECONDS, maximum=MAX_LEASE_SECONDS),
        default=60.0,
        metavar="S",
        help=f"lease per run, renewed every S/3 (default 60; {MIN_LEASE_SECONDS} to "
        f"{MAX_LEASE_SECONDS})",
    )
    executor.add_argument(
        "--poll-interval",
        type=positive(float, maximum=3600),
        default=5.0,
        metavar="S",
        help="claim at least this often without notifications (default 5)",
    )
    executor.add_argument(
        "--grace-seconds",
        type=positive(float, zero=True),
        default=30.0,
        metavar="S",
        help="on SIGTERM, how long running commands may finish (default 30)",
    )
    executor.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    prune = commands.add_parser("prune", help="delete finished runs and old request history")
    prune.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m, 3600s"
    )
    prune.add_argument(
        "--bodies-older-than",
        metavar="AGE",
        help="also clear the stored bodies of requests older than AGE (the rows stay)",
    )
    prune.add_argument(
        "--batch-size",
        type=positive(int, maximum=MAX_PRUNE_BATCH),
        default=PRUNE_BATCH,
        metavar="N",
        help=f"rows deleted per statement, each committed on its own (default {PRUNE_BATCH}, "
        f"at most {MAX_PRUNE_BATCH}); smaller when a batch outlasts database.command_timeout",
    )


def main(config: Config, args: argparse.Namespace) -> int:
    """Run the parsed ``executor`` or ``prune`` command; the process exit code."""
    if args.command == "prune":
        now = datetime.now(UTC)
        cutoff = now - parse_age(args.older_than)
        bodies = None
        if args.bodies_older_than is not None:
            bodies = now - parse_age(args.bodies_older_than, "--bodies-older-than")
        asyncio.run(_prune(config, cutoff, bodies, args.batch_size))
        return 0
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ValueError("executor: give the command to run after '--', e.g. -- ./deploy.sh")
    if not hide_environment():
        log.warning(
            "executor_environment_readable",
            hint="this platform cannot make the executor non-dumpable: a command running as "
            "the same user can read its environment",
        )
    return asyncio.run(_execute(config, args, command))


async def _prune(
    config: Config, cutoff: datetime, bodies: datetime | None, batch: int = PRUNE_BATCH
) -> None:
    from gateway.exceptions import GatewayError
    from gateway.executor.database import existing_database
    from gateway.progress import ProgressLog
    from gateway.storage import history, outgoing, runs, users
    from gateway.storage.database import statement_timed_out

    progress = ProgressLog("prune_progress")
    async with existing_database(config, start_embedded=True) as db:
        orphaned = await runs.cancel_orphaned(db)
        try:
            removed = await runs.prune(db, cutoff, batch, progress)
            # Outgoing hooks (issue 6): finished deliveries of the outbox.
            removed["outgoing_deliveries"] = await outgoing.prune_deliveries(
                db, cutoff, batch, progress
            )
            removed["auth_tokens"] = await users.prune_tokens(db, cutoff, batch, progress)
            cleared = (
                None if bodies is None else await history.drop_bodies(db, bodies, batch, progress)
            )
        except GatewayError as exc:
            if not statement_timed_out(exc):
                raise
            seconds = config.database.command_timeout
            raise GatewayError(
                f"prune: a batch of up to {batch} rows took longer than "
                f"database.command_timeout ({seconds:g} s) and was rolled back; the batches "
                "before it are committed. Run it again with a smaller --batch-size, or a longer "
                "command_timeout (GATEWAY_DATABASE_COMMAND_TIMEOUT for this command)"
            ) from exc
    if orphaned:
        log.warning("orphaned_runs_cancelled", runs=orphaned, reason="their pipeline was deleted")
        print(f"pipeline_runs: cancelled {orphaned} unfinished runs whose pipeline was deleted")
    # Each count as <table>_count: the log redacts a field named like a credential, and a
    # bare ``auth_tokens`` is one by its name (it was logged as "[redacted]").
    counts = {f"{table}_count": count for table, count in removed.items()}
    log.info("pruned", older_than=cutoff.isoformat(), bodies_cleared=cleared, **counts)
    for table, count in removed.items():
        print(f"{table}: removed {count} rows older than {cutoff.isoformat(timespec='seconds')}")
    if bodies is not None:
        print(
            f"hook_requests: cleared {cleared} bodies older than "
            f"{bodies.isoformat(timespec='seconds')}"
        )


# What `gateway executor` reads of the configuration: the rest is serve's and dispatch's, and
# an edit of it needs no restart of an executor.
EXECUTOR_KEYS = ("log", "database")


def executor_reads(key: str) -> bool:
    """Whether ``gateway executor`` reads ``key`` (``"section.key"``)."""
    from gateway.reload import touches

    return touches(frozenset({key}), *EXECUTOR_KEYS)


async def _execute(config: Config, args: argparse.Namespace, command: list[str]) -> int:
    from gateway.exceptions import NotFound
    from gateway.executor.database import existing_database
    from gateway.executor.worker import Executor, ExecutorSettings
    from gateway.reload import ConfigReloader, install_sighup, logging_callback
    from gateway.storage import runs

    settings = ExecutorSettings(
        pipeline_id=args.pipeline,
        command=command,
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        poll_interval=args.poll_interval,
        grace_seconds=args.grace_seconds,
    )
    # Claims, heartbeats and reports of every slot at once, plus one spare.
    async with existing_database(config, pool_size=args.concurrency * 2 + 1) as db:
        if await runs.pipeline_settings(db, args.pipeline) is None:
            raise NotFound(f"pipeline {args.pipeline} not found")
        executor = Executor(db, settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, executor.stop)
        # SIGHUP (a closed terminal, `systemctl reload`) re-reads the config file as for serve:
        # [log] applies at once, [database] at the next start; until here it was remembered
        # (gateway.sighup), never the default action that ended the executor and left its runs
        # to their leases.
        reloader = ConfigReloader.for_config(config, uses=executor_reads)
        reloader.on_reload(logging_callback)
        install_sighup(reloader)
        try:
            await executor.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):  # SIGHUP still reloads meanwhile
                loop.remove_signal_handler(sig)
    if executor.pipeline_deleted:  # exit 1, as for a pipeline missing at the start
        raise NotFound(f"pipeline {args.pipeline} was deleted")
    return 0
