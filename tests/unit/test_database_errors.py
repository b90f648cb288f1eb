"""Driver errors become the gateway's own: 'the database is not there right now' (503 +
Retry-After, back-off) is told apart from 'this statement is wrong' by SQLSTATE."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.types import ServerVersion

from gateway.exceptions import (
    AlreadyExists,
    DatabaseUnavailable,
    NeedsTransaction,
    TransientConflict,
    UserDisabled,
)
from gateway.storage.database import (
    lost_without_an_answer,
    reported_by_the_server,
    translate_error,
    unsupported_server,
)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a failover still promoting
        asyncpg.exceptions.InvalidPasswordError,  # 28P01: a rotated password
        asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28000: pg_hba
        asyncpg.exceptions.DiskFullError,  # 53100
        asyncpg.exceptions.OutOfMemoryError,  # 53200
        asyncpg.exceptions.TooManyConnectionsError,  # 53300
        asyncpg.exceptions.AdminShutdownError,  # 57P01
        asyncpg.exceptions.CrashShutdownError,  # 57P02
        asyncpg.exceptions.CannotConnectNowError,  # 57P03
        asyncpg.exceptions.QueryCanceledError,  # 57014: statement_timeout, a cancelled backend
        asyncpg.exceptions.PostgresIOError,  # 58030
        asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: the database is gone
        asyncpg.exceptions.ConnectionFailureError,  # 08006
    ],
)
def test_errors_that_hold_for_every_statement_mean_unavailable(
    error: type[asyncpg.PostgresError],
) -> None:
    translated = translate_error(error("server says no"))
    assert isinstance(translated, DatabaseUnavailable)
    assert error.__name__ in str(translated)  # the kind, never the server's message text


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.PostgresSyntaxError,  # 42601
        asyncpg.exceptions.DivisionByZeroError,  # 22012
        asyncpg.exceptions.NotNullViolationError,  # 23502
        asyncpg.exceptions.UndefinedTableError,  # 42P01: a bug, not an outage
    ],
)
def test_errors_of_one_statement_stay_what_they_are(error: type[asyncpg.PostgresError]) -> None:
    exc = error("bad statement")
    assert translate_error(exc) is exc


def test_the_batch_guard_and_constraint_errors_keep_their_own_meaning() -> None:
    guard = asyncpg.exceptions.RaiseError("the batch needs more than one statement")
    guard.sqlstate = "HGB01"  # what schema.sql's hookgate_batch_fits_one_statement raises
    assert isinstance(translate_error(guard), NeedsTransaction)
    refused = asyncpg.exceptions.RaiseError("user 7 is disabled")
    refused.sqlstate = "HGU01"  # what schema.sql's hookgate_token_before_insert raises
    assert isinstance(translate_error(refused), UserDisabled)
    assert isinstance(
        translate_error(asyncpg.exceptions.UniqueViolationError("duplicate")), AlreadyExists
    )


def server_error(error: type[asyncpg.PostgresError], message: str) -> asyncpg.PostgresError:
    """``error`` as asyncpg raises it for the server's ErrorResponse (with its fields)."""
    fields = {"S": "ERROR", "V": "ERROR", "C": error.sqlstate, "M": message}
    return error.new(fields)


def translated_from(exc: BaseException) -> BaseException:
    """What :func:`translated` raises for ``exc`` (the mapped error, with ``exc`` as cause)."""
    mapped = translate_error(exc)
    if mapped is not exc:
        mapped.__cause__ = exc
    return mapped


@pytest.mark.parametrize(
    ("error", "reported"),
    [
        (server_error(asyncpg.exceptions.NotNullViolationError, "null"), True),
        (translated_from(server_error(asyncpg.exceptions.UniqueViolationError, "dup")), True),
        (translated_from(server_error(asyncpg.exceptions.CheckViolationError, "check")), True),
        (server_error(asyncpg.exceptions.DataError, "invalid input syntax for type json"), True),
        # asyncpg's own, before sending: an argument it cannot encode.
        (asyncpg.exceptions.DataError("invalid input for query argument $1"), False),
        (translated_from(server_error(asyncpg.exceptions.AdminShutdownError, "bye")), False),
        (translated_from(ConnectionRefusedError("refused")), False),
        (ValueError("a bug before the statement was sent"), False),
        (AlreadyExists("raised by the gateway itself"), False),
    ],
)
def test_which_errors_show_the_database_was_reachable(error: BaseException, reported: bool) -> None:
    assert reported_by_the_server(error) is reported


