"""Baseline (c): the naive way to build the same ingest path.

Per request: read the body, verify the GitHub HMAC (``hmac.compare_digest``), parse it with
orjson, ``jsonpath_ng.parse()`` every variable's path again and ``find`` it, then ONE statement
per request (a CTE inserting the ``pipeline_runs`` row and the ``hook_requests`` row, raw body
included) committed on its own, and 202. Same database and tables as the gateway; no batching,
no caching. ``python -m bench.baselines.naive --port P --config FILE`` (FILE: JSON with ``dsn``
and ``hooks``: {id: {secret, pipeline_id, variables}}).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from jsonpath_ng import parse as jsonpath_parse

INSERT = """
WITH run AS (
    INSERT INTO pipeline_runs (id, pipeline_id, hook_id, request_id, delivery_id, status, variables)
    VALUES ($1, $2, $3, $4, $5, 'queued', $6::jsonb)
)
INSERT INTO hook_requests (id, hook_id, client_ip, headers, body, body_encoding, body_size,
                           outcome, status_code, message, run_id, delivery_id, latency_ms)
VALUES ($4, $3, $7::inet, $8::jsonb, $9, 'identity', $10, 'accepted', 202, 'queued', $1, $5, $11)
"""

CONFIG = web.AppKey("config", dict)
HOOKS = web.AppKey("hooks", dict)
POOL = web.AppKey("pool", asyncpg.Pool)


def _extract(payload: Any, variables: list[dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in variables:
        path = spec.get("path") or spec["name"]
        expression = jsonpath_parse(path if path.startswith("$") else "$." + path)  # every time
        matches = expression.find(payload)
        values[spec["name"]] = matches[0].value if matches else spec.get("default_value")
    return values


async def handle(request: web.Request) -> web.Response:
    """Verify, parse, extract, insert, 202 — one commit per request."""
    started = time.monotonic()
    hook_id = request.match_info["hook_id"]
    hook = request.app[HOOKS].get(hook_id)
    if hook is None:
        return web.json_response({"message": "not found", "errors": None}, status=404)
    body = await request.read()
    expected = "sha256=" + hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
    given = request.headers.get("X-Hub-Signature-256", "")
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return web.json_response({"message": "bad signature", "errors": None}, status=401)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return web.json_response({"message": "bad json", "errors": None}, status=400)
    variables = _extract(payload, hook["variables"])
    run_id, request_id = uuid.uuid4(), uuid.uuid4()
    headers = {
        k: ("[redacted]" if k.lower() == "x-hub-signature-256" else v)
        for k, v in request.headers.items()
    }
    await request.app[POOL].execute(
        INSERT,
        run_id,
        hook["pipeline_id"],
        uuid.UUID(hook_id),
        request_id,
        request.headers.get("X-GitHub-Delivery"),
        json.dumps(variables),
        request.remote,
        json.dumps(headers),
        body,
        len(body),
        (time.monotonic() - started) * 1000,
    )
    return web.json_response(
        {"message": "queued", "run_id": str(run_id), "errors": None},
        status=202,
        headers={"X-Run-Id": str(run_id)},
    )


async def health(request: web.Request) -> web.Response:
    """Readiness for the bench: the process is up."""
    return web.Response(text="ok")


async def _pool(app: web.Application) -> Any:
    config = app[CONFIG]
    app[POOL] = await asyncpg.create_pool(
        config["dsn"], min_size=2, max_size=config.get("pool_size", 10)
    )
    yield
    await app[POOL].close()


def main() -> None:
    """Serve ``POST /hooks/incoming/{hook_id}`` on the given port until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[CONFIG] = config
    app[HOOKS] = config["hooks"]
    app.cleanup_ctx.append(_pool)
    app.router.add_post("/hooks/incoming/{hook_id}", handle)
    app.router.add_get("/{tail:.*}", health)
    web.run_app(
        app, host=args.host, port=args.port, reuse_port=True, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
