"""The pool owner: runs named queries and translates driver errors into gateway exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import orjson
from asyncpg.types import ServerVersion

from gateway.config import DatabaseConfig
from gateway.config_dsn import SSL_MODES
from gateway.exceptions import (
    AlreadyExists,
    Conflict,
    DatabaseMisconfigured,
    DatabaseRefused,
    DatabaseUnavailable,
    NeedsTransaction,
    PoolExhausted,
    TransientConflict,
    UserDisabled,
)
from gateway.logs import get_logger
from gateway.security.secret_box import PLAINTEXT_BOX, SecretBox
from gateway.storage.error_details import withhold_row_values
from gateway.storage.queries import QUERIES
from gateway.storage.references import broken_reference

if TYPE_CHECKING:
    from gateway.storage.schema import SchemaOutcome

log = get_logger(__name__)


def _find_schema() -> Path:
    # A checkout (or editable install) has it at the top; a wheel install under share/hookgate.
    candidates = (
        Path(__file__).resolve().parents[2] / "schema.sql",
        Path(sys.prefix) / "share" / "hookgate" / "schema.sql",
    )
    return next((p for p in candidates if p.exists()), candidates[0])


SCHEMA_PATH = _find_schema()
MIN_SERVER_MAJOR = 14  # schema.sql: CREATE OR REPLACE TRIGGER


Record = Mapping[str, Any]

# Errors that mean "the database is not there right now" rather than "your query is wrong":
# the client-side ones here, the server's by SQLSTATE below.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    # A connection the server dropped mid-statement (a restart, a fast shutdown) can leave
    # asyncpg's protocol half-way, and the ROLLBACK that follows then fails with "cannot switch
    # to state ...; another operation is in progress": the same outage, seen one step later.
    asyncpg.InternalClientError,
)


# SQLSTATE classes that say the same of every statement, whatever it is, until the database or
# its operator changes something: 08 connection, 28 authorization (a rotated password, pg_hba),
# 53 insufficient resources (disk full, out of memory, too many connections), 57 operator
# intervention (shutdown, crash recovery, "cannot connect now", a cancelled statement), 58
# system (I/O) errors.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "53", "57", "58"})
# ... and single codes: a read-only server (a failover still promoting, a standby), a missing
# database (dropped, or not created yet).
_UNAVAILABLE_CODES = frozenset({"25006", "3D000"})
# 55000 (object not in prerequisite state) is an outage only as the FATAL refusal of a new
# connection ("database ... is not currently accepting connections", after an operator's ALTER
# DATABASE ... ALLOW_CONNECTIONS false); as an ERROR of a statement it is that statement's.
_UNAVAILABLE_WHEN_FATAL = frozenset({"55000"})
# A transaction the server aborted to break a deadlock or a serialization conflict: nothing of
# it was written and the same request succeeds again (TransientConflict).
# Deadlock, serialization failure, and a lock wait over lock_timeout (set on the ingest writers:
# a lock held on one pipeline must not stall the writes of all the others).
_CONFLICT_CODES = frozenset({"40P01", "40001", "55P03"})

# Raised by schema.sql's hookgate_batch_fits_one_statement().
_NEEDS_TRANSACTION_SQLSTATE = "HGB01"
# Raised by schema.sql's hookgate_token_before_insert(): a token for a disabled user (the
# gateway checks first; the trigger stops releases that do not know users.disabled_at).
_USER_DISABLED_SQLSTATE = "HGU01"


def translate_error(exc: BaseException) -> BaseException:
    """Map an asyncpg/OS error to the gateway's own exception (or return it unchanged)."""
    if getattr(exc, "sqlstate", None) == _NEEDS_TRANSACTION_SQLSTATE:
        return NeedsTransaction()
    if getattr(exc, "sqlstate", None) == _USER_DISABLED_SQLSTATE:
        return UserDisabled()
    if isinstance(exc, asyncpg.UniqueViolationError):
        return AlreadyExists(f"already exists ({exc.constraint_name})")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return broken_reference(exc)
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.RestrictViolationError):
        return Conflict(f"the change violates a rule ({exc.constraint_name})")
    state = getattr(exc, "sqlstate", None)
    if state in _CONFLICT_CODES:
        return TransientConflict(f"a concurrent write conflicted: {_described(exc)}")
    if isinstance(exc, _UNAVAILABLE) or (
        isinstance(state, str)
        and (
            state[:2] in _UNAVAILABLE_CLASSES
            or state in _UNAVAILABLE_CODES
            or (state in _UNAVAILABLE_WHEN_FATAL and _severity(exc) == "FATAL")
        )
    ):
        return DatabaseUnavailable(f"database unavailable: {_described(exc)}")
    return exc


