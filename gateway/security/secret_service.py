"""Secrets at rest in a running process: the configured SecretBox on the database, kept current.

Storage seals secrets with ``db.secret_box`` and the ingest cache and the dispatcher open them
with it, so installing the box on the process's :class:`~gateway.storage.database.Database` is
all the wiring they need. A SIGHUP reload that changes ``[security]`` installs a new box (a key
added, a new primary, an old key removed); the hook cache drops its compiled hooks on the same
reload (gateway.ingest.trigger), and the dispatcher its compiled templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway import appkeys
from gateway.config import Config
from gateway.exceptions import DatabaseUnavailable
from gateway.logs import get_logger
from gateway.reload import CONFIG_HOLDER, ConfigHolder, live_config, touches
from gateway.security.secret_box import SecretBox, generates_key_file, open_secret_box
from gateway.security.secret_keys import load_keys
from gateway.storage.database import Database
from gateway.storage.secret_rotation import (
    missing_key_ids,
    sealed_key_ids,
    unsealed_sensitive_headers,
)

log = get_logger(__name__)


def install_secret_box(db: Database, config: Config) -> None:
    """Open the keys of ``config`` (creating the key file on first start) onto ``db``.

    Raises ValueError when the keys or the key file are invalid.
    """
    db.secret_box = open_secret_box(config.security)


async def check_secret_keys(db: Database, config: Config) -> None:
    """Start-up (once per ``gateway serve``/``dispatch``, before any worker): install the box,
    creating the key file if needed, and log an error when stored secrets were sealed with keys
    this host does not have (their hooks answer 500 until the key is configured).

    A key file is generated only for a database that holds no sealed secret yet: next to
    sealed ones a new key could open none of them (a replaced container that lost its key
    file, a new host not given the shared keys), so that is a ValueError naming the keys.
    """
    if generates_key_file(config.security):
        sealed = await sealed_key_ids(db)
        if sealed:
            raise ValueError(
                f"security.key_file {config.security.key_file!r} does not exist, and the "
                f"database holds {sum(sealed.values())} secret(s) sealed with key(s) "
                f"{', '.join(sorted(sealed))}: a new key would open none of them, so none is "
                "generated. Restore the key file, or set security.secret_keys "
                "(GATEWAY_SECURITY_SECRET_KEYS) to the keys the other hosts use"
            )
    install_secret_box(db, config)
    await report_missing_keys(db, db.secret_box)
    if db.secret_box.enabled and (unsealed := await unsealed_sensitive_headers(db)):
        log.warning(
            "secrets_in_plaintext",
            sensitive_header_values=unsealed,
            hint="outgoing hook header values written by an earlier release before their "
            "names counted as sensitive; `gateway keys rotate` seals them",
        )


async def report_missing_keys(db: Database, box: SecretBox, *, after_reload: bool = False) -> None:
    """Log an error when stored secrets were sealed with keys ``box`` does not have (their
    hooks answer 500 until the key is configured again)."""
    missing = await missing_key_ids(db, box)
    if missing:
        log.error(
            "secret_keys_missing",
            key_ids=sorted(missing),
            sealed_values=sum(missing.values()),
            after_reload=after_reload,
            hint="add the keys to [security] secret_keys (and reload); `gateway keys status` "
            "lists them",
        )


def open_reloaded_keys(new: Config) -> SecretBox:
    """The box a reload's ``[security]`` opens, as it is: valid keys, and a key file that exists
    (a reload never generates one: a new key would make every stored secret unreadable).
    ValueError otherwise, which rejects the reload, so the keys in force stay as they are."""
    security = new.security
    return SecretBox.from_key_set(
        load_keys(
            security.secret_keys,
            security.key_file,
            create_file=False,
            missing_file_error=f"security.key_file: {security.key_file!r} does not exist; a "
            "reload does not create key files (restore the file, or restart to generate a new "
            "key)",
        )
    )


def check_reloaded_keys(old: Config, new: Config, changed: frozenset[str]) -> None:
    """A reload check (ConfigHolder.add_check) for a process that holds no box itself, such as
    the supervisor of workers: it must reject the reloads its workers reject, or a replacement
    worker would start with keys the others refused (a key file it would then generate)."""
    if touches(changed, "security"):
        open_reloaded_keys(new)


def follow_secret_keys(db: Database, holder: ConfigHolder) -> Callable[[], None]:
    """Install a new box on ``db`` whenever a reload changes ``[security]``; returns the
    function that stops following.

    The reload's check opens the box and the reload installs that same box: the key file is
    read once, so a file changed or removed between the two cannot install keys that were
    never checked (nor generate a new key file).
    """
    checked: list[tuple[Config, SecretBox]] = []  # the config the check accepted, its box
    reports: set[asyncio.Task[None]] = set()  # post-reload checks in flight (kept referenced)

    def check_keys(old: Config, new: Config, changed: frozenset[str]) -> None:
        checked.clear()
        if touches(changed, "security"):
            checked.append((new, open_reloaded_keys(new)))

    def reload_keys(old: Config, new: Config, changed: frozenset[str]) -> None:
        if not touches(changed, "security"):
            return
        opened = [box for config, box in checked if config is new]
        checked.clear()
        box = db.secret_box = opened[0] if opened else open_reloaded_keys(new)
        log.info("secret_keys_reloaded", primary_key_id=box.primary_key_id, key_ids=box.key_ids)
        # A key dropped too early (before `gateway keys rotate` finished) or mistyped: said now,
        # not at the first request of each hook it leaves unreadable.
        task = asyncio.get_running_loop().create_task(_report_after_reload(db, box))
        reports.add(task)
        task.add_done_callback(reports.discard)

    remove_check = holder.add_check(check_keys)
    unsubscribe = holder.on_reload(reload_keys)

    def stop() -> None:
        remove_check()
        unsubscribe()

    return stop


async def _report_after_reload(db: Database, box: SecretBox) -> None:
    try:
        await report_missing_keys(db, box, after_reload=True)
    except DatabaseUnavailable as exc:  # the database is away: the check is only advice
        log.warning("secret_keys_check_failed", error=str(exc))


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
