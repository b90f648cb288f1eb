"""The world the permission matrix runs in: five actors and, on demand, one of each resource.

Actors: ``admin``; ``member_ok`` (a team linked to environment A with exactly the row's
permissions, closed under implication); ``member_lacking`` (linked to A with every permission
that does not imply the one under test; not linked at all when no such role can exist);
``other_env`` (every permission, but in environment B only); ``anonymous`` (no token).

Resources are created through the public API as the administrator (rows and runs through the
real signed ingest endpoint), each at most once per world. Each actor of a row gets a world of
its own (names carry a tag), so a destructive call by one actor never disturbs the next.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from gateway import accounts
from gateway.config import Config
from gateway.permissions_catalog import PERMISSIONS, closure
from gateway.security import tokens
from gateway.storage import users
from gateway.storage.database import Database
from tests.conftest import FIXTURES
from tests.integration.access_helpers import Headers, create_environment, grant, make_user, ok
from tests.integration.management_helpers import JSON_HEADERS, SEED_CREATE_BODY

ACTORS = ("admin", "member_ok", "member_lacking", "other_env", "anonymous")
PASSWORD = "matrix password 123"
PULL_REQUEST = (FIXTURES / "github" / "pull_request.opened.json").read_bytes()


@dataclass(frozen=True)
class Ref:
    """A placeholder in a row's body, resolved to a resource of the world."""

    name: str


def lacking_permissions(missing: str) -> list[str]:
    """The largest valid role without ``missing``: every permission not implying it."""
    return [p for p in PERMISSIONS if missing not in closure([p])]


