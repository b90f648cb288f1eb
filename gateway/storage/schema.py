"""Applying schema.sql: under an advisory lock, skipped when this file was applied before
(unless the functions it defines have drifted since), left alone on a database a newer release
migrated, with bounded lock waits retried and a message naming whoever held the lock.

:meth:`Database.apply_schema` and :meth:`Database.apply_schema_outcome` call :func:`apply`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import asyncpg

from gateway.exceptions import (
    DatabaseUnavailable,
    SchemaLockTimeout,
    SchemaNewerThanRelease,
    SchemaNotApplied,
    TransientConflict,
)
from gateway.logs import get_logger
from gateway.storage.database import (
    SCHEMA_PATH,
    Database,
    Session,
    close_quietly,
    statement_timed_out,
    translated,
)
from gateway.storage.lock_waits import LockWaitWatch

log = get_logger(__name__)

# How long schema.sql waits for each lock before it gives up and tries again (after a pause):
# shorter than the ingest writers' lock_timeout (storage/ingest.py WRITER_LOCK_TIMEOUT), so
# that the writes queued behind its exclusive lock request wait less than they may.
SCHEMA_LOCK_WAIT = 1.5
SCHEMA_RETRY_PAUSE = 0.5
# Tried again like a lock wait that gave up: a lock wait over lock_timeout, and a deadlock the
# server broke by aborting the schema's transaction (nothing of it was applied).
_SCHEMA_RETRY_SQLSTATES = frozenset({"55P03", "40P01"})

# The schema versions a file records (``INSERT INTO schema_version (version) VALUES (5)``).
_SCHEMA_VERSION_INSERT = re.compile(
    r"INSERT\s+INTO\s+schema_version\s*\(\s*version\s*\)\s*VALUES\s*\(\s*(\d+)\s*\)",
    re.IGNORECASE,
)


def release_schema_version(sql: str) -> int:
    """The schema version a schema.sql brings a database to: the highest it records."""
    versions = [int(v) for v in _SCHEMA_VERSION_INSERT.findall(sql)]
    if not versions:
        raise ValueError("the schema file records no schema_version")
    return max(versions)


def _schema_lock_message(name: str, waited: float, attempts: int, watch: LockWaitWatch) -> str:
    """Why schema.sql was not applied: the lock it waited for, whose, and what to do."""
    tries = "" if attempts == 1 else f" (over {attempts} attempts)"
    if watch.blockers:
        held = "held by " + "; ".join(b.describe() for b in watch.blockers)
    else:
        held = "held by another session (not seen: look for long transactions in pg_stat_activity)"
    return (
        f"cannot apply {name}: it waited {waited:.1f}s{tries} for a lock {held}; nothing was "
        "applied. End or wait out that transaction (a backup, a long query, a session left idle "
        "in a transaction), then run `gateway migrate` or start the gateway again"
    )


class SchemaOutcome(NamedTuple):
    """What applying schema.sql did."""

    version: int  # the database's schema version afterwards
    applied: bool  # False: this file (its SHA-256) was applied here before; nothing ran
    # Applied again although its digest was known: the functions and triggers it defines had
    # been changed since (a release from before schema_digest applied its older file); their
    # names ("function hookgate_x(...)", "trigger t on table").
    repaired: tuple[str, ...] = ()
    # Not applied: the database's schema is newer than this file's (release_version).
    newer_than_release: bool = False
    release_version: int | None = None


def _drift(live: Mapping[str, str], recorded: Mapping[str, str]) -> tuple[str, ...]:
    """The objects whose definitions differ between ``live`` and ``recorded`` (or that only
    one of them has), sorted."""
    return tuple(
        sorted(
            name for name in live.keys() | recorded.keys() if live.get(name) != recorded.get(name)
        )
    )


async def apply(
    db: Database,
    schema_path: Path = SCHEMA_PATH,
    *,
    force: bool = False,
    statement_timeout: float | None = None,
) -> SchemaOutcome:
    """Apply schema.sql (:meth:`Database.apply_schema`), saying what ran, and why.

    Without ``force``, a file whose digest is recorded is still applied when the functions
    and triggers it defines differ from those recorded with it (a release from before
    schema_digest applied its older file over it), unless they are those of a file applied
    here after it (another release's: nothing to repair); logged as
    ``schema_drift_repaired``. A database whose schema version is newer than the file's is
    left alone (``newer_than_release``), and with ``force`` (`gateway migrate`) refused
    with SchemaNewerThanRelease: the file would put older functions back.

    ``statement_timeout``: seconds the file may run (0: no limit); default
    ``command_timeout`` (`gateway migrate` gives its ``--timeout``).

    Each lock is waited for at most ``SCHEMA_LOCK_WAIT``: while an ALTER TABLE waits for
    its exclusive lock (behind a long transaction, a backup), every other session's request
    for that table queues behind it, so it gives up, lets them through and tries again (so
    too after a deadlock), for up to ``command_timeout`` in all; then SchemaLockTimeout
    names whoever held the lock.
    """
    sql = schema_path.read_text(encoding="utf-8")  # noqa: ASYNC240 - once, at start-up
    digest = hashlib.sha256(sql.encode("utf-8")).hexdigest()
    limit = db.config.command_timeout if statement_timeout is None else statement_timeout
    started = time.monotonic()
    watch = LockWaitWatch(db.connection, f"applying {schema_path.name}")
    attempts = 0
    while True:
        attempts += 1
        try:
            outcome = await _apply_once(db, schema_path, sql, digest, force, limit, watch)
        except TransientConflict as exc:
            state = getattr(exc.__cause__, "sqlstate", None)
            if state not in _SCHEMA_RETRY_SQLSTATES:
                raise
            waited = time.monotonic() - started
            if waited + SCHEMA_RETRY_PAUSE + SCHEMA_LOCK_WAIT > db.config.command_timeout:
                raise SchemaLockTimeout(
                    _schema_lock_message(schema_path.name, waited, attempts, watch)
                ) from exc
            log.info(
                "schema_lock_wait_retry",
                attempt=attempts,
                waited_s=round(waited, 1),
                deadlock=state == "40P01",
            )
        else:
            if outcome.repaired:
                log.warning(
                    "schema_drift_repaired",
                    version=outcome.version,
                    objects=list(outcome.repaired),
                    hint="they differed from this release's schema.sql (a release from "
                    "before schema_digest applied its older file): applied again",
                )
            return outcome
        await asyncio.sleep(SCHEMA_RETRY_PAUSE)  # the writers queued behind it go first


async def _apply_once(
    db: Database,
    schema_path: Path,
    sql: str,
    digest: str,
    force: bool,
    limit: float,
    watch: LockWaitWatch,
) -> SchemaOutcome:
    """One attempt of :func:`apply`, in one transaction on a connection of
    its own (its statements may run for ``limit`` seconds, 0: no limit)."""
    release_version = release_schema_version(sql)
    try:
        conn = await db.connection(statement_timeout=limit)
        try:
            async with translated(), conn.transaction():
                session = Session(conn, db.secret_box)
                await session.execute("schema_lock_timeout", f"{round(SCHEMA_LOCK_WAIT * 1000)}ms")
                async with watch.watching(conn.get_server_pid()):
                    await session.execute("schema_lock")
                    outcome = await _changes(
                        session, sql, digest, force, release_version, schema_path.name
                    )
        finally:
            await close_quietly(conn)
    except DatabaseUnavailable as exc:
        if not statement_timed_out(exc):
            raise
        raise SchemaNotApplied(
            f"cannot apply {schema_path.name}: it ran longer than the {limit:g}s it may "
            "take; nothing was applied. Run `gateway migrate` (`--timeout SECONDS`, 0 for "
            "no limit) and start the gateway again"
        ) from exc
    except asyncpg.PostgresError as exc:  # refused by the server, not an outage
        hint = (
            ": run `gateway migrate` as a role that may create and alter the tables (the "
            "owner of the database and of its tables), then start the gateway again"
            if exc.sqlstate == "42501"  # no CREATE on the schema, not the tables' owner ...
            else ""
        )
        raise SchemaNotApplied(f"cannot apply {schema_path.name}: {exc}{hint}") from exc
    return outcome


async def _changes(
    session: Session,
    sql: str,
    digest: str,
    force: bool,
    release_version: int,
    name: str,
) -> SchemaOutcome:
    """Apply the file, or not, under the schema lock (see :func:`apply`)."""
    version: int | None = None
    if await session.fetchval("schema_version_table_exists"):
        version = await session.fetchval("schema_version")
    if version is not None and version > release_version:
        if force:
            raise SchemaNewerThanRelease(
                f"cannot apply {name}: the database's schema is at version {version}, newer "
                f"than this release's {release_version}; applying this file would put older "
                "functions back. Nothing was applied: run the newer release's `gateway "
                "migrate` (instances of this release run on the newer schema without it)"
            )
        return SchemaOutcome(version, False, (), True, release_version)
    repaired: tuple[str, ...] = ()
    if not force:
        recorded = await _recorded_objects(session, digest)
        if recorded is not None:
            mine, later = recorded
            live: dict[str, str] = await session.fetchval("schema_objects")
            if live == mine or live in later:
                return SchemaOutcome(version or 0, False, release_version=release_version)
            repaired = _drift(live, mine)
    await session._executor.execute(sql)
    objects = await session.fetchval("schema_objects")
    await session.execute("schema_digest_record", digest, objects)
    applied_version: int = await session.fetchval("schema_version")
    return SchemaOutcome(applied_version, True, repaired, release_version=release_version)


async def _recorded_objects(
    session: Session, sha256: str
) -> tuple[dict[str, str], list[dict[str, str]]] | None:
    """The objects recorded with this file (its SHA-256, public: the file ships with the
    release), and those recorded with every file applied after it; None when the file was
    not applied here (or its objects were never recorded)."""
    if not await session.fetchval("schema_digest_table_exists"):
        return None
    rows = await session.fetch("schema_digests")
    for index, row in enumerate(rows):
        if row["sha256"] == sha256 and row["objects"] is not None:
            later = [r["objects"] for r in rows[index + 1 :] if r["objects"] is not None]
            return row["objects"], later
    return None
