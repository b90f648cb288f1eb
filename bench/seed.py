"""Create what the bench needs (admin, environment, pipeline, hooks) and count what it wrote.

Hooks are created through the management API (login, ``POST /environments``,
``POST /environments/{id}/pipelines``, ``POST /pipelines/{id}/hooks/incoming`` with the seed's
body). When an endpoint is not there yet (404/405), the same rows are written with SQL instead,
and ``Seeder.method`` says so in the report. The 100,000-hook set is always a multi-row SQL insert
that copies a hook created the normal way (so its secret, in whatever form it is stored, works).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.gateway import ADMIN_EMAIL, ADMIN_PASSWORD
from bench.payloads import hook_body


class ApiMissing(Exception):
    """The management API does not (yet) offer an endpoint the bench needs."""


@dataclass(frozen=True)
class Hook:
    """A hook the bench can call: its id, secret and pipeline."""

    id: str
    secret: str
    pipeline_id: int


def _call(base_url: str, method: str, path: str, body: Any, token: str | None = None) -> Any:
    request = urllib.request.Request(
        base_url + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            raise ApiMissing(f"{method} {path} -> {exc.code}") from exc
        raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read()[:500]!r}") from exc


async def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a short-lived connection; its rows."""
    return asyncio.run(_sql(dsn, query, *args))


class Seeder:
    """Creates the environment, pipeline and hooks; API first, SQL when the API is missing."""

    def __init__(self, base_url: str, dsn: str, tag: str) -> None:
        self.base_url = base_url
        self.dsn = dsn
        self.tag = tag
        self.method = "api"
        self.missing: list[str] = []
        self._token: str | None = None
        self._pipeline_id: int | None = None

    def _api(self, method: str, path: str, body: Any) -> Any:
        if self._token is None:
            login = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            self._token = _call(self.base_url, "POST", "/users/login", login)["access_token"]
        return _call(self.base_url, method, path, body, self._token)

    def _fallback(self, reason: ApiMissing) -> None:
        self.method = "sql"
        self.missing.append(str(reason))

    def pipeline_id(self) -> int:
        """The bench's pipeline (created on first use)."""
        if self._pipeline_id is not None:
            return self._pipeline_id
        name = f"bench-{self.tag}"
        pipeline = {"name": "bench", "resource_type": "application", "resource_id": 1}
        pipeline["action_type"] = "deploy"
        try:
            environment = self._api("POST", "/environments", {"name": name})
            created = self._api("POST", f"/environments/{environment['id']}/pipelines", pipeline)
            self._pipeline_id = int(created["id"])
        except ApiMissing as exc:
            self._fallback(exc)
            env_id = sql(
                self.dsn, "INSERT INTO environments (name) VALUES ($1) RETURNING id", name
            )[0]["id"]
            self._pipeline_id = sql(
                self.dsn,
                "INSERT INTO pipelines (environment_id, name, resource_type, resource_id,"
                " action_type) VALUES ($1, 'bench', 'application', 1, 'deploy') RETURNING id",
                env_id,
            )[0]["id"]
        return self._pipeline_id

    def create_hooks(self, variables: list[dict[str, Any]], count: int, label: str) -> list[Hook]:
        """``count`` hooks with these variables (the seed's body otherwise)."""
        pipeline_id = self.pipeline_id()
        hooks = []
        for i in range(count):
            body = hook_body(variables, name=f"bench {label} {i}")
            try:
                created = self._api("POST", f"/pipelines/{pipeline_id}/hooks/incoming", body)
                hooks.append(Hook(str(created["id"]), str(created["secret"]), pipeline_id))
            except ApiMissing as exc:
                self._fallback(exc)
                hooks.append(self._insert_hook(pipeline_id, body))
        return hooks

    def _insert_hook(self, pipeline_id: int, body: dict[str, Any]) -> Hook:
        hook_id, secret = str(uuid.uuid4()), secrets.token_hex(32)
        sql(
            self.dsn,
            "INSERT INTO incoming_hooks (id, pipeline_id, name, action_type, requires_secret,"
            " secret_algorithm, secret_header_name, secret, settings)"
            " VALUES ($1, $2, $3, $4, true, $5, $6, $7, $8::text::jsonb)",
            uuid.UUID(hook_id),
            pipeline_id,
            body["name"],
            body["action_type"],
            body["secret_algorithm"],
            body["secret_header_name"],
            secret,
            json.dumps({**body["settings"], "delivery_id_header": None}),
        )
        return Hook(hook_id, secret, pipeline_id)

    def count_hooks(self) -> int:
        """How many incoming hooks exist."""
        return int(sql(self.dsn, "SELECT count(*) AS n FROM incoming_hooks")[0]["n"])

    def bulk_copies(self, template: Hook, count: int) -> list[str]:
        """``count`` copies of ``template`` in one multi-row INSERT; their ids."""
        ids = [uuid.uuid4() for _ in range(count)]
        columns = [
            r["column_name"]
            for r in sql(
                self.dsn,
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'incoming_hooks' AND table_schema = current_schema()"
                " AND is_generated = 'NEVER' ORDER BY ordinal_position",
            )
            if r["column_name"] not in ("id", "name", "created_at", "updated_at")
        ]
        copied = ", ".join(f"h.{c}" for c in columns)
        sql(
            self.dsn,
            f"INSERT INTO incoming_hooks (id, name, {', '.join(columns)})"
            f" SELECT u.id, 'bench bulk ' || u.n, {copied}"
            " FROM incoming_hooks h, unnest($2::uuid[], $3::int[]) AS u(id, n) WHERE h.id = $1",
            uuid.UUID(template.id),
            ids,
            list(range(count)),
        )
        return [str(i) for i in ids]