def statement_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (as raised by asyncpg, or as translated) is the server cancelling a
    statement at its statement_timeout (57014, which :func:`translate_error` counts as an outage
    with the rest of class 57): the database is there; the work was too much for the time, and
    was rolled back. (The server's timeout fires before the client's, see server_settings.)"""
    return any(
        isinstance(error, asyncpg.QueryCanceledError) and "statement timeout" in str(error)
        for error in (exc, exc.__cause__)
    )


def _severity(exc: BaseException) -> str | None:
    """The server's severity of an error it reported (FATAL, ERROR ...), untranslated."""
    return getattr(exc, "severity_en", None) or getattr(exc, "severity", None)


def _commit_in_doubt(exc: BaseException) -> bool:
    """Whether ``exc``, raised while COMMIT was sent, leaves its outcome unknown (see
    :func:`lost_without_an_answer`)."""
    mapped = translate_error(exc)
    if not isinstance(mapped, DatabaseUnavailable):
        return False
    mapped.__cause__ = exc
    return lost_without_an_answer(mapped)


def dsn_target(dsn: str) -> str:
    """Where a DSN points, for messages: host(s), port and database, never the user's
    password (nor any query parameter but the socket directory)."""
    try:
        parts = urlsplit(dsn)
        hosts = parts.netloc.rpartition("@")[2] or dict(parse_qsl(parts.query)).get("host", "")
        return f"{hosts or 'localhost'}{parts.path or '/'}"
    except ValueError:
        return "the configured database"


# DSN parameters that name a file the driver reads before it connects, and the sslmode from
# which it reads them (asyncpg's default mode is prefer). A missing one surfaces from the
# driver as a bare "[Errno 2] No such file or directory", an outage to every caller.
_DSN_FILE_PARAMETERS = {
    "sslcert": "allow",
    "sslkey": "allow",
    "sslrootcert": "require",
    "sslcrl": "require",
}


