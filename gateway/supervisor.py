"""Worker processes: one parent owns the database bootstrap, N children share the ingest port.

``[server] workers = N`` (N > 1) turns ``gateway serve`` into a supervisor. The parent starts the
embedded PostgreSQL when no DSN is configured (once, here, never in a worker), applies the schema
and bootstraps the first admin, then starts N workers. Each worker is a fresh interpreter running
``python -m gateway [--config PATH] serve --worker`` (with the embedded server's DSN in
``HOOKGATE_EMBEDDED_DSN``); it opens its own pool and binds the listeners with SO_REUSEPORT, so
the kernel spreads connections across the workers. A worker starts with the configuration in
force in the parent (``HOOKGATE_WORKER_CONFIG``: the file as the parent read it, with the live
keys of every SIGHUP since applied), not the file as it is now: a replacement for a crashed
worker must not bind a port or open a database that an edit named but that needs a restart
(the workers report that on SIGHUP; the parent's copy takes only the live changes). Before the
first worker starts, the parent checks that nothing listens on the address: SO_REUSEPORT would
otherwise let the workers share a port with another gateway still running there.

Why ``subprocess`` rather than ``multiprocessing``: a worker is then exactly the program an
operator could start by hand (same CLI, same config loading, same env overrides), nothing has to
be pickled, no event loop, pool, socket or embedded-server handle leaks from the parent into a
child, the worker re-reads the config file itself (which a SIGHUP reload needs), and the parent
sees plain pids and exit codes to log and act on.

The parent restarts a worker that exits on its own (exponential backoff, reset once a worker has
stayed up for a while), forwards SIGTERM/SIGINT (graceful stop: it waits for every worker, then
kills stragglers after ``shutdown_timeout``) and SIGHUP, and stops the embedded server last.
If that server dies behind its back, it stops the workers the same way and exits with status 1.
A worker exits by itself when its parent disappears, so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import orjson
import structlog

from gateway import metrics, sighup
from gateway.config import Config, build_config
from gateway.logs import get_logger
from gateway.reload import ConfigReloader
from gateway.security.secret_service import check_reloaded_keys
from gateway.shutdown import WORKER_FORCE_SIGNAL, stop_bound
from gateway.storage.database import Database
from gateway.storage.embedded import embedded_server

log = get_logger(__name__)

# A worker exiting with this code hit a configuration/usage error (or cannot bind its address).
# At a slot's first start that stops the gateway (restarting cannot help); a replacement that
# hits it is retried (see Supervisor._keep_running).
EXIT_USAGE = 2
# A worker exiting with this code found its address held by another program (a race with the
# supervisor's check, which found it free). At a slot's first start the gateway stops with
# status 1, as when the check finds it held (the program may let go: a restart can help).
EXIT_ADDRESS_IN_USE = 3
# Backoff between restarts of one worker slot, in seconds.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
# A worker that ran this long counts as healthy: its next crash restarts it without delay growth.
HEALTHY_AFTER = 10.0
# A SIGHUP for a worker started less than this many seconds ago waits until it is that old: the
# worker remembers one from the start of its Python code (gateway.sighup), not before.
SIGHUP_AFTER = 1.0
# The configuration in force in the parent, handed to each worker it starts (JSON).
WORKER_CONFIG_ENV = "HOOKGATE_WORKER_CONFIG"
# The DSN of the embedded server the parent started (when database.dsn is empty).
EMBEDDED_DSN_ENV = "HOOKGATE_EMBEDDED_DSN"
# Environment variables a worker must not inherit (the parent already used them).
_PARENT_ONLY_ENV = ("GATEWAY_ADMIN_EMAIL", "GATEWAY_ADMIN_PASSWORD")


@asynccontextmanager
async def resolved_dsn(
    config: Config, on_embedded_stopped: Callable[[], None] | None = None
) -> AsyncIterator[str]:
    """The configured DSN, or the embedded server's (started here, stopped on exit; watched
    with ``on_embedded_stopped``, as gateway.server.database_for does)."""
    if config.database.dsn:
        yield config.database.dsn
        return
    async with embedded_server(config.database.data_dir, on_embedded_stopped) as dsn:
        yield dsn


def worker_command(config: Config) -> list[str]:
    """The command line of one worker: the same program, same config file, ``serve --worker``."""
    command = [sys.executable, "-m", "gateway"]
    if config.source and Path(config.source).exists():
        command += ["--config", str(Path(config.source).resolve())]
    return [*command, "serve", "--worker"]


def worker_environment(
    embedded_dsn: str | None,
    index: int,
    metrics_dir: Path | None = None,
    config: Config | None = None,
) -> dict[str, str]:
    """The parent's environment plus the embedded server's DSN if it runs one (and the shared
    metrics directory, and the configuration in force), minus the bootstrap credentials."""
    env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
    if embedded_dsn is not None:
        # Not as GATEWAY_DATABASE_DSN: the configuration still says "embedded" (an empty dsn),
        # so that a worker's reload compares the file with what the operator wrote.
        env[EMBEDDED_DSN_ENV] = embedded_dsn
    if config is not None:
        env[WORKER_CONFIG_ENV] = config_snapshot(config)
    env["HOOKGATE_WORKER_INDEX"] = str(index)
    if metrics_dir is not None:
        env[metrics.MULTIPROC_ENV] = str(metrics_dir)
    return env


def metrics_base(config: Config) -> Path:
    """Where each supervisor run keeps its workers' metric files (next to the data directory)."""
    return Path(config.database.data_dir).expanduser().resolve().parent / "metrics"


