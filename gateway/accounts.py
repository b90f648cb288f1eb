"""Account use cases: create users, log in, refresh and check bearer tokens."""

from __future__ import annotations

import hmac
import unicodedata

from gateway.config import MAX_PASSWORD_LENGTH, AuthConfig
from gateway.exceptions import (
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    NotFound,
    TooManyAttempts,
    UserDisabled,
)
from gateway.logs import get_logger
from gateway.models import TokenPair, User
from gateway.security import passwords, tokens
from gateway.security.login_throttle import LoginThrottle
from gateway.storage import users
from gateway.storage.database import Database, Record, Session

log = get_logger(__name__)

BEARER_KINDS = ("access", "personal")
SESSION_KINDS = ("access", "refresh")  # what a login issues; a password change ends them
TOKEN_KINDS = ("access", "refresh", "personal")


async def create_user(
    db: Database,
    auth: AuthConfig,
    email: str,
    password: str,
    *,
    name: str = "",
    is_admin: bool = False,
    acting: User | None = None,
) -> User:
    """Validate and create a user (raises ValueError naming the bad field, or EmailTaken).

    With ``acting`` (the administrator asking, through the API), the user is created only if
    they still are an active administrator when it is written (Forbidden; InvalidToken when
    disabled): the password's hash takes a good part of a second, and one demoted meanwhile
    must not create an account, an administrator's say, once their demotion was answered."""
    email = check_new_user(auth, email, password)
    password_hash = await passwords.hash_password_in_thread(password)
    async with db.transaction() as session:
        if acting is not None:
            await still_admin(session, acting)
        user = await users.insert_user(session, email, name, password_hash, is_admin)
    log.info("user_created", user_id=user.id, is_admin=is_admin)
    return user


async def any_user(db: Database) -> bool:
    """Whether the database has any user yet (the first-admin bootstrap acts only without)."""
    return await users.user_count(db) > 0


async def ensure_first_admin(db: Database, auth: AuthConfig, email: str, password: str) -> bool:
    """Create an admin from the environment when the database has no users yet."""
    if await any_user(db):
        return False
    try:
        await create_user(db, auth, email, password, is_admin=True)
    except users.EmailTaken:  # another worker won the race
        return False
    return True


async def login(
    db: Database,
    auth: AuthConfig,
    email: str,
    password: str,
    *,
    throttle: LoginThrottle | None = None,
    address: str | None = None,
) -> TokenPair:
    """Exchange credentials for tokens; unknown email and wrong password look identical.

    With a ``throttle``, a client (``address``) or account past its failed-login limit gets
    TooManyAttempts before the password is checked.
    """
    row = await _password_checked(
        db, auth, email, password, throttle, address, "too many failed logins"
    )
    if row is None:
        log.info("login_failed", client_ip=address)
        raise InvalidCredentials()
    checked_hash: str = row["password_hash"]
    if passwords.needs_rehash(checked_hash):
        new_hash = await passwords.hash_password_in_thread(password)
        if await users.rehash_password(db, row["id"], checked_hash, new_hash):
            checked_hash = new_hash
    try:
        pair = await _issue_login_pair(db, auth, row["id"], checked_hash, password)
    except UserDisabled:  # disabled since its row was read: refused like any disabled user
        pair = None
    if pair is None:
        log.info("login_failed", client_ip=address)
        raise InvalidCredentials()
    log.info("login_succeeded", user_id=row["id"])
    return pair


def _same_hash(stored: str, checked: str) -> bool:
    """Whether the stored password hash is still the one a password was checked against
    (compared in constant time, as every secret-looking value is)."""
    return hmac.compare_digest(stored.encode(), checked.encode())


async def _issue_login_pair(
    db: Database, auth: AuthConfig, user_id: int, checked_hash: str, password: str
) -> TokenPair | None:
    """A new pair for a login whose password matched ``checked_hash``; None when the user was
    disabled, or their password changed, since it was read. A check takes a good part of a
    second: without this, a login with the old password that was in flight when the password
    was reset would keep a session the reset was meant to end."""
    async with db.transaction() as session:
        # The lock holds off a password change or a disable until our tokens exist, so that
        # it ends them.
        current = await users.lock_for_login(session, user_id)
        if current is None:
            return None
        # Changed since the check: a reset (the password no longer matches), or a concurrent
        # login's re-hash of the same password (it still does).
        if not _same_hash(current, checked_hash) and not await passwords.verify_password_in_thread(
            current, password
        ):
            return None
        return await _issue_pair(session, auth, user_id)