def unreadable_dsn_files(dsn: str) -> str | None:
    """The first file named by the DSN that the driver will read and this process cannot, as
    a message; None when they all can be (or none is named)."""
    try:
        named = dict(parse_qsl(urlsplit(dsn).query))
    except ValueError:
        return None  # config validation words a DSN that is not a URL
    # The driver builds its TLS context from these files while it parses the DSN, before it
    # knows whether a host is a Unix socket (where it then uses no TLS): checked for any host.
    # As the driver decides it: the DSN's sslmode, else PGSSLMODE, else prefer.
    mode = (named.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer").replace("_", "-")
    if mode not in SSL_MODES:
        return None  # config validation words it (or the driver will, for PGSSLMODE)
    for parameter, from_mode in _DSN_FILE_PARAMETERS.items():
        path = named.get(parameter)
        if not path or SSL_MODES.index(mode) < SSL_MODES.index(from_mode):
            continue
        local = os.path.expanduser(path)
        try:
            with open(local, "rb"):
                pass
            if parameter in ("sslrootcert", "sslcrl"):  # read as the driver will, without a key
                ssl.create_default_context().load_verify_locations(local)
        except ssl.SSLError as exc:
            return (
                f"database.dsn parameter {parameter!r} names {path!r}, which holds no PEM "
                f"certificate or revocation list ({exc.reason or exc})"
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return f"database.dsn parameter {parameter!r} names {path!r}: {reason.lower()}"
    return None


# What the server answers a connection whose startup packet names a setting it does not know
# (42704 undefined_object) or gives one an invalid value (22023 invalid_parameter_value).
_SETTING_REFUSED = frozenset({"42704", "22023"})


def _one_line(exc: asyncpg.PostgresError) -> str:
    """The server's message and, when it gave one, its detail, on one line."""
    message = " ".join(str(exc.args[0] if exc.args else exc).split())
    detail = getattr(exc, "detail", None)
    return f"{message} ({' '.join(detail.split())})" if detail else message


def _described(exc: BaseException) -> str:
    """The error's class and its first line (the server's or the OS's words: "role \"app\"
    does not exist", "Connect call failed ('10.0.0.5', 5432)"); neither the driver nor the
    server puts a password in one."""
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def reported_by_the_server(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the database server answered with (as raised by asyncpg, or
    as translated by :func:`translate_error`), so that it was reachable. False for
    DatabaseUnavailable, and for errors raised before a statement reached the server: asyncpg
    raises some of its PostgresError classes itself (DataError for an argument it cannot
    encode), but only the server's carry a severity."""
    if isinstance(exc, DatabaseUnavailable) and not isinstance(exc, TransientConflict):
        return False
    return any(
        isinstance(error, asyncpg.PostgresError) and error.severity is not None
        for error in (exc, exc.__cause__)
    )


def lost_without_an_answer(exc: DatabaseUnavailable) -> bool:
    """Whether a statement already sent may have run to the end (committed) although ``exc``
    was raised: the connection was lost, a client-side timeout fired, or the server ended the
    session (a FATAL error: an administrator's command, a shutdown), which can come right after
    a commit. An ERROR the server answered with means the statement, and its transaction, did
    not commit."""
    cause = exc.__cause__
    if isinstance(cause, asyncpg.PostgresError) and cause.severity is not None:
        return _severity(cause) in ("FATAL", "PANIC")
    return True


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise driver errors inside the block as gateway exceptions."""
    try:
        yield
    except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
        withhold_row_values(exc)
        mapped = translate_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def unsupported_server(version: ServerVersion) -> str | None:
    """Why the gateway cannot use a server of this version (schema.sql needs PostgreSQL 14:
    ``CREATE OR REPLACE TRIGGER``), or None. Refused at connect time, in these words, rather
    than with a syntax error halfway through the schema."""
    if version.major >= MIN_SERVER_MAJOR:
        return None
    # Before 10 a major version had two numbers (9.6); asyncpg reads 13.16 as 13.0.16.
    major = f"{version.major}.{version.minor}" if version.major < 10 else str(version.major)
    return f"PostgreSQL {MIN_SERVER_MAJOR} or newer is required; the server runs PostgreSQL {major}"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb: version byte 1 followed by the JSON text; orjson both ways.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close a dedicated connection, dropping it when it cannot say goodbye (broken)."""
    try:
        # Not wait_for: on Python 3.11 it swallows a cancellation that comes as the close ends.
        async with asyncio.timeout(2):
            await conn.close()
    except Exception:
        conn.terminate()


class Session:
    """Named-query methods over one connection (inside a transaction) or the pool."""

    def __init__(self, executor: Any, secret_box: SecretBox = PLAINTEXT_BOX) -> None:
        self._executor = executor
        # Seals hook secrets on write (storage/hooks.py, storage/outgoing.py). The process
        # installs the configured box on its Database (gateway.security.secret_service).
        self.secret_box = secret_box

    async def fetch(self, name: str, *args: Any) -> list[Record]:
        async with translated():
            return list(await self._executor.fetch(QUERIES[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> Record | None:
        async with translated():
            row: Record | None = await self._executor.fetchrow(QUERIES[name], *args)
            return row

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with translated():
            return await self._executor.fetchval(QUERIES[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        async with translated():
            status: str = await self._executor.execute(QUERIES[name], *args)
            return status

    async def executemany(self, name: str, args: Sequence[Sequence[Any]]) -> None:
        async with translated():
            await self._executor.executemany(QUERIES[name], args)


class _BoundedPool:
    """The pool's query shortcuts, waiting at most ``wait`` seconds for a free connection
    (asyncpg's own wait forever): past that, PoolExhausted, which every caller answers as a 503
    with Retry-After instead of leaving the request hanging."""

    def __init__(self, pool: asyncpg.Pool, wait: float) -> None:
        self._pool = pool
        self._wait = wait

    async def fetch(self, query: str, *args: Any) -> Any:
        async with self.acquired() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        async with self.acquired() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquired() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        async with self.acquired() as conn:
            return await conn.execute(query, *args)

    async def executemany(self, query: str, args: Any) -> Any:
        async with self.acquired() as conn:
            return await conn.executemany(query, args)

    @asynccontextmanager
    async def acquired(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self._pool.acquire(timeout=self._wait)
        except TimeoutError as exc:
            raise PoolExhausted(
                f"no database connection of this process became free within {self._wait:g}s "
                "(database.pool_max_size); retry later"
            ) from exc
        try:
            yield conn
        finally:
            # Once COMMIT has answered, the outcome is known: the reset on release failing
            # (the server going away right then) must not turn it into an error; asyncpg
            # terminates such a connection itself and the pool opens a new one.
            with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                await self._pool.release(conn)


def server_settings(config: DatabaseConfig) -> dict[str, str]:
    """Settings of every pool and writer connection. The server gives up on a statement
    (and rolls it back) a little before the client's ``command_timeout`` would: a client-side
    timeout closes the connection without cancelling the statement, so a write waiting on a
    lock would otherwise commit after its caller had been told that it failed."""
    seconds = max(config.command_timeout * 0.8, config.command_timeout - 1.0)
    return {"statement_timeout": str(max(1, round(seconds * 1000)))}


class Database(Session):
    """A connection pool plus named queries; the rest of the gateway never sees asyncpg."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, config: DatabaseConfig | None = None) -> None:
        config = config or DatabaseConfig()
        self._bounded = _BoundedPool(pool, config.connect_timeout)
        super().__init__(self._bounded)
        self.pool = pool
        self.dsn = dsn
        self.config = config

    @classmethod
    async def connect(cls, dsn: str, config: DatabaseConfig | None = None) -> Database:
        """Open a pool; raise DatabaseUnavailable when the server cannot be reached."""
        config = config or DatabaseConfig()
        target = f"(connecting to {dsn_target(dsn)})"
        unreadable = unreadable_dsn_files(dsn)
        if unreadable:
            raise DatabaseMisconfigured(f"{unreadable} {target}")
        try:
            pool = await cls._open_pool(dsn, config, target)
        except DatabaseUnavailable as exc:
            # The driver's own words on the DSN, before any packet: not an outage. (Later, on a
            # running pool, the same error stays DatabaseUnavailable: a 503, never a crash.)
            if isinstance(exc.__cause__, asyncpg.ClientConfigurationError):
                raise DatabaseMisconfigured(
                    f"database.dsn cannot be used: {_described(exc.__cause__)} {target}"
                ) from exc
            raise DatabaseUnavailable(f"{exc} {target}") from exc
        except asyncpg.PostgresError as exc:
            refused = f"the database refused the connection: {_one_line(exc)}"
            if exc.sqlstate in _SETTING_REFUSED:  # a DSN parameter sent on as a setting
                raise DatabaseRefused(
                    f"{refused} (query parameters in database.dsn that the driver does not "
                    f"know are sent to the server as settings) {target}"
                ) from exc
            # Anything else the server answered (a missing CONNECT privilege ...): the
            # server's words, on one line, and the exit status of an outage.
            raise DatabaseUnavailable(f"{refused} {target}") from exc
        return cls(pool, dsn, config)

    @staticmethod
    async def _open_pool(dsn: str, config: DatabaseConfig, target: str) -> asyncpg.Pool:
        async with translated():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=config.pool_min_size,
                max_size=config.pool_max_size,
                timeout=config.connect_timeout,
                command_timeout=config.command_timeout,
                server_settings=server_settings(config),
                init=_init_connection,
            )
            try:
                async with pool.acquire() as conn:  # the server announced its version at connect
                    unsupported = unsupported_server(conn.get_server_version())
            except BaseException:
                pool.terminate()
                raise
        if unsupported:
            pool.terminate()
            raise DatabaseMisconfigured(f"{unsupported} {target}")
        return pool

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections in use."""
        try:
            async with asyncio.timeout(10):
                await self.pool.close()
        except TimeoutError:
            self.pool.terminate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """A Session bound to one connection inside a transaction.

        Once COMMIT has answered, the outcome is known: returning the connection to the pool
        (asyncpg resets it with a few statements) may still fail if the server goes away right
        then, and that must not turn a committed write into an error the caller reports (an
        ingest 503 for a delivery that was in fact stored). asyncpg terminates such a connection
        itself; the pool opens a new one.
        """
        async with translated(), self._bounded.acquired() as conn:
            xid: int | None = None  # set once the body is done: COMMIT is sent next
            pid = conn.get_server_pid()  # known locally; gone with the connection
            try:
                async with conn.transaction():
                    yield Session(conn, self.secret_box)
                    xid = await conn.fetchval(QUERIES["transaction_id"])
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                if xid is None or not _commit_in_doubt(exc):
                    raise  # failed before COMMIT, or the server answered it with an error
                if not await self._committed(xid, pid):
                    raise
                # The commit happened; only its answer was lost: the caller's write stands.
                log.warning("commit_answer_lost", committed=True, error=_described(exc))

    async def _committed(self, xid: int, pid: int) -> bool:
        """Whether transaction ``xid``, whose COMMIT answer was lost with its connection,
        committed: asked on another connection, after ending the server process ``pid`` if it
        still runs that transaction (until it is gone it may still commit, or still roll
        back). False when the outcome cannot be known within ``connect_timeout``."""
        wait = self.config.connect_timeout
        try:
            async with asyncio.timeout(wait):
                status = await self.fetchval("transaction_status", xid)
                if status == "in progress":
                    await self.fetchval("transaction_end_backend", xid, pid, int(wait * 500))
                    status = await self.fetchval("transaction_status", xid)
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("commit_outcome_unknown", error=str(exc) or "timeout")
            return False
        return bool(status == "committed")

    async def ping(self, within: float | None = None) -> bool:
        """True when a query round-trips within ``within`` seconds, waiting for a free pool
        connection included (default: the connect timeout)."""
        try:
            async with asyncio.timeout(within or self.config.connect_timeout):
                return await self.fetchval("ping") == 1
        except (DatabaseUnavailable, TimeoutError):
            return False
        except Exception as exc:  # a probe fails closed: "not ready", never an error page
            log.warning("database_ping_failed", error=_described(exc))
            return False

    async def apply_schema(
        self,
        schema_path: Path = SCHEMA_PATH,
        *,
        force: bool = False,
        statement_timeout: float | None = None,
    ) -> int:
        """Apply schema.sql (idempotent) under an advisory lock; return the schema version.

        A file applied before (the same SHA-256) is skipped unless ``force``: its ALTER TABLE
        statements would take ACCESS EXCLUSIVE locks on the busiest tables even when they change
        nothing, and behind a long reader (a pg_dump) hold up every write meanwhile.
        """
        return (
            await self.apply_schema_outcome(
                schema_path, force=force, statement_timeout=statement_timeout
            )
        ).version

    async def apply_schema_outcome(
        self,
        schema_path: Path = SCHEMA_PATH,
        *,
        force: bool = False,
        statement_timeout: float | None = None,
    ) -> SchemaOutcome:
        """:meth:`apply_schema`, also saying what ran, and why (gateway.storage.schema)."""
        from gateway.storage import schema

        return await schema.apply(
            self, schema_path, force=force, statement_timeout=statement_timeout
        )

    async def connection(
        self, *, lock_timeout: float | None = None, statement_timeout: float | None = None
    ) -> asyncpg.Connection:
        """A dedicated connection set up like the pool's (codecs, timeouts); close it when done.

        For a long-lived writer that would otherwise pay the pool's acquire and its release
        reset (one more round trip) on every transaction. ``lock_timeout`` (seconds): a
        statement waiting longer for a lock fails with TransientConflict.
        ``statement_timeout`` (seconds, 0: none): how long a statement may run, instead of
        ``command_timeout`` (the server gives up first, as on the pool's connections).
        """
        config = self.config
        settings = server_settings(config)
        command_timeout: float | None = config.command_timeout
        if statement_timeout is not None:
            settings["statement_timeout"] = str(round(statement_timeout * 1000))
            command_timeout = (
                None
                if statement_timeout == 0
                else statement_timeout + max(1.0, statement_timeout / 4)
            )
        if lock_timeout is not None:
            settings["lock_timeout"] = str(max(1, round(lock_timeout * 1000)))
        async with translated():
            conn = await asyncpg.connect(
                self.dsn,
                timeout=config.connect_timeout,
                command_timeout=command_timeout,
                server_settings=settings,
            )
            try:
                await _init_connection(conn)
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def listen(self, channel: str, callback: Any) -> asyncpg.Connection:
        """A dedicated connection listening on ``channel``; close it to stop."""
        async with translated():
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.add_listener(channel, callback)
            except BaseException:  # cancelled (a listener closed, a timeout) or failed
                conn.terminate()
                raise
        return conn