class World:
    """Actors and lazily created resources for one matrix case."""

    def __init__(self, client: Any, db: Database, config: Config, tag: str) -> None:
        self.client, self.db, self.config, self.tag = client, db, config, tag
        self.headers: dict[str, Headers] = {"anonymous": {}}
        self.user_ids: dict[str, int] = {}
        self._cache: dict[tuple[str, str], Any] = {}

    async def build(self, required: tuple[str, ...], missing: str | None) -> None:
        """Create both environments and the actors for a row needing ``required``."""
        self.user_ids["admin"], self.headers["admin"] = await make_user(
            self.db, f"admin-{self.tag}@example.com", is_admin=True
        )
        admin = self.headers["admin"]
        self.env = await create_environment(self.client, admin, f"env-a-{self.tag}")
        self.other_env = await create_environment(self.client, admin, f"env-b-{self.tag}")
        for actor in ("member_ok", "member_lacking", "other_env"):
            self.user_ids[actor], self.headers[actor] = await make_user(
                self.db, f"{actor.replace('_', '-')}-{self.tag}@example.com"
            )
        # Admin-only and self rows need no permission: the strongest member role shows that
        # no environment permission reaches an administrator's endpoint.
        ok_role = closure(required) if required else list(PERMISSIONS)
        lacking = lacking_permissions(missing) if missing else ["environment:read"]
        await grant(self.client, admin, self.env, self.user_ids["member_ok"], ok_role)
        if lacking:
            await grant(self.client, admin, self.env, self.user_ids["member_lacking"], lacking)
        await grant(
            self.client, admin, self.other_env, self.user_ids["other_env"], list(PERMISSIONS)
        )
        self.lacking_linked = bool(lacking)

    async def resolve(self, name: str, actor: str) -> Any:
        """The resource ``name`` (created on first use); ``token`` is the actor's own."""
        key = (name, actor if name == "token" else "")
        if key not in self._cache:
            self._cache[key] = await getattr(self, f"_make_{name}")(actor)
        return self._cache[key]

    async def resolve_body(self, body: Any, actor: str) -> Any:
        """``body`` with every Ref replaced by its resource."""
        if isinstance(body, Ref):
            return await self.resolve(body.name, actor)
        if isinstance(body, dict):
            return {k: await self.resolve_body(v, actor) for k, v in body.items()}
        if isinstance(body, list):
            return [await self.resolve_body(v, actor) for v in body]
        return body

    async def _admin(self, method: str, path: str, body: Any = None, status: int = 201) -> Any:
        return await ok(self.client, method, path, self.headers["admin"], body, status)

    # Resources, in dependency order ------------------------------------------------------------

    async def _make_env(self, _: str) -> int:
        return self.env

    async def _make_seed_body(self, _: str) -> str:
        return SEED_CREATE_BODY

    async def _make_pipeline(self, _: str) -> int:
        body = {
            "name": "Deploy API",
            "resource_type": "application",
            "resource_id": 42,
            "action_type": "deploy",
        }
        created = await self._admin("POST", f"/environments/{self.env}/pipelines", body)
        return int(created["id"])

    async def _make_hook_with_secret(self, _: str) -> tuple[str, str]:
        pipeline = await self.resolve("pipeline", "")
        response = await self.client.post(
            f"/pipelines/{pipeline}/hooks/incoming",
            data=SEED_CREATE_BODY,
            headers={**JSON_HEADERS, **self.headers["admin"]},
        )
        assert response.status == 201, f"setup: create hook -> {await response.text()}"
        created = await response.json()
        return created["id"], created["secret"]

    async def _make_hook(self, actor: str) -> str:
        hook_id, _ = await self.resolve("hook_with_secret", actor)
        return str(hook_id)

    async def _make_triggered(self, actor: str) -> tuple[str, str]:
        """(run id, hook request id) from one signed GitHub delivery through the ingest URL."""
        hook_id, secret = await self.resolve("hook_with_secret", actor)
        signature = hmac.new(secret.encode(), PULL_REQUEST, hashlib.sha256).hexdigest()
        response = await self.client.post(
            f"/hooks/incoming/{hook_id}",
            data=PULL_REQUEST,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": f"sha256={signature}",
            },
        )
        assert response.status == 202, f"setup: ingest -> {response.status} {await response.text()}"
        run_id = (await response.json())["run_id"]
        request_id = await self.db.pool.fetchval(
            "SELECT id FROM hook_requests WHERE run_id = $1", uuid.UUID(run_id)
        )
        assert request_id is not None, "setup: ingest recorded no hook request for the run"
        return run_id, str(request_id)

    async def _make_run(self, actor: str) -> str:
        run_id, _ = await self.resolve("triggered", actor)
        return str(run_id)

    async def _make_request(self, actor: str) -> str:
        _, request_id = await self.resolve("triggered", actor)
        return str(request_id)

    async def _make_claimed(self, actor: str) -> dict[str, Any]:
        """A run claimed by the administrator through the executor API (with its lease)."""
        await self.resolve("run", actor)
        pipeline = await self.resolve("pipeline", actor)
        claimed = await self._admin(
            "POST", "/runs/claim", {"pipeline_id": pipeline, "limit": 1, "lease_seconds": 300}, 200
        )
        runs = claimed["runs"] if isinstance(claimed, dict) else claimed
        assert len(runs) == 1, f"setup: claim returned {claimed}"
        return dict(runs[0])

    async def _make_claimed_run(self, actor: str) -> str:
        return str((await self.resolve("claimed", actor))["id"])

    async def _make_lease_token(self, actor: str) -> str:
        return str((await self.resolve("claimed", actor))["lease_token"])

    async def _make_outgoing_hook(self, actor: str) -> str:
        pipeline = await self.resolve("pipeline", actor)
        created = await self._admin(
            "POST", f"/pipelines/{pipeline}/hooks/outgoing", OUTGOING_HOOK_BODY
        )
        return str(created["id"])

    async def _make_role(self, _: str) -> int:
        created = await self._admin(
            "POST",
            "/roles",
            {"name": f"spare role {self.tag}", "permissions": ["environment:read"]},
        )
        return int(created["id"])

    async def _make_team(self, _: str) -> int:
        return int((await self._admin("POST", "/teams", {"name": f"spare team {self.tag}"}))["id"])

    async def _make_user(self, _: str) -> int:
        user_id, _headers = await make_user(self.db, f"spare-{self.tag}@example.com")
        return user_id

    async def _make_membership(self, actor: str) -> None:
        team, user = await self.resolve("team", actor), await self.resolve("user", actor)
        await self._admin("POST", f"/teams/{team}/members", {"user_id": user})

    async def _make_link(self, actor: str) -> None:
        team, role = await self.resolve("team", actor), await self.resolve("role", actor)
        await self._admin("POST", f"/environments/{self.env}/teams/{team}/link", {"role_id": role})

    async def _make_token(self, actor: str) -> int:
        """A personal token of the acting user (the administrator's for anonymous calls)."""
        owner = self.user_ids.get(actor, self.user_ids["admin"])
        secret = tokens.new_token("personal")
        row = await users.insert_token(
            self.db, owner, "personal", tokens.token_hash(secret), "spare", None
        )
        return int(row["id"])

    async def _make_login_user(self, _: str) -> str:
        email = f"login-{self.tag}@example.com"
        await accounts.create_user(self.db, self.config.auth, email, PASSWORD)
        return email

    async def _make_refresh_token(self, actor: str) -> str:
        email = await self.resolve("login_user", actor)
        body = await self._admin(
            "POST", "/users/login", {"email": email, "password": PASSWORD}, 200
        )
        return str(body["refresh_token"])


OUTGOING_HOOK_BODY = {
    "name": "Comment deploy status",
    "target_url": "https://example.com/notify",
    "active": True,
    "trigger_when": {"events": ["run.completed"]},
    "requires_secret": False,
}
