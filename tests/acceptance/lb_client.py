"""HTTP helpers for the load-balancer tests: the management API, signed GitHub-style triggers
from a chosen loopback source address, and bounded polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from gateway.ingest.signatures import sign_hmac_hex
from tests.integration.management_helpers import JSON_HEADERS, SEED_CREATE_BODY

CLIENT_TIMEOUT = 10.0  # no request may take longer: a hang fails the test instead of stalling it


@asynccontextmanager
async def client_from(source: str, limit: int = 16) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connections leave from ``source`` (127.0.0.3, 127.0.0.4 ...): on Linux
    the whole 127.0.0.0/8 is loopback, so tests can play clients with distinct addresses."""
    connector = aiohttp.TCPConnector(limit=limit, local_addr=(source, 0))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


class Api:
    """The management API of one listener (an instance's management port or nginx's internal
    server), as the bootstrap admin."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.session = session
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}", **JSON_HEADERS}

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or None); asserts the status when ``expect`` is given."""
        data = body if isinstance(body, str | bytes) or body is None else orjson.dumps(body)
        async with self.session.request(
            method, self.base_url + path, data=data, headers=self.headers
        ) as response:
            raw = await response.read()
            parsed = orjson.loads(raw) if raw else None
            if expect is not None:
                assert response.status == expect, f"{method} {path}: {response.status} {raw!r}"
            return response.status, parsed

    async def seed_hook(self) -> tuple[int, dict[str, Any]]:
        """A new environment, pipeline and the seed's incoming hook: (pipeline id, hook JSON
        with its secret)."""
        _, env = await self.call(
            "POST", "/environments", {"name": f"lb-{uuid.uuid4().hex[:8]}"}, expect=201
        )
        pipeline_body = {
            "name": "Deploy API",
            "resource_type": "application",
            "resource_id": 42,
            "action_type": "deploy",
        }
        _, pipeline = await self.call(
            "POST", f"/environments/{env['id']}/pipelines", pipeline_body, expect=201
        )
        _, hook = await self.call(
            "POST", f"/pipelines/{pipeline['id']}/hooks/incoming", SEED_CREATE_BODY, expect=201
        )
        return pipeline["id"], hook


def payload(number: int) -> bytes:
    """A small GitHub ``pull_request`` payload the seed hook extracts variables from."""
    return orjson.dumps(
        {
            "action": "opened",
            "number": number,
            "pull_request": {
                "number": number,
                "title": f"change {number}",
                "head": {"ref": "main", "sha": f"{number:040x}"},
            },
        }
    )


def signed_headers(secret: str, body: bytes, delivery_id: str | None = None) -> dict[str, str]:
    """GitHub's headers for ``body``: X-Hub-Signature-256 and a unique X-GitHub-Delivery."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sign_hmac_hex(secret, "sha256", body),
    }


async def trigger(
    session: aiohttp.ClientSession,
    url: str,
    secret: str,
    *,
    number: int = 1,
    delivery_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST one signed delivery: (status, response headers in lower case, JSON body)."""
    body = payload(number)
    headers = {**signed_headers(secret, body, delivery_id), **(extra_headers or {})}
    async with session.post(url, data=body, headers=headers) as response:
        raw = await response.read()
        parsed = orjson.loads(raw) if raw.startswith(b"{") else raw.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.headers.items()}, parsed


async def until(
    check: Callable[[], Awaitable[bool]], limit: float, what: str, interval: float = 0.01
) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after ``limit`` seconds."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise AssertionError(f"{what}: not within {limit}s")
        await asyncio.sleep(interval)
