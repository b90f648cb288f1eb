"""Users, login and tokens."""

from __future__ import annotations

from aiohttp import web

from gateway import accounts, appkeys, metrics
from gateway.config import MAX_PASSWORD_LENGTH
from gateway.exceptions import InvalidCredentials, Overloaded, TooManyAttempts
from gateway.http import ApiError, ValidationFailed, json_response
from gateway.management.access import path_id
from gateway.management.bodies import (
    Fields,
    forwarded_client,
    page_headers,
    pagination,
    read_json_object,
    read_optional_json_object,
)
from gateway.management.framework import bearer_token, current_user, endpoint, require_admin
from gateway.reload import live_config
from gateway.security.login_throttle import LOGIN_THROTTLE
from gateway.storage import users

routes = web.RouteTableDef()


@routes.post("/users/login")
@endpoint(auth=False)
async def login(request: web.Request) -> web.Response:
    """Exchange email and password for an access and a refresh token."""
    body = await read_json_object(request)
    fields = Fields(body, ("email", "password"))
    email = fields.string("email", max_length=254)
    password = fields.string("password", max_length=MAX_PASSWORD_LENGTH, strip=False)
    fields.check()
    config = live_config(request.app)  # auth.* and trusted_proxies follow SIGHUP reloads
    try:
        pair = await accounts.login(
            request.app[appkeys.DATABASE],
            config.auth,
            email,
            password,
            throttle=request.app[appkeys.SERVICES][LOGIN_THROTTLE],
            address=forwarded_client(request)[0],
        )
    except (InvalidCredentials, TooManyAttempts, Overloaded) as exc:
        metrics.record_login(_LOGIN_OUTCOMES[type(exc)])
        raise
    metrics.record_login("succeeded")
    return json_response(pair.to_json())


_LOGIN_OUTCOMES: dict[type[Exception], str] = {
    InvalidCredentials: "failed",
    TooManyAttempts: "throttled",
    Overloaded: "busy",
}


@routes.post("/users/refresh-token")
@endpoint(auth=False)
async def refresh_token(request: web.Request) -> web.Response:
    """Exchange a refresh token for a new token pair (the old refresh token stops working)."""
    body = await read_json_object(request)
    fields = Fields(body, ("refresh_token",))
    token = fields.string("refresh_token", max_length=256)
    fields.check()
    config = live_config(request.app)
    pair = await accounts.refresh(request.app[appkeys.DATABASE], config.auth, token)
    return json_response(pair.to_json())


@routes.get("/users/me")
@endpoint()
async def me(request: web.Request) -> web.Response:
    """The authenticated user."""
    return json_response(current_user(request).to_json())


@routes.post("/users")
@endpoint()
async def create_user(request: web.Request) -> web.Response:
    """Create a user (administrators only)."""
    acting = require_admin(request)
    body = await read_json_object(request)
    fields = Fields(body, ("email", "password", "name", "is_admin"))
    email = fields.string("email", max_length=254)
    password = fields.string("password", max_length=MAX_PASSWORD_LENGTH, strip=False)
    name = fields.name("name", required=False, default="", min_length=0, max_length=120)
    is_admin = fields.boolean("is_admin", default=False)
    fields.check()
    config = live_config(request.app)
    try:
        user = await accounts.create_user(
            request.app[appkeys.DATABASE],
            config.auth,
            email,
            password,
            name=name,
            is_admin=is_admin,
            acting=acting,
        )
    except ValueError as exc:
        raise _field_error(exc) from exc
    return json_response(user.to_json(), status=201)


@routes.post("/users/logout")
@endpoint()
async def logout(request: web.Request) -> web.Response:
    """End the session of the access token used, and of ``refresh_token`` when given."""
    user = current_user(request)
    body = await read_optional_json_object(request)
    fields = Fields(body, ("refresh_token",))
    refresh = fields.string("refresh_token", required=False, max_length=256)
    fields.check()
    bearer = bearer_token(request)
    try:
        await accounts.logout(request.app[appkeys.DATABASE], user, bearer, refresh)
    except ValueError as exc:
        raise _field_error(exc) from exc
    return web.Response(status=204)


@routes.put("/users/me/password")
@endpoint()
async def change_own_password(request: web.Request) -> web.Response:
    """Change your password; every session of yours (access and refresh tokens) ends."""
    user = current_user(request)
    body = await read_json_object(request)
    fields = Fields(body, ("current_password", "new_password"))
    current = fields.string("current_password", max_length=MAX_PASSWORD_LENGTH, strip=False)
    new = fields.string("new_password", max_length=MAX_PASSWORD_LENGTH, strip=False)
    fields.check()
    config = live_config(request.app)
    try:
        await accounts.change_own_password(
            request.app[appkeys.DATABASE],
            config.auth,
            user,
            current,
            new,
            throttle=request.app[appkeys.SERVICES][LOGIN_THROTTLE],
            address=forwarded_client(request)[0],
        )
    except ValueError as exc:
        raise _field_error(exc) from exc
    return web.Response(status=204)


@routes.get(r"/users/{user_id:\d+}")
@endpoint()
async def get_user(request: web.Request) -> web.Response:
    """One user (administrators only)."""
    require_admin(request)
    user_id = path_id(request, "user_id", "user")
    user = await users.user_by_id(request.app[appkeys.DATABASE], user_id)
    if user is None:
        raise ApiError(404, f"user {user_id} not found")
    return json_response(user.to_json())


@routes.put(r"/users/{user_id:\d+}")
@endpoint()
async def update_user(request: web.Request) -> web.Response:
    """Rename, promote or demote, disable or re-enable a user, or set their password
    (administrators only)."""
    acting = require_admin(request)
    user_id = path_id(request, "user_id", "user")
    body = await read_json_object(request)
    fields = Fields(body, ("name", "is_admin", "is_active", "password"))
    name = fields.name("name", required=False, min_length=0, max_length=120)
    is_admin = fields.boolean("is_admin")
    is_active = fields.boolean("is_active")
    password = fields.string(
        "password", required=False, max_length=MAX_PASSWORD_LENGTH, strip=False
    )
    fields.check()
    config = live_config(request.app)
    try:
        user = await accounts.update_user(
            request.app[appkeys.DATABASE],
            config.auth,
            acting,
            user_id,
            name=name,
            is_admin=is_admin,
            is_active=is_active,
            password=password,
        )
    except ValueError as exc:
        raise _field_error(exc) from exc
    return json_response(user.to_json())


def _field_error(exc: ValueError) -> ValidationFailed:
    """A 422 from an accounts ValueError ``"field: message"``."""
    field, _, message = str(exc).partition(": ")
    return ValidationFailed({field: [message]})


@routes.get("/users")
@endpoint()
async def list_users(request: web.Request) -> web.Response:
    """All users, paginated (administrators only)."""
    require_admin(request)
    page, per_page = pagination(request)
    found, total = await users.list_users(
        request.app[appkeys.DATABASE], per_page, (page - 1) * per_page
    )
    return json_response(
        [u.to_json() for u in found], headers=page_headers(request, page, per_page, total)
    )
