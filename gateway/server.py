"""Running the gateway: database start-up, listeners, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway import accounts, appkeys
from gateway.app import HANDLER_OPTIONS, create_apps
from gateway.config import Config
from gateway.exceptions import GatewayError
from gateway.logs import get_logger
from gateway.reload import ConfigReloader, install_sighup, logging_callback
from gateway.security.secret_box import check_key_settings
from gateway.security.secret_service import check_secret_keys
from gateway.shutdown import SHUTDOWN, Shutdown, StopSignals, stop_bound
from gateway.storage.database import Database
from gateway.storage.embedded import embedded_server

log = get_logger(__name__)


# Listen addresses that name no host a sender could reach (a warning when public_url is unset).
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - compared, not bound


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed: a faster loop for the same code."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@asynccontextmanager
async def database_for(
    config: Config, *, signals: StopSignals | None = None
) -> AsyncIterator[Database]:
    """The configured database, or the embedded one when no DSN is set; stopped on exit.

    ``signals`` (long-running commands): the embedded server is watched, and if it exits behind
    the gateway's back a stop is requested and leaving raises EmbeddedDatabaseStopped (see
    gateway.storage.embedded.embedded_server); and a failure, the connect's or the body's (the
    schema, a listener), is the process's outcome before the pool and the embedded server are
    closed (StopSignals.failing: a stop signal during that clean-up does not make it a clean
    stop)."""
    failing = nullcontext if signals is None else signals.failing
    watched = None if signals is None else signals.request_stop
    async with AsyncExitStack() as stack:
        with failing():
            dsn = config.database.dsn
            if not dsn:
                dsn = await stack.enter_async_context(
                    embedded_server(config.database.data_dir, watched)
                )
            db = await Database.connect(dsn, config.database)
        try:
            with failing():
                yield db
        finally:
            await db.close()


async def prepare_database(db: Database, config: Config) -> None:
    """Apply the schema and create the first admin from the environment if asked to."""
    check_key_settings(config.security)  # a host that cannot start leaves the schema alone
    schema = await db.apply_schema_outcome()
    if schema.newer_than_release:
        # A rollback, or an older instance in a newer fleet: its file would put older functions
        # back; the schema only ever grows, so this release runs on the newer one as it is.
        log.warning(
            "schema_newer_than_release",
            version=schema.version,
            release_version=schema.release_version,
            hint="this release's schema.sql was not applied; the newer release's `gateway "
            "migrate` keeps the schema current",
        )
    else:
        # schema_current: this file was applied here before, nothing ran (no table was locked).
        log.info("schema_applied" if schema.applied else "schema_current", version=schema.version)
    await check_secret_keys(db, config)  # issue 8: creates the key file before any worker
    email = os.environ.get("GATEWAY_ADMIN_EMAIL")
    password = os.environ.get("GATEWAY_ADMIN_PASSWORD")
    if email and password:
        try:
            created = await accounts.ensure_first_admin(db, config.auth, email, password)
        except ValueError as exc:  # "password: must be ...": say which password (never its value)
            field, _, problem = str(exc).partition(": ")
            raise ValueError(
                f"GATEWAY_ADMIN_{field.upper()}: {problem} (the first administrator, created "
                "while no user exists)"
            ) from exc
        if created:
            log.info("first_admin_created", email=email)
    elif (email or password) and not await accounts.any_user(db):
        # Half of the bootstrap pair on an empty database: no administrator, and nothing would
        # say why (names only: never a value).
        given, missing = ("EMAIL", "PASSWORD") if email else ("PASSWORD", "EMAIL")
        log.warning(
            "first_admin_incomplete",
            set=f"GATEWAY_ADMIN_{given}",
            missing=f"GATEWAY_ADMIN_{missing}",
            hint="no user exists and none was created: set both variables, or create one with "
            "`gateway user create --email ... --admin`",
        )


# Seconds aiohttp gets to cancel requests still running after drain() gave up on them.
CANCEL_GRACE = 1.0
_DRAIN_POLL = 0.02


async def drain(runners: list[web.AppRunner], seconds: float) -> int:
    """Wait up to ``seconds`` for in-flight requests; return how many are still running.

    aiohttp's own shutdown stops reading from every connection at once, so a request whose body
    is still arriving could never finish and would be cancelled after the timeout. Here idle
    connections are closed at once (keep-alive ones included, so no new request starts on them;
    a pipelined request not yet started is dropped with its connection) while busy ones keep
    reading until their response is written, and are closed as soon as it is: that response
    says ``Connection: close`` and no next request is taken on them (see
    :func:`_close_after_response`).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        busy = 0
        for runner in runners:
            connections = runner.server.connections if runner.server is not None else []
            for handler in connections:
                if _is_idle(handler):
                    # close() would only mark it; its socket would stay open until cleanup.
                    handler.force_close()
                else:
                    _close_after_response(handler)
                    busy += 1
        if not busy or loop.time() >= deadline:
            return busy
        await asyncio.sleep(_DRAIN_POLL)