async def change_own_password(
    db: Database,
    auth: AuthConfig,
    user: User,
    current_password: str,
    new_password: str,
    *,
    throttle: LoginThrottle | None = None,
    address: str | None = None,
) -> int:
    """Check ``current_password`` (counted like a login attempt: a stolen access token must
    not become a way to guess the password), store the new one and end every session of the
    user (access and refresh tokens; personal tokens stay). Return how many tokens ended.

    ValueError names the bad field; TooManyAttempts past the failed-login limits.
    """
    check_password_length(auth, new_password, "new_password")
    row = await _password_checked(
        db, auth, user.email, current_password, throttle, address, "too many failed password checks"
    )
    ended = None
    if row is not None and row["id"] == user.id:
        ended = await _change_checked_password(
            db, user.id, row["password_hash"], current_password, new_password
        )
    if ended is None:
        log.info("password_change_refused", user_id=user.id, client_ip=address)
        raise ValueError("current_password: is not the account's password")
    log.info("password_changed", user_id=user.id, sessions_ended=ended)
    return ended


async def _change_checked_password(
    db: Database, user_id: int, checked_hash: str, current_password: str, new_password: str
) -> int | None:
    """Store ``new_password`` and end the user's sessions, unless the password that matched
    ``checked_hash`` is no longer theirs (None): a change checked against the old password
    while an administrator reset it must not overwrite the reset. Return how many tokens
    ended."""
    new_hash = await passwords.hash_password_in_thread(new_password)
    async with db.transaction() as session:
        stored = await users.lock_for_password_change(session, user_id)
        if stored is None:
            return None
        # Changed since the check: a reset, or a login's re-hash of the same password.
        if not _same_hash(stored, checked_hash) and not await passwords.verify_password_in_thread(
            stored, current_password
        ):
            return None
        await users.update_user(session, user_id, password_hash=new_hash)
        return await users.revoke_user_tokens(session, user_id, SESSION_KINDS)


async def set_password(
    db: Database, auth: AuthConfig, email: str, password: str
) -> tuple[User, int]:
    """Operator recovery (``gateway user set-password``): store a new password for the user
    with this email, disabled or not, and end their sessions. Return (user, tokens ended).
    ValueError for a short password; NotFound for an unknown email."""
    check_password_length(auth, password)
    found = await users.user_by_email(db, email)
    if found is None:
        raise NotFound(f"no user with email {email.strip()!r}")
    user, ended = await _replace_password(db, found.id, password)
    if user is None:
        raise NotFound(f"no user with email {email.strip()!r}")
    log.info("password_set", user_id=user.id, sessions_ended=ended)
    return user, ended


async def _replace_password(db: Database, user_id: int, password: str) -> tuple[User | None, int]:
    """Store a new password and end the user's sessions (access and refresh tokens) in one
    transaction: (the user, None when gone, and how many tokens ended)."""
    password_hash = await passwords.hash_password_in_thread(password)
    async with db.transaction() as session:
        user = await users.update_user(session, user_id, password_hash=password_hash)
        if user is None:
            return None, 0
        ended = await users.revoke_user_tokens(session, user_id, SESSION_KINDS)
    return user, ended


