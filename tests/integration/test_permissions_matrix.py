"""Every management endpoint x every kind of caller, asserting the exact status.

Callers (see access_world.py): admin, a member with exactly the right role, a member whose role
lacks the permission, a user of another environment only, and no token. Expected:

- permission rows: 2xx / 2xx / 403 naming the permission and environment / 404 / 401
  (a member who cannot hold *any* valid role without the permission — ``environment:read`` —
  is not linked at all, so sees 404);
- admin rows: 2xx for the administrator, 403 for every member, 401 without a token;
- self rows (the caller's own account): 2xx for everyone with a token, 401 without;
- public rows (login, refresh, the OpenAPI document): 2xx for everyone.

The table is checked against the application's registered routes in both directions: a
management route without a row fails ``test_every_management_route_has_a_row`` (so a new
endpoint cannot ship without deciding its permission), and a row whose route is not registered
fails ``test_every_table_row_has_a_route``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.app import INGEST_ROUTES, MANAGEMENT_ROUTES
from gateway.config import Config
from gateway.storage.database import Database
from tests.integration.access_helpers import call
from tests.integration.access_world import ACTORS, OUTGOING_HOOK_BODY, PASSWORD, Ref, World

ADMIN, SELF, PUBLIC = "admin", "self", "public"
# The ingest table: no bearer auth by design (DESIGN §1), so not part of this matrix.
INGEST = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/hooks/incoming/{}"),
}


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # {name} placeholders are World resources
    access: str | tuple[str, ...]  # ADMIN, SELF, PUBLIC or the permissions required
    ok: int
    body: Any = None
    missing: str | None = None  # the permission the lacking member lacks (default: the last)
    setup: tuple[str, ...] = field(default=())  # resources that must exist beforehand

    @property
    def key(self) -> tuple[str, str]:
        return self.method, normalise(self.path)

    @property
    def required(self) -> tuple[str, ...]:
        return self.access if isinstance(self.access, tuple) else ()

    @property
    def lacked(self) -> str | None:
        return self.missing or (self.required[-1] if self.required else None)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def normalise(path: str) -> str:
    """A route path with every parameter written ``{}`` (names differ between modules)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def perm(method: str, path: str, *required: str, ok: int = 200, **kw: Any) -> Row:
    return Row(method, path, required, ok, **kw)


PIPELINE_BODY = {"name": "p2", "resource_type": "application", "resource_id": 1, "action_type": "x"}
SEED_BODY = Ref("seed_body")