def _close_after_response(handler: Any) -> None:
    """Have the request in progress answered with ``Connection: close``, so that aiohttp ends the
    connection after it instead of taking the client's next request (a client sending back to
    back was otherwise served until the deadline). ``handler.close()`` cannot do it: from then
    on aiohttp drops the bytes that arrive, the rest of a body still being sent included, and
    the request would wait for it until cancelled. Private attributes, like :func:`_is_idle`'s;
    a response already being sent keeps its keep-alive."""
    request: Any = getattr(handler, "_current_request", None)
    message = getattr(request, "_message", None)
    if message is None or message.should_close:
        return
    request._message = message._replace(should_close=True)
    request._cache.pop("keep_alive", None)  # a reify value read before now


def _is_idle(handler: Any) -> bool:
    """aiohttp's own idle test: waiting for the next request with nothing parsed and queued.

    ``_request_in_progress`` alone is not enough: between parsing a request and its handler
    task starting (not eager before Python 3.12) it is still False, and closing then would drop
    a request the handler goes on to commit. Private but stable attributes (aiohttp is pinned);
    test_serve's slow-body test guards them.
    """
    waiter = getattr(handler, "_waiter", None)
    return (
        waiter is not None
        and not waiter.done()
        and not getattr(handler, "_messages", None)
        and not getattr(handler, "_request_in_progress", False)
    )


class ListenError(GatewayError):
    """A listener could not be bound (address in use, permission denied ...)."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use

    @classmethod
    def binding(cls, host: str, port: int, exc: OSError) -> ListenError:
        """The one wording of a failed bind, whoever tried it. asyncio words the errors of its
        own binds ("error while attempting to bind on address ...: address already in use"):
        the system's text for the error number is used instead, as a plain bind gives it."""
        reason = exc.strerror or str(exc)
        if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)
        return cls(
            f"cannot listen on {host}:{port}: {reason}", in_use=exc.errno == errno.EADDRINUSE
        )

    @property
    def exit_status(self) -> int:
        """``gateway serve``'s status, with or without workers: 1 while another program holds
        the address (it may let go: a restart can help), 2 for an address this host cannot
        bind at all (not one of its addresses, a name that does not resolve, a privileged
        port), a configuration error that a service manager should not restart into."""
        return 1 if self.in_use else 2


class AccessLog(AbstractAccessLogger):
    """One structured ``http_request`` line per request (``[server] access_log = true``)."""

    # Live on SIGHUP; aiohttp reads ``enabled`` once per connection, and while it is off a
    # request pays nothing for the access log.
    active = False

    @property
    def enabled(self) -> bool:
        return AccessLog.active

    @staticmethod
    def apply_config(old: Config, new: Config, changed: frozenset[str]) -> None:
        """Reload callback: follow ``server.access_log`` (new connections)."""
        AccessLog.active = new.server.access_log

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            bytes=response.body_length,
            duration_ms=round(time * 1000, 3),
            remote=request.remote,
        )


