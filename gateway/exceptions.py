"""The gateway's own exceptions. Storage translates driver errors into these at its boundary."""

from __future__ import annotations

from datetime import datetime


class GatewayError(Exception):
    """Something went wrong in the gateway."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class NotFound(GatewayError):
    """The requested resource does not exist."""


class MissingReference(NotFound):
    """A referenced resource does not exist."""

    def __init__(self, referenced: str | None) -> None:
        super().__init__(f"{referenced} not found" if referenced else None)
        self.referenced = referenced  # "pipeline", "team" ...; None when not known


class AlreadyExists(GatewayError):
    """A resource with the same unique key already exists."""


class Conflict(GatewayError):
    """The request conflicts with the current state of the resource."""


class Forbidden(GatewayError):
    """The caller may not do this."""


class DatabaseUnavailable(GatewayError):
    """The database is unavailable; retry later."""


class EmbeddedDatabaseStopped(DatabaseUnavailable):
    """The embedded PostgreSQL this process started (or joined) exited while in use: the
    process stops (exit status 1) so that whatever supervises it restarts both."""


class TransientConflict(DatabaseUnavailable):
    """The server rolled the transaction back to break a deadlock or a serialization conflict
    with a concurrent one: nothing was written, and the same request succeeds again. A 503 to
    clients, retried like an outage by executors and dispatchers, but the database answered:
    the ingest batcher retries the batch rather than backing off."""


class WriteInDoubt(DatabaseUnavailable):
    """The connection was lost while a commit may have been under way: the write may or may
    not have committed. ``backend`` is the lost connection's server process (pid, start)."""

    def __init__(self, message: str, backend: tuple[int, datetime]) -> None:
        super().__init__(message)
        self.backend = backend


class PoolExhausted(DatabaseUnavailable):
    """Every database connection of this process stayed busy; retry later."""


class OperationTimedOut(GatewayError):
    """An operation ran out of the time it may take (a large backlog) and was rolled back:
    nothing was changed; retry later. The message says which operation and why."""

    def __init__(self, message: str, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseMisconfigured(GatewayError):
    """database.dsn (or the embedded server's data_dir) cannot be used as written (not an
    outage: retrying will not help until the configuration changes). The command line exits
    with 2, as for any configuration error."""


class DatabaseRefused(DatabaseMisconfigured):
    """The database server refused the connection settings (a parameter it does not know)."""


class SchemaNotApplied(GatewayError):
    """The database refused schema.sql (a role without the privileges it needs, ...)."""


class SchemaLockTimeout(SchemaNotApplied):
    """schema.sql waited too long for a lock another session holds; nothing of it was applied."""


class SchemaNewerThanRelease(SchemaNotApplied):
    """The database's schema is newer than this release's schema.sql: applying the file would
    put older functions back, so nothing was applied."""


class Overloaded(GatewayError):
    """The gateway is overloaded; retry later."""


class NeedsTransaction(GatewayError):
    """A group-commit batch needs more than one statement; nothing of it was written."""


class InvalidCredentials(GatewayError):
    """Invalid email or password."""


class TooManyAttempts(GatewayError):
    """Too many failed attempts; retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidToken(GatewayError):
    """The token is missing, malformed, expired or revoked."""


class UserDisabled(InvalidToken):
    """The user is disabled: no token is issued to them."""
