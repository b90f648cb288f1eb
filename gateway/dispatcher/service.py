"""Running the dispatcher: inside ``gateway serve`` (a service context) or alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from gateway import appkeys
from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.logs import get_logger
from gateway.reload import (
    CONFIG_HOLDER,
    ConfigHolder,
    ConfigReloader,
    install_sighup,
    logging_callback,
    touches,
)
from gateway.shutdown import KILL_GRACE, SHUTDOWN, Shutdown
from gateway.storage.database import Database

log = get_logger(__name__)

DISPATCHER = "outgoing_dispatcher"  # key in app[appkeys.SERVICES]


async def dispatcher_service(app: web.Application) -> AsyncIterator[None]:
    """Run a dispatcher for the life of the app unless ``[outgoing] dispatcher_in_serve`` is
    false (then ``gateway dispatch`` runs it)."""
    config = app[appkeys.CONFIG]
    if not config.outgoing.dispatcher_in_serve:
        yield
        return
    dispatcher = Dispatcher(app[appkeys.DATABASE], config)
    await dispatcher.start()
    services = app[appkeys.SERVICES]
    services[DISPATCHER] = dispatcher
    # When the process starts stopping, claim nothing more while requests drain; then get what
    # is left of the shared shutdown deadline (gateway.shutdown).
    shutdown: Shutdown | None = services.get(SHUTDOWN)
    if shutdown is not None:
        shutdown.on_begin(dispatcher.stop_claiming)
    # SIGHUP: follow live [outgoing] changes when a config holder runs (gateway.reload).
    holder = services.get(CONFIG_HOLDER)
    unsubscribe = holder.on_reload(dispatcher.apply_config) if holder is not None else None
    try:
        yield
    finally:
        if unsubscribe is not None:
            unsubscribe()
        services.pop(DISPATCHER, None)
        grace = config.server.shutdown_timeout
        await dispatcher.stop(shutdown.remaining(grace) if shutdown is not None else grace)


async def run_dispatcher(
    db: Database,
    config: Config,
    stop: asyncio.Event,
    holder: ConfigHolder | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Deliver until ``stop`` is set, then stop gracefully; follow ``holder``'s reloads.
    ``started()`` runs once the dispatcher runs and follows them."""
    dispatcher = Dispatcher(db, config)
    await dispatcher.start()
    unsubscribe = holder.on_reload(dispatcher.apply_config) if holder is not None else None
    if started is not None:
        started()
    try:
        await stop.wait()
    finally:
        if unsubscribe is not None:
            unsubscribe()
        await dispatcher.stop(config.server.shutdown_timeout)


@asynccontextmanager
async def probe_listener(config: Config, db: Database) -> AsyncIterator[None]:
    """``gateway dispatch``'s own small listener, when ``[outgoing] dispatch_port`` is set:
    ``/healthz``, ``/readyz`` and ``/metrics`` (this process's outgoing metrics and pool), so
    an orchestrator can probe it and Prometheus scrape it like ``gateway serve``."""
    settings = config.outgoing
    if not settings.dispatch_port:
        yield
        return
    from gateway.ingest import health, metrics_route
    from gateway.server import ListenError

    app = web.Application()
    app[appkeys.CONFIG] = config
    app[appkeys.DATABASE] = db
    app[appkeys.SERVICES] = {}
    app.add_routes(health.routes)
    app.add_routes(metrics_route.routes)
    app.cleanup_ctx.append(metrics_route.metrics_service)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        host, port = settings.dispatch_host, settings.dispatch_port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ListenError.binding(host, port, exc) from exc
        log.info("listening", host=host, port=port, role="dispatch")
        yield
    finally:
        await runner.cleanup()


# What `gateway dispatch` reads of the configuration (sections, and single keys): the rest
# (listeners, ingest, the API, logins) is serve's, and an edit of it needs no restart of this.
DISPATCH_KEYS = (
    "outgoing",
    "security",
    "log",
    "database",
    "hooks.store_bodies",
    "server.shutdown_timeout",
)


def dispatch_reads(key: str) -> bool:
    """Whether ``gateway dispatch`` reads ``key`` (``"section.key"``)."""
    return touches(frozenset({key}), *DISPATCH_KEYS)


async def dispatch(config: Config) -> int:
    """``gateway dispatch``: database, schema, then deliver until SIGTERM/SIGINT; SIGHUP
    reloads the config file like ``gateway serve`` (``[outgoing]``, ``[security]``, ``[log]``).
    The exit status: 0, or 1 when the stop was forced (gateway.shutdown.StopSignals)."""
    from gateway.security.secret_service import follow_secret_keys
    from gateway.server import database_for, prepare_database, stop_on_signals

    stop = asyncio.Event()
    signals = stop_on_signals(stop, overdue_after=config.server.shutdown_timeout + KILL_GRACE)
    reloader = ConfigReloader.for_config(config, uses=dispatch_reads)
    reloader.on_reload(logging_callback)
    try:
        async with database_for(config, signals=signals) as db:
            await prepare_database(db, config)  # installs the secret box (issue 8)
            follow_secret_keys(db, reloader.holder)
            signals.started()
            async with probe_listener(config, db):
                # SIGHUP is remembered until then (gateway.sighup): a reload reaches every
                # subscriber.
                await run_dispatcher(
                    db, config, stop, reloader.holder, lambda: install_sighup(reloader)
                )
    except asyncio.CancelledError as cancelled:
        return signals.forced_exit(cancelled, "stopped")
    return 0
