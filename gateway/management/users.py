"""Users, login and tokens."""

from __future__ import annotations

from aiohttp import web

from gateway import accounts, appkeys
from gateway.http import ValidationFailed, json_response
from gateway.ingest.client_ip import ClientAddressResolver
from gateway.management.bodies import Fields, page_headers, pagination, read_json_object
from gateway.management.framework import current_user, endpoint, require_admin
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
    password = fields.string("password", max_length=1024, strip=False)
    fields.check()
    config = live_config(request.app)  # auth.* and trusted_proxies follow SIGHUP reloads
    address = ClientAddressResolver(config.server.trusted_proxies).resolve_headers(
        request.remote, request.headers
    )[0]
    pair = await accounts.login(
        request.app[appkeys.DATABASE],
        config.auth,
        email,
        password,
        throttle=request.app[appkeys.SERVICES][LOGIN_THROTTLE],
        address=address,
    )
    return json_response(pair.to_json())


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
    require_admin(request)
    body = await read_json_object(request)
    fields = Fields(body, ("email", "password", "name", "is_admin"))
    email = fields.string("email", max_length=254)
    password = fields.string("password", max_length=1024, strip=False)
    name = fields.string("name", required=False, default="", min_length=0, max_length=120)
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
        )
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ValidationFailed({field: [message]}) from exc
    return json_response(user.to_json(), status=201)


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
