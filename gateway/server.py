"""Running the gateway: database start-up, listeners, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway import accounts
from gateway.app import create_apps
from gateway.config import Config
from gateway.logs import get_logger
from gateway.storage.database import Database
from gateway.storage.embedded import EmbeddedPostgres

log = get_logger(__name__)


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed: a faster loop for the same code."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@asynccontextmanager
async def database_for(config: Config) -> AsyncIterator[Database]:
    """The configured database, or the embedded one when no DSN is set; stopped on exit."""
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = EmbeddedPostgres(config.database.data_dir)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        db = await Database.connect(dsn, config.database)
        try:
            yield db
        finally:
            await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def prepare_database(db: Database, config: Config) -> None:
    """Apply the schema and create the first admin from the environment if asked to."""
    version = await db.apply_schema()
    log.info("schema_applied", version=version)
    email = os.environ.get("GATEWAY_ADMIN_EMAIL")
    password = os.environ.get("GATEWAY_ADMIN_PASSWORD")
    if email and password and await accounts.ensure_first_admin(db, config.auth, email, password):
        log.info("first_admin_created", email=email)


async def run_listeners(
    config: Config, db: Database, stop: asyncio.Event, *, reuse_port: bool = False
) -> None:
    """Serve both route tables until ``stop`` is set, then drain gracefully."""
    ingest, management = create_apps(config, db)
    access_log = web.AccessLogger if config.server.access_log else None
    runners: list[web.AppRunner] = []
    try:
        for app, host, port in (
            (ingest, config.server.host, config.server.port),
            (
                management,
                config.server.management_host or config.server.host,
                config.server.management_port,
            ),
        ):
            if app is None:
                continue
            runner = web.AppRunner(
                app,
                handle_signals=False,
                access_log_class=access_log or web.AccessLogger,
                access_log=log if access_log else None,
                shutdown_timeout=config.server.shutdown_timeout,
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(
                runner, host, port, reuse_port=reuse_port or None, backlog=1024
            ).start()
            log.info(
                "listening", host=host, port=port, role="ingest" if app is ingest else "management"
            )
        await stop.wait()
        log.info("shutting_down")
    finally:
        # Management first (no hot traffic), ingest last: its cleanup flushes the batcher.
        for runner in reversed(runners):
            await runner.cleanup()


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: stop accepting, finish in-flight work, then exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve(config: Config) -> None:
    """``gateway serve`` for one process: database, schema, listeners, graceful stop."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with database_for(config) as db:
        await prepare_database(db, config)
        await run_listeners(config, db, stop)
    log.info("stopped")
