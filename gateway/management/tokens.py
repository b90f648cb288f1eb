"""Personal access tokens: long-lived bearer tokens for automation, managed by their owner.

The token (``hgp_...``) is shown once, in the create response; only its SHA-256 hash is stored,
and listings show metadata only. A revoked or expired token is refused with 401 like any other.
A user holds at most ``[auth] max_personal_tokens`` live ones (409 past it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError, json_response
from gateway.logs import get_logger
from gateway.management.access import path_id
from gateway.management.bodies import Fields, page_headers, pagination, read_json_object
from gateway.management.framework import bearer_token, current_user, endpoint
from gateway.reload import live_config
from gateway.security import tokens
from gateway.storage import users
from gateway.storage.database import Database

log = get_logger(__name__)
routes = web.RouteTableDef()

MAX_EXPIRY_DAYS = 3650


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _token_json(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    expires_at, revoked_at = row["expires_at"], row.get("revoked_at")
    return {
        "id": row["id"],
        "name": row["name"],
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(expires_at),
        "revoked_at": _iso(revoked_at),
        "last_used_at": _iso(row.get("last_used_at")),
        "active": revoked_at is None and (expires_at is None or expires_at > now),
    }


@routes.post("/users/me/tokens")
@endpoint()
async def create_token(request: web.Request) -> web.Response:
    """Issue a personal token ``{name, expires_in_days?}``; the response is the only copy."""
    user = current_user(request)
    body = await read_json_object(request)
    fields = Fields(body, ("name", "expires_in_days"))
    name = fields.name("name", max_length=100)
    days = fields.integer("expires_in_days", required=False, minimum=1, maximum=MAX_EXPIRY_DAYS)
    db = request.app[appkeys.DATABASE]
    if "expires_in_days" not in fields.errors:
        await _check_outlives_no_creator(request, db, fields, days)
    fields.check()
    token = tokens.new_token("personal")
    limit = live_config(request.app).auth.max_personal_tokens  # follows SIGHUP reloads
    ttl = None if days is None else days * 86400
    bearer = tokens.token_hash(bearer_token(request))
    row = await users.insert_personal_token(
        db, user.id, bearer, tokens.token_hash(token), name, ttl, limit
    )
    if row is None:
        log.info("personal_token_limit_reached", limit=limit)
        raise ApiError(
            409,
            f"personal token limit reached: a user may hold {limit} live (neither revoked nor "
            "expired) personal tokens ([auth] max_personal_tokens); revoke one with "
            "DELETE /users/me/tokens/{token_id} (GET /users/me/tokens lists them)",
        )
    log.info("personal_token_created", token_id=row["id"], expires_in_days=days)
    shown = _token_json(dict(row), datetime.now(UTC))
    shown["token"] = token
    return json_response(shown, status=201)


async def _check_outlives_no_creator(
    request: web.Request, db: Database, fields: Fields, days: int | None
) -> None:
    """A personal token may create tokens that expire no later than itself: one that leaked
    with a week to live must not become one that never expires. (A login session, or a
    personal token without an expiry, creates any.)"""
    bearer = bearer_token(request)
    personal, ends = await users.personal_token_expiry(db, tokens.token_hash(bearer))
    if not personal or ends is None:
        return
    if days is None or datetime.now(UTC) + timedelta(days=days) > ends:
        fields.add(
            "expires_in_days",
            f"must end by {ends.isoformat()}, when the personal token making this request "
            "expires: a personal token cannot create one that outlives it (a login session "
            "can)",
        )


@routes.get("/users/me/tokens")
@endpoint()
async def list_tokens(request: web.Request) -> web.Response:
    """The caller's personal tokens, revoked and expired ones included (never the secret)."""
    user = current_user(request)
    page, per_page = pagination(request)
    # A user holds a handful of tokens: fetch them all and page here.
    rows = await users.list_personal_tokens(request.app[appkeys.DATABASE], user.id)
    now = datetime.now(UTC)
    shown = rows[(page - 1) * per_page : page * per_page]
    return json_response(
        [_token_json(r, now) for r in shown],
        headers=page_headers(request, page, per_page, len(rows)),
    )


@routes.delete("/users/me/tokens/{token_id}")
@endpoint()
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke one of the caller's personal tokens (404 for anyone else's)."""
    user = current_user(request)
    token_id = path_id(request, "token_id", "token")
    if not await users.revoke_personal_token(request.app[appkeys.DATABASE], token_id, user.id):
        raise ApiError(404, f"token {token_id} not found")
    log.info("personal_token_revoked", token_id=token_id)
    return web.Response(status=204)