async def update_user(
    db: Database,
    auth: AuthConfig,
    acting: User,
    user_id: int,
    *,
    name: str | None = None,
    is_admin: bool | None = None,
    is_active: bool | None = None,
    password: str | None = None,
) -> User:
    """An administrator changes a user (None: unchanged).

    Disabling ends every token of the user, personal ones included, and refuses their logins;
    a new password ends their sessions (access and refresh tokens). Administrators cannot
    disable or demote themselves (Conflict), so an installation keeps at least the one doing it,
    nor set their own password here (that needs the current one: change_own_password).
    The change is decided on the acting administrator as they are when it is written: one
    demoted or disabled meanwhile is refused (Forbidden; InvalidToken when disabled), so that
    two administrators demoting each other at once cannot leave none, and one being demoted
    cannot promote themselves back. ValueError names a bad field; NotFound when there is no
    such user.
    """
    if user_id == acting.id and (is_admin is False or is_active is False):
        raise Conflict(
            "administrators cannot disable or demote themselves; ask another administrator"
        )
    if user_id == acting.id and password is not None:
        # A stolen access token must not be enough to take the account over.
        raise Conflict("change your own password with PUT /users/me/password")
    if password is not None:
        check_password_length(auth, password)
    password_hash = None if password is None else await passwords.hash_password_in_thread(password)
    async with db.transaction() as session:
        await still_admin(session, acting, user_id)
        user = await users.update_user(
            session,
            user_id,
            name=name,
            is_admin=is_admin,
            is_active=is_active,
            password_hash=password_hash,
        )
        if user is None:
            raise NotFound(f"user {user_id} not found")
        ended = 0
        if not user.is_active:
            ended = await users.revoke_user_tokens(session, user_id, TOKEN_KINDS)
        elif password_hash is not None:
            ended = await users.revoke_user_tokens(session, user_id, SESSION_KINDS)
    changed = [
        field
        for field, value in (
            ("name", name),
            ("is_admin", is_admin),
            ("is_active", is_active),
            ("password", password),
        )
        if value is not None
    ]
    log.info(
        "user_updated", user_id=user_id, by_user_id=acting.id, fields=changed, tokens_ended=ended
    )
    return user


async def still_admin(session: Session, acting: User, user_id: int | None = None) -> None:
    """In the transaction of an administrator's change, before it writes: lock the acting
    administrator's row, and the changed user's (``user_id``) when the change writes one
    (users.lock_for_admin_change); InvalidToken when the acting one was disabled since their
    request was authenticated, Forbidden when they were demoted."""
    current = await users.lock_for_admin_change(
        session, acting.id, acting.id if user_id is None else user_id
    )
    if current is None or not current.is_active:
        raise InvalidToken("the bearer token is invalid, expired or revoked")
    if not current.is_admin:
        raise Forbidden("this action requires an administrator")


async def _password_checked(
    db: Database,
    auth: AuthConfig,
    email: str,
    password: str,
    throttle: LoginThrottle | None,
    address: str | None,
    throttled: str,
) -> Record | None:
    """The active user's row when ``password`` is theirs, else None (unknown email and wrong
    password cost the same). With a ``throttle``: TooManyAttempts (message ``throttled``) past
    the failed-login limits, before any check; a wrong password counts as a failure."""
    if throttle is not None:
        wait = throttle.begin(address, email, auth)
        if wait:
            log.info("login_throttled", client_ip=address, retry_after=wait)
            raise TooManyAttempts(f"{throttled}; retry in {wait} seconds", retry_after=wait)
    try:
        row = await users.user_for_login(db, email)
        stored = row["password_hash"] if row else None
        verified = await passwords.verify_password_in_thread(stored, password)
    except BaseException:
        if throttle is not None:  # not a failed guess: the check never finished
            throttle.cancelled(address, email)
        raise
    if not verified or row is None:
        return None
    if throttle is not None:
        throttle.succeeded(address, email)
    return row


def plausible_email(email: str) -> bool:
    """One '@' between a non-empty local part and a non-empty domain, at most 254 characters,
    no whitespace, control or invisible characters. (Deliverability is not checked: the
    gateway sends no mail; the address is a login name that people read.)"""
    local, at, domain = email.partition("@")
    return (
        bool(at)
        and len(email) <= 254
        and bool(local)
        and bool(domain)
        and "@" not in domain
        and not any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in email)
    )


def check_new_user(auth: AuthConfig, email: str, password: str) -> str:
    """The email as stored, when ``email`` and ``password`` would make a user; ValueError naming
    the bad field (before anything touches the database: ``gateway user create``)."""
    email = email.strip()
    if not plausible_email(email):
        raise ValueError("email: must be a valid email address")
    check_password_length(auth, password)
    return email


