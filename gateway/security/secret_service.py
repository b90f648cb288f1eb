"""Secrets at rest in a running process: the configured SecretBox on the database, kept current.

Storage seals secrets with ``db.secret_box`` and the ingest cache and the dispatcher open them
with it, so installing the box on the process's :class:`~gateway.storage.database.Database` is
all the wiring they need. A SIGHUP reload that changes ``[security]`` installs a new box (a key
added, a new primary, an old key removed); the hook cache drops its compiled hooks on the same
reload (gateway.ingest.trigger), and the dispatcher its compiled templates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway import appkeys
from gateway.config import Config
from gateway.logs import get_logger
from gateway.reload import CONFIG_HOLDER, ConfigHolder, live_config, touches
from gateway.security.secret_box import open_secret_box
from gateway.storage.database import Database
from gateway.storage.secret_rotation import missing_key_ids

log = get_logger(__name__)


def install_secret_box(db: Database, config: Config) -> None:
    """Open the keys of ``config`` (creating the key file on first start) onto ``db``.

    Raises ValueError when the keys or the key file are invalid.
    """
    db.secret_box = open_secret_box(config.security)


async def check_secret_keys(db: Database, config: Config) -> None:
    """Start-up (once per ``gateway serve``/``dispatch``, before any worker): install the box,
    creating the key file if needed, and log an error when stored secrets were sealed with keys
    this host does not have (their hooks answer 500 until the key is configured)."""
    install_secret_box(db, config)
    missing = await missing_key_ids(db, db.secret_box)
    if missing:
        log.error(
            "secret_keys_missing",
            key_ids=sorted(missing),
            secrets=sum(missing.values()),
            hint="add the keys to [security] secret_keys; `gateway keys status` lists them",
        )


def follow_secret_keys(db: Database, holder: ConfigHolder) -> Callable[[], None]:
    """Install a new box on ``db`` whenever a reload changes ``[security]``; returns the
    function that stops following."""

    def reload_keys(old: Config, new: Config, changed: frozenset[str]) -> None:
        if not touches(changed, "security"):
            return
        # A bad key file raises: the reload logs it and the previous box stays installed.
        install_secret_box(db, new)
        box = db.secret_box
        log.info("secret_keys_reloaded", primary_key_id=box.primary_key_id, key_ids=box.key_ids)

    return holder.on_reload(reload_keys)


async def secret_box_service(app: web.Application) -> AsyncIterator[None]:
    """Install the configured box before the other services start; follow reloads."""
    db, services = app[appkeys.DATABASE], app[appkeys.SERVICES]
    holder: ConfigHolder | None = services.get(CONFIG_HOLDER)
    install_secret_box(db, live_config(app))
    unsubscribe = follow_secret_keys(db, holder) if holder is not None else None
    try:
        yield
    finally:
        if unsubscribe is not None:
            unsubscribe()
