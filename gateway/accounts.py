"""Account use cases: create users, log in, refresh and check bearer tokens."""

from __future__ import annotations

from gateway.config import AuthConfig
from gateway.exceptions import InvalidCredentials, InvalidToken, TooManyAttempts
from gateway.logs import get_logger
from gateway.models import TokenPair, User
from gateway.security import passwords, tokens
from gateway.security.login_throttle import LoginThrottle
from gateway.storage import users
from gateway.storage.database import Database, Session

log = get_logger(__name__)

BEARER_KINDS = ("access", "personal")


async def create_user(
    db: Database,
    auth: AuthConfig,
    email: str,
    password: str,
    *,
    name: str = "",
    is_admin: bool = False,
) -> User:
    """Validate and create a user (raises ValueError naming the bad field, or EmailTaken)."""
    email = email.strip()
    if "@" not in email or len(email) > 254 or email.startswith("@") or email.endswith("@"):
        raise ValueError("email: must be a valid email address")
    if len(password) < auth.password_min_length:
        raise ValueError(f"password: must be at least {auth.password_min_length} characters")
    password_hash = await passwords.hash_password_in_thread(password)
    user = await users.insert_user(db, email, name, password_hash, is_admin)
    log.info("user_created", user_id=user.id, is_admin=is_admin)
    return user


async def ensure_first_admin(db: Database, auth: AuthConfig, email: str, password: str) -> bool:
    """Create an admin from the environment when the database has no users yet."""
    if await users.user_count(db) > 0:
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
    if throttle is not None:
        wait = throttle.begin(address, email, auth)
        if wait:
            log.info("login_throttled", client_ip=address, retry_after=wait)
            raise TooManyAttempts(
                f"too many failed logins; retry in {wait} seconds", retry_after=wait
            )
    try:
        row = await users.user_for_login(db, email)
        stored = row["password_hash"] if row else None
        verified = await passwords.verify_password_in_thread(stored, password)
    except BaseException:
        if throttle is not None:  # not a failed guess: the check never finished
            throttle.cancelled(address, email)
        raise
    if not verified or row is None:
        log.info("login_failed", client_ip=address)
        raise InvalidCredentials()
    if throttle is not None:
        throttle.succeeded(address, email)
    if passwords.needs_rehash(row["password_hash"]):
        new_hash = await passwords.hash_password_in_thread(password)
        await users.update_password_hash(db, row["id"], new_hash)
    log.info("login_succeeded", user_id=row["id"])
    return await _issue_pair(db, auth, row["id"])


async def refresh(db: Database, auth: AuthConfig, refresh_token: str) -> TokenPair:
    """Rotate a refresh token: the old one is revoked, a new pair is issued."""
    if not tokens.looks_like_token(refresh_token):
        raise InvalidToken("the refresh token is malformed")
    async with db.transaction() as session:
        user_id = await users.revoke_token(session, tokens.token_hash(refresh_token), "refresh")
        if user_id is None:
            raise InvalidToken("the refresh token is invalid, expired or already used")
        return await _issue_pair(session, auth, user_id)


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