def _unavailable_from(exc: BaseException) -> DatabaseUnavailable:
    mapped = translated_from(exc)
    assert isinstance(mapped, DatabaseUnavailable)
    return mapped


def _fatal(error: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return error.new({"S": "FATAL", "V": "FATAL", "C": error.sqlstate, "M": "terminating"})


@pytest.mark.parametrize(
    ("error", "in_doubt"),
    [
        # The server answered the statement with an ERROR: it rolled back.
        (server_error(asyncpg.exceptions.ReadOnlySQLTransactionError, "read-only"), False),
        (server_error(asyncpg.exceptions.QueryCanceledError, "statement timeout"), False),
        # The session ended: the commit may have happened just before.
        (_fatal(asyncpg.exceptions.AdminShutdownError), True),
        (_fatal(asyncpg.exceptions.CrashShutdownError), True),
        # No answer at all.
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
    ],
)
def test_which_failures_leave_a_sent_commit_in_doubt(error: BaseException, in_doubt: bool) -> None:
    assert lost_without_an_answer(_unavailable_from(error)) is in_doubt


@pytest.mark.parametrize(
    "error", [asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError]
)
def test_a_transaction_the_server_rolled_back_for_a_conflict_is_transient(
    error: type[asyncpg.PostgresError],
) -> None:
    """A 503 for clients (a retry succeeds), but the database answered: not an outage for the
    batcher, which retries instead of backing off."""
    translated = translated_from(server_error(error, "deadlock detected"))
    assert isinstance(translated, TransientConflict)
    assert isinstance(translated, DatabaseUnavailable)
    assert reported_by_the_server(translated)
    assert not lost_without_an_answer(translated)


def test_55000_is_an_outage_only_as_the_refusal_of_a_connection() -> None:
    error = asyncpg.exceptions.ObjectNotInPrerequisiteStateError
    refused = error.new(
        {"S": "FATAL", "V": "FATAL", "C": "55000", "M": 'database "x" is not currently accepting'}
    )
    assert isinstance(translate_error(refused), DatabaseUnavailable)
    statement = server_error(error, 'currval of sequence "s" is not yet defined in this session')
    assert translate_error(statement) is statement  # that statement's own error: a 500


def test_the_api_names_a_conflict_as_such_not_as_an_outage() -> None:
    import orjson

    from gateway.management.framework import _translate

    conflict = _translate(TransientConflict("a concurrent write conflicted: DeadlockDetectedError"))
    outage = _translate(DatabaseUnavailable("database unavailable: ConnectionRefusedError"))
    assert (conflict.status, conflict.headers["Retry-After"]) == (503, "1")
    assert orjson.loads(conflict.body)["message"] == (
        "a concurrent change conflicted with this one; retry"
    )
    assert orjson.loads(outage.body)["message"] == "the database is unavailable; retry later"


@pytest.mark.parametrize(
    ("version", "refusal"),
    [
        (
            ServerVersion(13, 0, 16, "final", 0),
            "PostgreSQL 14 or newer is required; the server runs PostgreSQL 13",
        ),
        (
            ServerVersion(9, 6, 24, "final", 0),
            "PostgreSQL 14 or newer is required; the server runs PostgreSQL 9.6",
        ),
        (ServerVersion(14, 0, 0, "final", 0), None),
        (ServerVersion(18, 0, 1, "final", 0), None),
        (ServerVersion(19, 0, 0, "beta", 1), None),
    ],
)
def test_servers_older_than_postgresql_14_are_refused(
    version: ServerVersion, refusal: str | None
) -> None:
    assert unsupported_server(version) == refusal