TABLE: tuple[Row, ...] = (
    # Users and tokens (gateway/management/users.py, tokens.py)
    Row("POST", "/users/login", PUBLIC, 200, {"email": Ref("login_user"), "password": PASSWORD}),
    Row("POST", "/users/refresh-token", PUBLIC, 200, {"refresh_token": Ref("refresh_token")}),
    # The API reference (gateway/openapi): public, like the document of any public API.
    Row("GET", "/openapi.json", PUBLIC, 200),
    Row("GET", "/users/me", SELF, 200),
    Row("POST", "/users", ADMIN, 201, {"email": "new@example.com", "password": "long enough"}),
    Row("GET", "/users", ADMIN, 200),
    Row("GET", "/users/{user}", ADMIN, 200),
    Row("PUT", "/users/{user}", ADMIN, 200, {"name": "renamed"}),
    # The actors hold personal tokens and no usable password: every caller with a token reaches
    # these views, which answer 409 (a personal token is not a session to log out of) and 422
    # (not the account's password); tests/integration/test_user_lifecycle.py has their 204s.
    Row("POST", "/users/logout", SELF, 409),
    Row(
        "PUT",
        "/users/me/password",
        SELF,
        422,
        {"current_password": "not it", "new_password": "long enough"},
    ),
    Row("POST", "/users/me/tokens", SELF, 201, {"name": "ci"}),
    Row("GET", "/users/me/tokens", SELF, 200),
    Row("DELETE", "/users/me/tokens/{token}", SELF, 204),
    # Access administration (access.py, environment_teams.py)
    Row("GET", "/permissions", SELF, 200),
    Row("POST", "/roles", ADMIN, 201, {"name": "new", "permissions": ["environment:read"]}),
    Row("GET", "/roles", ADMIN, 200),
    Row("GET", "/roles/{role}", ADMIN, 200),
    Row("PUT", "/roles/{role}", ADMIN, 200, {"name": "x", "permissions": ["environment:read"]}),
    Row("DELETE", "/roles/{role}", ADMIN, 204),
    Row("POST", "/teams", ADMIN, 201, {"name": "new"}),
    Row("GET", "/teams", ADMIN, 200),
    Row("GET", "/teams/{team}", ADMIN, 200),
    Row("DELETE", "/teams/{team}", ADMIN, 204),
    Row("POST", "/teams/{team}/members", ADMIN, 201, {"user_id": Ref("user")}),
    Row("GET", "/teams/{team}/members", ADMIN, 200),
    Row("DELETE", "/teams/{team}/members/{user}", ADMIN, 204, setup=("membership",)),
    Row("POST", "/environments/{env}/teams/{team}/link", ADMIN, 201, {"role_id": Ref("role")}),
    Row("DELETE", "/environments/{env}/teams/{team}/link", ADMIN, 204, setup=("link",)),
    Row("GET", "/environments/{env}/teams", ADMIN, 200),
    # Environments and pipelines (environments.py, pipelines.py)
    Row("POST", "/environments", ADMIN, 201, {"name": "env-new"}),
    Row("GET", "/environments", SELF, 200),  # filtered to the visible ones
    perm("GET", "/environments/{env}", "environment:read"),
    perm("POST", "/environments/{env}/pipelines", "pipeline:create", ok=201, body=PIPELINE_BODY),
    perm("GET", "/environments/{env}/pipelines", "pipeline:read"),
    perm("GET", "/pipelines/{pipeline}", "pipeline:read"),
    perm("PUT", "/pipelines/{pipeline}", "pipeline:update", body={"name": "renamed"}),
    perm("DELETE", "/pipelines/{pipeline}", "pipeline:delete", ok=204),
    # Incoming hooks (incoming_hooks.py, pipeline_hooks.py)
    perm(
        "POST",
        "/pipelines/{pipeline}/hooks/incoming",
        "application:read",
        "hook:create",
        ok=201,
        body=SEED_BODY,
    ),
    perm("GET", "/pipelines/{pipeline}/hooks", "hook:read"),
    perm("GET", "/hooks/incoming/{hook}", "hook:read"),
    perm("PUT", "/hooks/incoming/{hook}", "hook:update", body={"name": "renamed"}),
    perm("DELETE", "/hooks/incoming/{hook}", "hook:delete", ok=204),
    perm("POST", "/hooks/incoming/{hook}/secret/rotate", "hook:update"),
    # Request history and replay (history.py)
    perm("GET", "/hooks/incoming/{hook}/requests", "hook:read"),
    perm("GET", "/hook-requests/{request}", "hook:read"),
    perm("POST", "/hook-requests/{request}/replay", "hook:update", ok=202),
    # Runs (runs.py) and executors (executor_api.py)
    perm("GET", "/pipelines/{pipeline}/runs", "pipeline:read"),
    perm("GET", "/runs/{run}", "pipeline:read"),
    perm(
        "POST",
        "/runs/claim",
        "run:execute",
        body={"pipeline_id": Ref("pipeline"), "limit": 1, "lease_seconds": 60},
        setup=("run",),
    ),
    perm(
        "POST",
        "/runs/{claimed_run}/status",
        "run:execute",
        body={"status": "completed", "lease_token": Ref("lease_token")},
    ),
    perm(
        "POST",
        "/runs/{claimed_run}/heartbeat",
        "run:execute",
        body={"lease_token": Ref("lease_token"), "lease_seconds": 60},
    ),
    perm("GET", "/pipelines/{pipeline}/concurrency", "pipeline:read"),
    perm(
        "PUT",
        "/pipelines/{pipeline}/concurrency",
        "pipeline:update",
        body={"policy": "skip-if-running", "key": "source_ref"},
    ),
    # Outgoing hooks (outgoing_hooks.py)
    perm(
        "POST",
        "/pipelines/{pipeline}/hooks/outgoing",
        "hook:create",
        ok=201,
        body=OUTGOING_HOOK_BODY,
    ),
    perm("GET", "/pipelines/{pipeline}/hooks/outgoing", "hook:read"),
    perm("GET", "/hooks/outgoing/{outgoing_hook}", "hook:read"),
    perm("PUT", "/hooks/outgoing/{outgoing_hook}", "hook:update", body={"name": "renamed"}),
    perm("DELETE", "/hooks/outgoing/{outgoing_hook}", "hook:delete", ok=204),
    # The world's outgoing hook has no secret: allowed callers get past the permission check
    # to the 409 (rotation itself: test_outgoing_secret_rotation.py).
    perm("POST", "/hooks/outgoing/{outgoing_hook}/secret/rotate", "hook:update", ok=409),
    perm("GET", "/hooks/outgoing/{outgoing_hook}/requests", "hook:read"),
    perm("GET", "/hooks/outgoing/{outgoing_hook}/deliveries", "hook:read"),
)