@dataclass(frozen=True)
class Written:
    """What the database holds for one run tag."""

    runs: int
    distinct_deliveries: int
    requests: int
    # hook_requests.latency_ms (handler start -> commit) at p50 and p99; None when not recorded.
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None


def written(dsn: str, tag: str) -> Written:
    """Runs, distinct delivery ids and request-history rows whose delivery id has ``tag``, and
    the server-side latency those rows recorded."""
    pattern = tag + "-%"
    row = sql(
        dsn,
        "SELECT (SELECT count(*) FROM pipeline_runs WHERE delivery_id LIKE $1) AS runs,"
        " (SELECT count(DISTINCT delivery_id) FROM pipeline_runs WHERE delivery_id LIKE $1)"
        " AS distinct_deliveries, q.requests, q.latency[1] AS p50, q.latency[2] AS p99"
        " FROM (SELECT count(*) AS requests, percentile_cont(ARRAY[0.5, 0.99])"
        "       WITHIN GROUP (ORDER BY latency_ms) AS latency"
        "       FROM hook_requests WHERE delivery_id LIKE $1) AS q",
        pattern,
    )[0]
    return Written(row["runs"], row["distinct_deliveries"], row["requests"], row["p50"], row["p99"])


# Rows of ~1 KB written (and dropped) by prepare_wal: about 330 MB of WAL, more than one
# measured run writes between its checkpoints.
WAL_PREPARE_ROWS = 300_000


def prepare_wal(dsn: str) -> float:
    """Give a fresh data directory the WAL segments a running database already has; seconds.

    A new cluster creates and zero-fills each 16 MB WAL segment the first time it needs it,
    which stalls commits (the first measured run had p99 60-90 ms against 25-30 ms for the
    next identical one); a database that has been running recycles old segments instead. Writing
    ~330 MB of WAL once and checkpointing leaves that many segments ready for recycling.
    """
    started = time.monotonic()
    sql(  # CREATE TABLE AS takes no parameters; the count is our own integer
        dsn,
        "CREATE TABLE bench_wal_prepare AS SELECT repeat('x', 1000) AS filler"
        f" FROM generate_series(1, {int(WAL_PREPARE_ROWS)})",
    )
    sql(dsn, "DROP TABLE bench_wal_prepare")
    checkpoint(dsn)
    return time.monotonic() - started


def checkpoint(dsn: str) -> None:
    """Flush dirty pages now, so that no run pays for an earlier run's checkpoint."""
    sql(dsn, "CHECKPOINT")


def settle(dsn: str) -> float:
    """VACUUM (ANALYZE), then CHECKPOINT: no run pays for an earlier run's vacuum or
    checkpoint; seconds taken.

    Without it autovacuum starts whenever a table has had enough inserts, which in a full bench
    falls on whichever run comes then (a 100,000-hooks run measured 14-16 % slower after
    ~250,000 rows, against -7 to +1 % right after the reference run).
    """
    started = time.monotonic()
    sql(dsn, "VACUUM (ANALYZE)")
    checkpoint(dsn)
    return time.monotonic() - started


def autovacuum_activity(dsn: str) -> tuple[int, list[str]]:
    """Autovacuum/autoanalyze passes finished so far on the gateway's tables (not the system
    catalogs), and what autovacuum workers are doing right now ("VACUUM public.hook_requests")."""
    finished = sql(
        dsn,
        "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint AS n"
        " FROM pg_stat_user_tables",
    )[0]["n"]
    running = sql(
        dsn,
        "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        " AND query LIKE 'autovacuum: %' ORDER BY query",
    )
    return int(finished), [r["query"].removeprefix("autovacuum: ") for r in running]