async def run_listeners(
    config: Config, db: Database, stop: asyncio.Event, *, reuse_port: bool = False
) -> None:
    """Serve both route tables until ``stop`` is set, then drain gracefully.

    Draining: every listening socket is closed first (no new connections anywhere), idle
    connections are closed, and requests in flight get up to ``server.shutdown_timeout`` to
    finish (see ``drain``); then each runner cancels stragglers and runs the application cleanup
    (batcher flush, services).
    """
    # SIGHUP (issue 8): re-read the config file; live keys apply to this process's services.
    reloader = ConfigReloader.for_config(config)
    reloader.on_reload(logging_callback)
    reloader.on_reload(AccessLog.apply_config)
    AccessLog.active = config.server.access_log
    ingest, management = create_apps(config, db, reloader.holder)
    if not config.server.public_url and config.server.host in WILDCARD_HOSTS:
        log.warning(
            "public_url_not_set",
            hook_urls=config.server.base_url,
            hint="the hook URLs the API shows name a wildcard address no sender can use: set "
            "[server] public_url (GATEWAY_SERVER_PUBLIC_URL) to the address senders reach",
        )
    runners: list[web.AppRunner] = []
    shutdown: Shutdown = ingest[appkeys.SERVICES][SHUTDOWN]
    stopping = False  # the stop signal came (not an error on the way up)
    try:
        for app, host, port in (
            (ingest, config.server.host, config.server.port),
            (
                management,
                config.server.management_host or config.server.host,
                config.server.management_port,
            ),
        ):
            if app is None or stop.is_set():
                continue
            runner = web.AppRunner(
                app,
                handle_signals=False,
                access_log_class=AccessLog,
                access_log=logging.getLogger("access"),  # AccessLog.enabled decides
                # drain() has already waited shutdown_timeout: this only bounds the cancellation.
                shutdown_timeout=CANCEL_GRACE,
                # aiohttp's own default is an hour, for a connection that never finishes its
                # request headers too.
                keepalive_timeout=config.server.keepalive_timeout,
                **HANDLER_OPTIONS,
            )
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(
                    runner, host, port, reuse_port=reuse_port or None, backlog=1024
                ).start()
            except OSError as exc:
                raise ListenError.binding(host, port, exc) from exc
            log.info(
                "listening", host=host, port=port, role="ingest" if app is ingest else "management"
            )
        # Only now, with every service started and subscribed to reloads: until here a SIGHUP
        # was remembered (gateway.sighup) and is applied now, to all of them.
        install_sighup(reloader)
        # What exists now (modules, apps, caches) lives as long as the process: move it out of
        # the collector's reach, so a full collection does not walk it again and again (one
        # such pass over ~70,000 startup objects stalled the event loop for ~40 ms under load).
        gc.freeze()
        await stop.wait()
        stopping = True
    finally:
        if stopping and config.server.drain_delay > 0:
            # A second signal meanwhile cancels this sleep, and with it the drain below, as a
            # forced stop during the drain does.
            await _serve_while_announced(shutdown, config.server.drain_delay)
        for runner in runners:
            for site in list(runner.sites):
                await site.stop()
        # Logged once the listeners are closed: from here on, connections are refused.
        log.info("shutting_down", shutdown_timeout=config.server.shutdown_timeout)
        # One deadline for the drain and the services' own stopping (a dispatcher claims
        # nothing more from now on and gets what the drain leaves of it).
        shutdown.begin(config.server.shutdown_timeout)
        busy = await drain(runners, shutdown.remaining(config.server.shutdown_timeout))
        if busy:
            log.warning("requests_cancelled", count=busy, after_s=config.server.shutdown_timeout)
        # Management first (no hot traffic), ingest last: its cleanup flushes the batcher.
        for runner in reversed(runners):
            await runner.cleanup()


async def _serve_while_announced(shutdown: Shutdown, seconds: float) -> None:
    """``[server] drain_delay``: keep serving, /readyz answering 503, so that a balancer that
    learns of the stop from its probes takes this instance out before its port closes."""
    shutdown.announce()
    log.info("stop_delayed", drain_delay=seconds)
    await asyncio.sleep(seconds)


def stop_on_signals(
    stop: asyncio.Event,
    *,
    overdue_after: float | None = None,
    force_signal: signal.Signals | None = None,
) -> StopSignals:
    """SIGTERM and SIGINT set ``stop``: stop accepting, finish in-flight work, then exit; a
    second signal (``force_signal`` only, when given), or a stop not done after
    ``overdue_after`` s, forces it (StopSignals). Until ``started()`` is called, the first
    signal cancels the start at once."""
    return StopSignals(stop, overdue_after=overdue_after, starting=True, force_signal=force_signal)


async def serve(config: Config, *, worker: bool = False) -> int:
    """``gateway serve``: one process, or (workers > 1) a supervisor of N worker processes."""
    # --- worker processes (issue 7): the logic lives in gateway/supervisor.py ---
    if worker or config.server.workers > 1:
        from gateway import supervisor

        if worker:
            return await supervisor.serve_worker(config)
        return await supervisor.supervise(config)
    # --- end worker processes ---
    stop = asyncio.Event()
    # The same bound a supervisor gives each of its workers before it kills them.
    signals = stop_on_signals(stop, overdue_after=stop_bound(config))
    try:
        async with database_for(config, signals=signals) as db:
            await prepare_database(db, config)
            signals.started()
            await run_listeners(config, db, stop)
    except asyncio.CancelledError as cancelled:
        return signals.forced_exit(cancelled, "stopped")
    log.info("stopped")
    return 0