def _table_routes() -> set[tuple[str, str]]:
    """(method, normalised path) of every route in the app's route tables (without an app)."""
    found = set()
    for table in (*MANAGEMENT_ROUTES, *INGEST_ROUTES):
        for route in table:
            found.add((route.method, normalise(route.path)))  # type: ignore[attr-defined]
    return found


REGISTERED = _table_routes()
PRESENT = [row for row in TABLE if row.key in REGISTERED]


def expected_status(row: Row, actor: str, lacking_linked: bool) -> int:
    if row.access == PUBLIC:
        return row.ok
    if actor == "anonymous":
        return 401
    if row.access == SELF or actor == "admin":
        return row.ok
    if row.access == ADMIN:
        return 403
    if actor == "member_ok":
        return row.ok
    if actor == "member_lacking" and lacking_linked:
        return 403
    return 404


async def _registered(client: Any) -> set[tuple[str, str]]:
    return {
        (route.method, normalise(route.resource.canonical))
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


async def test_every_management_route_has_a_row(client: Any) -> None:
    rows = {row.key for row in TABLE}
    unlisted = sorted((await _registered(client)) - rows - INGEST)
    assert not unlisted, (
        "management routes without a permission row in tests/integration/"
        f"test_permissions_matrix.py TABLE: {unlisted}"
    )


async def test_every_table_row_has_a_route(client: Any) -> None:
    registered = await _registered(client)
    missing = [str(row) for row in TABLE if row.key not in registered]
    assert not missing, f"permission rows whose route is not registered in the app: {missing}"


def test_table_has_no_duplicate_rows() -> None:
    keys = [row.key for row in TABLE]
    assert len(keys) == len(set(keys))


async def _check(client: Any, world: World, row: Row, actor: str) -> str | None:
    """None when ``actor`` gets exactly the expected answer for ``row``, else what went wrong."""
    await world.build(row.required, row.lacked)
    for name in row.setup:
        await world.resolve(name, actor)
    names = re.findall(r"\{([a-z_]+)\}", row.path)
    values = {name: await world.resolve(name, actor) for name in names}
    path = row.path.format(**values)
    body = await world.resolve_body(row.body, actor)
    headers = world.headers[actor]
    if isinstance(body, str):  # a raw JSON text, sent byte for byte
        headers = {**headers, "Content-Type": "application/json"}
        response = await client.request(row.method, path, data=body, headers=headers)
        status, text = response.status, await response.text()
        payload = orjson.loads(text) if text else None
    else:
        status, payload = await call(client, row.method, path, headers, body)

    want = expected_status(row, actor, world.lacking_linked)
    if status != want:
        return f"{actor}: expected {want}, got {status}: {str(payload)[:300]}"
    message = (payload or {}).get("message", "") if isinstance(payload, dict) else ""
    if status == 401 and not message.startswith("missing Authorization header"):
        return f"{actor}: 401 with message {message!r}"
    if status == 403 and row.access == ADMIN and message != "this action requires an administrator":
        return f"{actor}: 403 with message {message!r}"
    if status == 403 and row.access != ADMIN:
        named = f"'{row.lacked}'" in message and f"in environment {world.env}" in message
        if not named:
            return f"{actor}: 403 does not name {row.lacked!r} and environment: {message!r}"
    if status == 404 and not message.endswith("not found"):
        return f"{actor}: 404 with message {message!r}"
    return None


@pytest.mark.parametrize("row", PRESENT, ids=str)
async def test_matrix(client: Any, db: Database, config: Config, row: Row) -> None:
    """One row, every actor (each in a world of its own); all mismatches reported together."""
    problems = []
    for actor in ACTORS:
        try:
            problem = await _check(client, World(client, db, config, actor), row, actor)
        except AssertionError as exc:  # a setup step failed; report it with the others
            problem = f"{actor}: {exc}"
        if problem:
            problems.append(problem)
    assert not problems, f"{row}:\n" + "\n".join(problems)