def check_password_length(auth: AuthConfig, password: str, field: str = "password") -> None:
    """ValueError naming ``field`` when ``password`` is shorter than the configured minimum, or
    longer than the API takes (a password set by `gateway user` could not log in)."""
    if len(password) < auth.password_min_length:
        raise ValueError(f"{field}: must be at least {auth.password_min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"{field}: must be at most {MAX_PASSWORD_LENGTH} characters")


async def logout(
    db: Database, user: User, bearer_token: str, refresh_token: str | None = None
) -> None:
    """End a session: revoke the access token used for this request and, when given, the
    refresh token issued with it (ValueError unless it is a live refresh token of this user).
    A personal token is not a session: Conflict (revoke it through its own endpoint). An access
    token that a password change or a disable ended while this request waited, or a personal
    token revoked (or expired) since it authenticated this request: InvalidToken, as if the
    request had come after that."""
    digest = tokens.token_hash(bearer_token)
    async with db.transaction() as session:
        # The user row first, as a password change or a disable locks it (then all the tokens):
        # locking the access token first and the refresh token next could deadlock with them.
        await users.lock_token_owner(session, digest, "access")
        if await users.revoke_token(session, digest, "access") is None:
            if not await users.is_live_personal_token(session, digest):
                raise InvalidToken("the bearer token is invalid, expired or revoked")
            raise Conflict(
                "log out ends an access token from POST /users/login; revoke a personal token "
                "with DELETE /users/me/tokens/{token_id}"
            )
        if refresh_token is not None:
            owner = None
            if tokens.looks_like_token(refresh_token):
                owner = await users.revoke_token(
                    session, tokens.token_hash(refresh_token), "refresh"
                )
            if owner != user.id:  # rolls the access token's revocation back too
                raise ValueError("refresh_token: is not a live refresh token of yours")
    log.info("logged_out", user_id=user.id, refresh_token_ended=refresh_token is not None)


async def refresh(db: Database, auth: AuthConfig, refresh_token: str) -> TokenPair:
    """Rotate a refresh token: the old one is revoked, a new pair is issued.

    A refresh token that a refresh spent before it expired and that is presented again was
    copied: whoever holds the pair issued from it may be the thief.
    Every session of its user (access and refresh tokens; personal tokens stay) ends then,
    the one the legitimate client holds included, which it notices at its next call."""
    if not tokens.looks_like_token(refresh_token):
        raise InvalidToken("the refresh token is malformed")
    digest = tokens.token_hash(refresh_token)
    async with db.transaction() as session:
        # The user row first, as a disable locks it (then the tokens): not the other way round.
        await users.lock_token_owner(session, digest, "refresh")
        user_id = await users.revoke_token(session, digest, "refresh")
        if user_id is not None:
            try:
                return await _issue_pair(session, auth, user_id)
            except UserDisabled:  # disabled meanwhile: its revocation ends this token too
                raise InvalidToken(
                    "the refresh token is invalid, expired or already used"
                ) from None
        reused_by = await users.spent_refresh_token_owner(session, digest)
    if reused_by is not None:
        ended = await _end_sessions(db, reused_by, digest)
        log.warning("refresh_token_reused", user_id=reused_by, sessions_ended=ended)
    raise InvalidToken("the refresh token is invalid, expired or already used")


async def _end_sessions(db: Database, user_id: int, reused: bytes) -> int:
    """Revoke every access and refresh token of the user, those of a refresh or a login still
    in flight included; how many ended. The user row is locked first, in a transaction of its
    own (a refresh's share lock on it is not upgraded: two of them would deadlock): the lock
    waits for every transaction issuing the user tokens (they share-lock the row) and holds off
    new ones, so the revocation sees all of them. Without it, a thief refreshing its copy
    again and again would keep the pair that a refresh in flight at that moment issues.

    The reused token is retired too (it expires now): it has raised its alarm, and whoever
    holds a copy must not be able to end the user's later sessions with it again and again."""
    async with db.transaction() as session:
        await users.lock_for_session_end(session, user_id)
        await users.retire_refresh_token(session, reused)
        return await users.revoke_user_tokens(session, user_id, SESSION_KINDS)


async def _issue_pair(db: Session, auth: AuthConfig, user_id: int) -> TokenPair:
    access, refresh_token = tokens.new_token("access"), tokens.new_token("refresh")
    await users.insert_token(
        db, user_id, "access", tokens.token_hash(access), "", auth.access_token_ttl
    )
    await users.insert_token(
        db, user_id, "refresh", tokens.token_hash(refresh_token), "", auth.refresh_token_ttl
    )
    return TokenPair(access, refresh_token, auth.access_token_ttl)


async def authenticate_bearer(db: Database, token: str) -> User:
    """The user behind a bearer token (access or personal); InvalidToken otherwise."""
    if not tokens.looks_like_token(token):
        raise InvalidToken("the bearer token is malformed")
    found = await users.authenticate_token(db, tokens.token_hash(token), BEARER_KINDS)
    if found is None:
        raise InvalidToken("the bearer token is invalid, expired or revoked")
    return found[0]
