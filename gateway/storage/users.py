"""Users and bearer tokens in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.exceptions import AlreadyExists, InvalidToken
from gateway.models import User
from gateway.progress import Progress
from gateway.storage.database import Database, Record, Session
from gateway.storage.paging import split_page
from gateway.storage.retention import PRUNE_BATCH, delete_in_batches


class EmailTaken(AlreadyExists):
    """A user with this email already exists."""


async def insert_user(
    db: Session, email: str, name: str, password_hash: str, is_admin: bool
) -> User:
    """Create a user; raise EmailTaken when the email is in use (case-insensitively)."""
    try:
        row = await db.fetchrow("user_insert", email, name, password_hash, is_admin)
    except AlreadyExists as exc:
        raise EmailTaken(f"a user with email {email!r} already exists") from exc
    assert row is not None
    return User.from_row(row)


async def user_for_login(db: Database, email: str) -> Record | None:
    """The user row including its password hash, or None."""
    return await db.fetchrow("user_by_email", email)


async def user_by_email(db: Database, email: str) -> User | None:
    """The user with this email (case-insensitively), disabled or not, or None."""
    row = await db.fetchrow("user_by_email_any", email.strip())
    return None if row is None else User.from_row(row)


async def user_by_id(db: Database, user_id: int) -> User | None:
    """The user, or None."""
    row = await db.fetchrow("user_by_id", user_id)
    return None if row is None else User.from_row(row)


async def user_count(db: Database) -> int:
    """Number of users."""
    count: int = await db.fetchval("user_count")
    return count


async def list_users(db: Database, limit: int, offset: int) -> tuple[list[User], int]:
    """A page of users and the total count."""
    rows, total = split_page(await db.fetch("user_list", limit, offset))
    return [User.from_row(r) for r in rows], total


async def update_password_hash(db: Database, user_id: int, password_hash: str) -> None:
    """Store a re-computed password hash."""
    await db.execute("user_update_password_hash", user_id, password_hash)


async def rehash_password(db: Database, user_id: int, checked_hash: str, new_hash: str) -> bool:
    """Store a re-computed hash of the same password unless the stored one is no longer
    ``checked_hash`` (changed meanwhile); whether it was stored."""
    return await db.fetchval("user_rehash_password", user_id, checked_hash, new_hash) is not None


async def lock_for_password_change(db: Session, user_id: int) -> str | None:
    """Lock an active user's row for a change of their password; their password hash, or None
    when they are disabled or gone."""
    password_hash: str | None = await db.fetchval("user_lock_for_password_change", user_id)
    return password_hash


async def retire_refresh_token(db: Session, digest: bytes) -> None:
    """Make a spent refresh token expire now (it no longer counts as evidence of a copy)."""
    await db.execute("token_retire_refresh", digest)


async def lock_for_session_end(db: Session, user_id: int) -> None:
    """Lock the user's row against the token inserts of logins and refreshes (see the query)."""
    await db.fetchval("user_lock_for_session_end", user_id)


async def lock_for_login(db: Session, user_id: int) -> str | None:
    """Share-lock an active user's row for a login's token inserts; their password hash, or
    None when they are disabled or gone."""
    password_hash: str | None = await db.fetchval("user_lock_for_login", user_id)
    return password_hash


async def lock_for_admin_change(db: Session, acting_id: int, user_id: int) -> User | None:
    """Lock the rows of the acting administrator and of the user they change, in id order (see
    the query); the acting user as they are now, or None when they are gone."""
    rows = await db.fetch("user_lock_for_admin_change", [acting_id, user_id])
    acting = [row for row in rows if row["id"] == acting_id]
    return User.from_row(acting[0]) if acting else None


async def update_user(
    db: Session,
    user_id: int,
    *,
    name: str | None = None,
    is_admin: bool | None = None,
    is_active: bool | None = None,
    password_hash: str | None = None,
) -> User | None:
    """Change the given fields (None: unchanged); None when there is no such user."""
    row = await db.fetchrow("user_update", user_id, name, is_admin, is_active, password_hash)
    return None if row is None else User.from_row(row)


async def revoke_user_tokens(db: Session, user_id: int, kinds: tuple[str, ...]) -> int:
    """Revoke every live token of ``kinds`` of a user; return how many."""
    count: int = await db.fetchval("token_revoke_for_user", user_id, list(kinds))
    return count