def prepare_metrics_dir(config: Config) -> Path:
    """This run's metric-file directory: under :func:`metrics_base`, or a fresh private
    temporary directory when that cannot be created (an external database and a read-only
    working directory: data_dir is then never used for anything else)."""
    base = metrics_base(config)
    try:
        return metrics.prepare_multiproc_dir(base)
    except OSError as exc:
        path = Path(tempfile.mkdtemp(prefix="hookgate-metrics-"))
        log.warning("metrics_dir_fallback", wanted=str(base), error=exc.strerror, using=str(path))
        return path


@dataclass
class _Slot:
    """One of the N worker positions; its process is replaced when it dies."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, config: Config, dsn: str, metrics_dir: Path | None = None) -> None:
        self.config = config
        # The configuration in force: the start-up one plus the live keys of each SIGHUP (the
        # workers log the reload; this copy is what a replacement worker starts with).
        self.reloader = ConfigReloader.for_config(config)
        # The checks the workers run too: a reload they reject must not reach a replacement.
        self.reloader.holder.add_check(check_reloaded_keys)
        self.dsn = dsn
        self.metrics_dir = metrics_dir  # PROMETHEUS_MULTIPROC_DIR of the workers (issue 8)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self._slots = [_Slot(i) for i in range(config.server.workers)]

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers."""
        return [s.process.pid for s in self._slots if s.process and s.process.returncode is None]

    async def run(self) -> int:
        """Run the workers until a stop signal; return the exit code for the parent."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        if sighup.take_pending():  # during the bootstrap: the workers start with its outcome
            result = self.reloader.reload_and_log()
            log.info("sighup_during_start_up", applied=result.applied)
        try:
            await asyncio.gather(*(self._keep_running(slot) for slot in self._slots))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("workers_stopped", exit_code=self.exit_code)
        return self.exit_code

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("supervisor_stopping", signal=sig.name, workers=self.pids)
            self.stopping.set()
            self._forward(signal.SIGTERM)
        else:  # a second signal: the workers force their stop (a SIGTERM again would not)
            self._forward(WORKER_FORCE_SIGNAL)

    def database_stopped(self) -> None:
        """The embedded server is gone: stop the workers as for SIGTERM, and exit with 1 so
        that whatever supervises the gateway restarts it (the server with it)."""
        if self.exit_code == 0:
            self.exit_code = 1
        self._request_stop(signal.SIGTERM)

    def _forward(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP and self.stopping.is_set():
            return  # the workers are stopping: a reload is moot, and one past its loop would die
        if sig == signal.SIGHUP:
            self.reloader.reload()  # quietly: each worker logs its own outcome
        loop = asyncio.get_running_loop()
        for slot in self._slots:
            process = slot.process
            if process is None or process.returncode is not None:
                continue
            young = slot.started_at + SIGHUP_AFTER - time.monotonic()
            if sig == signal.SIGHUP and young > 0:
                # Python may not even have started: no handler yet, and SIGHUP would kill it.
                loop.call_later(young, self._send, process, sig)
            else:
                self._send(process, sig)
        if sig == signal.SIGHUP:
            log.info("sighup_forwarded", workers=self.pids)

    def _send(self, process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        if process.returncode is not None or (sig == signal.SIGHUP and self.stopping.is_set()):
            return
        with suppress(ProcessLookupError):
            process.send_signal(sig)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *worker_command(self.config),
            env=worker_environment(
                None if self.config.database.dsn else self.dsn,
                slot.index,
                self.metrics_dir,
                self.reloader.current,
            ),
            stdin=asyncio.subprocess.DEVNULL,
        )
        slot.process, slot.started_at = process, time.monotonic()
        return process

    async def _keep_running(self, slot: _Slot) -> None:
        previous: int | None = None
        while not self.stopping.is_set():
            # Only the first start of a slot checks the configuration the gateway started with:
            # a usage error then stops the gateway (restarting cannot help).
            first = previous is None
            process = await self._spawn(slot)
            if self.stopping.is_set():  # the stop signal came while it was being started
                with suppress(ProcessLookupError):
                    process.terminate()
            if previous is None:
                log.info("worker_started", worker=slot.index, pid=process.pid)
            else:
                log.info("worker_restarted", worker=slot.index, pid=process.pid, previous=previous)
            code = await self._wait(process)
            previous = process.pid
            if self.metrics_dir is not None:  # its live gauges (pool, queue) leave the sums
                metrics.worker_exited(process.pid, self.metrics_dir)
            if self.stopping.is_set():
                log.info("worker_stopped", worker=slot.index, pid=process.pid, exit_code=code)
                # -SIGTERM: stopped while still starting Python, before its handler (a clean
                # stop: it had nothing to drain). A usage error's 2 stays the answer.
                if code not in (0, -signal.SIGTERM) and self.exit_code == 0:
                    self.exit_code = 1
                return
            uptime = time.monotonic() - slot.started_at
            log.warning(
                "worker_exited",
                worker=slot.index,
                pid=process.pid,
                exit_code=code,
                signal=_signal_name(-code) if code < 0 else None,
                uptime_s=round(uptime, 3),
            )
            if code in (EXIT_USAGE, EXIT_ADDRESS_IN_USE) and first:
                in_use = code == EXIT_ADDRESS_IN_USE
                event = "worker_address_in_use" if in_use else "worker_usage_error"
                log.error(event, worker=slot.index, pid=process.pid)
                self.exit_code = 1 if in_use else EXIT_USAGE
                self._request_stop(signal.SIGTERM)
                return
            if code in (EXIT_USAGE, EXIT_ADDRESS_IN_USE):
                # A replacement reads config.toml as it is now: an edit that a SIGHUP rejected
                # must not turn one crash into an outage. Retried with the back-off meanwhile.
                log.error(
                    "worker_config_error",
                    worker=slot.index,
                    pid=process.pid,
                    hint="the replacement worker could not load the configuration as it is now "
                    "(`gateway check-config`) or bind its address (see its error above); it is "
                    "retried with back-off while the other workers keep serving",
                )
            if uptime >= HEALTHY_AFTER:
                slot.backoff = BACKOFF_FIRST
            delay, slot.backoff = slot.backoff, min(slot.backoff * 2, BACKOFF_MAX)
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    async def _wait(self, process: asyncio.subprocess.Process) -> int:
        """Wait for the process; once stopping, give it the grace period, then SIGKILL it."""
        waiter = asyncio.ensure_future(process.wait())
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not waiter.done():
            grace = stop_bound(self.config)
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(waiter)
            except TimeoutError:
                log.warning("worker_killed", pid=process.pid, after_s=grace)
                with suppress(ProcessLookupError):
                    process.kill()
        return await waiter


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def config_snapshot(config: Config) -> str:
    """``config`` as JSON, for :func:`config_from_snapshot` in a worker."""
    values = {f.name: asdict(getattr(config, f.name)) for f in fields(config) if f.name != "source"}
    return orjson.dumps({"source": config.source, "values": values}).decode()


def config_from_snapshot(text: str) -> Config:
    """The configuration a supervisor handed its worker (validated again, no overrides: they
    are in it already)."""
    snapshot = orjson.loads(text)
    return build_config(snapshot["values"], {}, source=snapshot["source"])


def check_addresses_free(config: Config) -> None:
    """Raise ListenError when something listens on the ingest or management address already.

    The workers bind with SO_REUSEPORT, which would let them share the port with another
    gateway left running there (an old release, a second unit): a plain bind (SO_REUSEADDR
    only, as a single process binds) fails instead while anything listens on it."""
    from gateway.server import ListenError

    server = config.server
    addresses = [(server.host, server.port)]
    if server.management_port:
        addresses.append((server.management_host or server.host, server.management_port))
    for host, port in addresses:
        try:
            for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                with socket.socket(family, kind, proto) as probe:
                    # As asyncio binds the workers' sockets: an IPv6 one for IPv6 only.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind(address)
        except OSError as exc:  # in use, not an address of this host, a name that won't resolve
            raise ListenError.binding(host, port, exc) from exc


async def supervise(config: Config) -> int:
    """``gateway serve`` with workers > 1: bootstrap once, then run and supervise N workers."""
    from gateway.server import ListenError, prepare_database, stop_on_signals

    # SIGTERM/SIGINT during the bootstrap (the embedded server starting, the schema): stop
    # there and stop the embedded server too, instead of dying and leaving it running.
    # Supervisor.run replaces these handlers; no await comes between the check and that.
    stop = asyncio.Event()
    signals = stop_on_signals(stop)
    supervisor: Supervisor | None = None

    def database_stopped() -> None:  # the embedded server exited: stop, with status 1
        if supervisor is None:
            signals.request_stop()
        else:
            supervisor.database_stopped()

    try:
        async with resolved_dsn(config, database_stopped) as dsn:
            # A one-connection pool for the bootstrap only: the parent serves no traffic.
            bootstrap = replace(config.database, pool_min_size=1, pool_max_size=1)
            # A failure is the outcome before the pool and the embedded server are closed: a
            # stop signal during that clean-up does not make it a clean stop (StopSignals).
            with signals.failing():
                db = await Database.connect(dsn, bootstrap)
            try:
                with signals.failing():
                    await prepare_database(db, config)
            finally:
                await db.close()
            signals.started()
            if stop.is_set():
                log.info("stopped_while_starting")
                return 0
            with signals.failing():
                try:
                    check_addresses_free(config)
                except ListenError as exc:
                    log.error("cannot_listen", error=str(exc))
                    raise  # worded by gateway.cli, which exits with its status
            # One scrape, answered by any worker, sums every worker's metric files (issue 8).
            metrics_dir = prepare_metrics_dir(config)
            supervisor = Supervisor(config, dsn, metrics_dir)
            log.info("supervisor_started", pid=os.getpid(), workers=config.server.workers)
            try:
                code = await supervisor.run()
            finally:
                # Its signal handlers are gone: until the embedded server is stopped, another
                # signal forces the stop rather than kills the process.
                signals.listen_again()
                shutil.rmtree(metrics_dir, ignore_errors=True)
    except asyncio.CancelledError as cancelled:
        # A second signal during the bootstrap (a database slow to answer, the embedded server
        # starting): the pool and the embedded server were closed on the way out.
        return signals.forced_exit(cancelled, "stopped", exit_code=1)
    log.info("stopped", exit_code=code)
    return code


async def _exit_when_orphaned(stop: asyncio.Event, parent: int) -> None:
    # If the supervisor is killed outright, the worker is re-parented: stop gracefully then.
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("supervisor_gone", parent=parent)
            stop.set()
            return
        with suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


async def serve_worker(config: Config) -> int:
    """``gateway serve --worker``: one worker's listeners on the shared port with its own pool."""
    from gateway.server import ListenError, run_listeners, stop_on_signals

    dsn = config.database.dsn or os.environ.get(EMBEDDED_DSN_ENV, "")
    if not dsn:
        log.error("worker_without_dsn", hint="workers are started by `gateway serve`")
        return EXIT_USAGE
    index = os.environ.get("HOOKGATE_WORKER_INDEX", "")
    structlog.contextvars.bind_contextvars(worker=int(index) if index.isdigit() else None)
    stop = asyncio.Event()
    # The supervisor's WORKER_FORCE_SIGNAL (its own second signal) forces the stop, never a
    # second SIGTERM/SIGINT: one stop may reach a worker twice (Ctrl-C in a terminal, or a
    # service manager, signals the whole process group, and the supervisor forwards it too).
    # Past stop_bound (drain_delay + shutdown_timeout + KILL_GRACE) the supervisor kills it.
    signals = stop_on_signals(stop, force_signal=WORKER_FORCE_SIGNAL)
    loop = asyncio.get_running_loop()
    # Until run_listeners installs the reload, a SIGHUP is remembered (see gateway.sighup).
    loop.add_signal_handler(signal.SIGHUP, sighup.note)
    watchdog = asyncio.create_task(_exit_when_orphaned(stop, os.getppid()))
    try:
        db = await Database.connect(dsn, config.database)
        signals.started()
        try:
            await run_listeners(config, db, stop, reuse_port=True)
        finally:
            await db.close()
    except ListenError as exc:
        # The configured address cannot be bound (in use by another program, not an address
        # of this host): at the first start that stops the gateway, as it does without workers,
        # instead of a supervisor that looks up while nothing listens.
        log.error("worker_cannot_listen", error=str(exc))
        return EXIT_ADDRESS_IN_USE if exc.in_use else EXIT_USAGE
    except asyncio.CancelledError as cancelled:
        return signals.forced_exit(cancelled, "worker_exiting", pid=os.getpid())
    finally:
        stop.set()
        await watchdog
    log.info("worker_exiting", pid=os.getpid())
    return 0