async def insert_token(
    db: Session, user_id: int, kind: str, digest: bytes, name: str, ttl_seconds: int | None
) -> Record:
    """Store a token hash; ``ttl_seconds=None`` never expires."""
    expires = None if ttl_seconds is None else datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    row = await db.fetchrow("token_insert", user_id, kind, digest, name, expires)
    assert row is not None
    return row


async def insert_personal_token(
    db: Database,
    user_id: int,
    bearer: bytes,
    digest: bytes,
    name: str,
    ttl_seconds: int | None,
    limit: int,
) -> Record | None:
    """Store a personal token hash unless the user already holds ``limit`` live personal
    tokens (None then; 0: no limit). Creations for one user take turns on their row, so two at
    ``limit - 1`` cannot both succeed. InvalidToken when the bearer token making the request
    (hash ``bearer``) was revoked, or expired, since it authenticated it (see the query
    token_lock_live_bearer)."""
    async with db.transaction() as session:
        # The user row first, with or without a limit: a password change or a disable locks
        # it, then the tokens; the token insert's trigger share-locks it after the bearer.
        await session.fetchval("user_lock_for_personal_token", user_id)
        if await session.fetchval("token_lock_live_bearer", bearer) is None:
            raise InvalidToken("the bearer token is invalid, expired or revoked")
        if limit and await session.fetchval("token_count_live_personal", user_id) >= limit:
            return None
        return await insert_token(session, user_id, "personal", digest, name, ttl_seconds)


async def authenticate_token(
    db: Database, digest: bytes, kinds: tuple[str, ...]
) -> tuple[User, int, str] | None:
    """(user, token id, kind) for a live token of one of ``kinds``, else None."""
    row = await db.fetchrow("token_authenticate", digest, list(kinds))
    if row is None:
        return None
    return User.from_row(row), row["token_id"], row["kind"]


async def revoke_token(db: Session, digest: bytes, kind: str) -> int | None:
    """Revoke a live token; return its user id, or None when there was none to revoke."""
    user_id: int | None = await db.fetchval("token_revoke_by_hash", digest, kind)
    return user_id


async def spent_refresh_token_owner(db: Session, digest: bytes) -> int | None:
    """The user of a refresh token with this hash that a refresh spent before it expired (not
    one a logout or a password change ended), or None."""
    user_id: int | None = await db.fetchval("token_spent_refresh_owner", digest)
    return user_id


async def lock_token_owner(db: Session, digest: bytes, kind: str) -> None:
    """Share-lock the user row of a token before the token is locked (a refresh or a logout,
    which lock tokens one by one: see the query)."""
    await db.fetchval("token_lock_owner", digest, kind)


async def personal_token_expiry(db: Session, digest: bytes) -> tuple[bool, datetime | None]:
    """(whether the token with this hash is a personal one, its expiry: None for never)."""
    row = await db.fetchrow("token_personal_expiry", digest)
    return (False, None) if row is None else (True, row["expires_at"])


async def is_live_personal_token(db: Session, digest: bytes) -> bool:
    """Whether the token with this hash is a personal one, neither revoked nor expired."""
    return await db.fetchrow("token_personal_live", digest) is not None


async def list_personal_tokens(db: Database, user_id: int) -> list[dict[str, Any]]:
    """A user's personal tokens (metadata only)."""
    return [dict(r) for r in await db.fetch("token_list_personal", user_id)]


async def revoke_personal_token(db: Database, token_id: int, user_id: int) -> bool:
    """Revoke one of the user's personal tokens; False when it is not theirs or absent."""
    return await db.fetchval("token_revoke_personal", token_id, user_id) is not None


async def prune_tokens(
    db: Database, cutoff: datetime, batch: int = PRUNE_BATCH, progress: Progress | None = None
) -> int:
    """Delete tokens that expired or were revoked before ``cutoff`` (not a revoked refresh
    token still unexpired: see the query), ``batch`` rows per statement
    (gateway.storage.retention); return how many. Every login and refresh adds two rows."""
    return await delete_in_batches(db, "tokens_prune_dead", cutoff, "auth_tokens", batch, progress)
