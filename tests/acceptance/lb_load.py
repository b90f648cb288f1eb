"""The load of the failover tests: 2,000 signed deliveries through nginx while instance B is
stopped, the invariants they must keep, and the figures they print (runs, storage, WAL)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from tests.acceptance.lb_client import Api, client_from, signed_headers, until
from tests.acceptance.lb_helpers import Cluster
from tests.conftest import FIXTURES

LOAD_REQUESTS = 2000
LOAD_CONNECTIONS = 16
STOP_AFTER = 500  # answers received before instance B is stopped
GITHUB_PAYLOAD = FIXTURES / "github" / "pull_request.opened.json"  # 28 KB


async def hook_entries(cluster: Cluster, hook_id: str, sent: int) -> list[dict[str, Any]]:
    """nginx access-log entries for one hook's URL, once all ``sent`` requests are logged."""
    return await cluster.nginx.entries(f"/hooks/incoming/{hook_id}", sent)


def served_by(cluster: Cluster, entry: dict[str, Any]) -> str:
    """The instance that answered (the last one nginx tried)."""
    return cluster.upstream_name(entry["upstream"].split(",")[-1]) if entry["upstream"] else "-"


@dataclass
class LoadResult:
    """One bounded load through nginx during which instance B was stopped."""

    deliveries: list[str]
    first: dict[str, int | str]  # delivery id -> status (or what went wrong) of the first try
    retried: dict[str, int | str]  # the sender's retries of failures, same delivery id
    runs_before_retries: dict[str, int]  # delivery id -> runs, right after the first pass
    runs: dict[str, int]  # ... and after the retries
    figures: dict[str, Any]


async def load_while_stopping_b(cluster: Cluster, stop: signal.Signals) -> LoadResult:
    """2,000 signed deliveries of GitHub's real 28 KB pull_request payload through nginx on 16
    connections from 127.0.0.3; ``stop`` is sent to instance B after 500 answers; then the
    sender retries its failures with the same delivery id, as real senders do."""
    async with client_from("127.0.0.3") as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        _, hook = await a.seed_hook()
    url = cluster.public_url + f"/hooks/incoming/{hook['id']}"
    body = GITHUB_PAYLOAD.read_bytes()
    deliveries = [str(uuid.uuid4()) for _ in range(LOAD_REQUESTS)]
    first: dict[str, int | str] = {}
    pending = list(reversed(deliveries))
    stopped_after: list[int] = []

    async def send(session: aiohttp.ClientSession, delivery: str) -> int | str:
        try:
            headers = signed_headers(hook["secret"], body, delivery)
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return f"client error {type(exc).__name__}"

    async def sender(session: aiohttp.ClientSession) -> None:
        while pending:
            delivery = pending.pop()
            first[delivery] = await send(session, delivery)
            if len(first) == STOP_AFTER and not stopped_after:
                os.kill(cluster.b.pid, stop)
                stopped_after.append(len(first))

    before = await storage_figures(cluster.dsn)
    started = time.monotonic()
    async with client_from("127.0.0.3", limit=LOAD_CONNECTIONS) as session:
        await asyncio.gather(*(sender(session) for _ in range(LOAD_CONNECTIONS)))
        elapsed = time.monotonic() - started
        after = await storage_figures(cluster.dsn)
        runs_before = await runs_by_delivery(cluster.dsn, hook["id"])
        retried: dict[str, int | str] = {}
        for _ in range(3):
            failing = [d for d, s in {**first, **retried}.items() if not is_2xx(s)]
            if not failing:
                break
            for delivery in failing:
                retried[delivery] = await send(session, delivery)
    runs = await runs_by_delivery(cluster.dsn, hook["id"])

    entries = await hook_entries(cluster, hook["id"], len(first) + len(retried))
    ok_first = {d for d, s in first.items() if is_2xx(s)}
    figures = {
        "requests": len(first),
        "2xx": len(ok_first),
        "non_2xx": dict(Counter(s for s in first.values() if not is_2xx(s))),
        "duplicates_200": sum(1 for s in first.values() if s == 200),
        f"{stop.name}_to_B_after": stopped_after[0] if stopped_after else None,
        "served_by": dict(Counter(served_by(cluster, e) for e in entries[: len(first)])),
        "nginx_failovers": sum(1 for e in entries if "," in e["upstream"]),
        "runs_before_retries": sum(runs_before.values()),
        "ambiguous": len(set(runs_before) - ok_first),
        "sender_retries": len(retried),
        "retry_answers": dict(Counter(retried.values())),
        "runs": sum(runs.values()),
        "deliveries_outgoing": cluster.figures.get("deliveries", "n/a"),
        "elapsed_s": round(elapsed, 2),
        "body_bytes": len(body),
        # Per request, in bytes (the 2xx ones; rejected ones write a history row only).
        **{f"{k}_per_request": round((after[k] - before[k]) / len(first)) for k in after},
    }
    return LoadResult(deliveries, first, retried, runs_before, runs, figures)


def check_nothing_lost_or_doubled(result: LoadResult, line: str) -> None:
    """The invariants of a stop under load (see the test docstrings)."""
    first, runs_before, runs = result.first, result.runs_before_retries, result.runs
    ok_first = {d for d, s in first.items() if is_2xx(s)}
    assert not [s for s in first.values() if isinstance(s, str)], f"hung or broken: {line}"
    assert {s for s in first.values() if not is_2xx(s)} <= {502, 503}, line
    assert result.figures["served_by"].get("B", 0) > 0, f"B served nothing before: {line}"
    assert set(runs_before.values()) == {1}, f"a delivery has several runs: {line}"
    # Every 2xx has its run; a run without a 2xx can only belong to a failed (ambiguous)
    # request: the instance committed it, then died before answering.
    assert ok_first <= set(runs_before), line
    assert set(runs_before) - ok_first <= set(first) - ok_first, line
    assert set(runs.values()) == {1}, f"a retry made a second run: {line}"
    # After the sender's retries: every delivery answered 2xx, and has exactly one run.
    assert all(is_2xx(s) for s in {**first, **result.retried}.values()), line
    assert set(runs) == set(result.deliveries) and len(runs) == LOAD_REQUESTS, line


async def until_nginx_routes_to_b(cluster: Cluster) -> None:
    """Probe /healthz through nginx until B answers one: after a failure nginx leaves B out
    for fail_timeout (10 s), then tries it again with a live request."""
    async with client_from("127.0.0.3") as session:

        async def b_answered() -> bool:
            probe = f"probe-{uuid.uuid4().hex}"
            async with session.get(
                cluster.public_url + "/healthz", headers={"X-Request-Id": probe}
            ) as response:
                await response.read()
            deadline = time.monotonic() + 10
            while not (
                entry := [e for e in cluster.nginx.access_log() if e["request_id"] == probe]
            ):
                assert time.monotonic() < deadline, "the probe was never logged"
                await asyncio.sleep(0.02)
            return served_by(cluster, entry[0]) == "B" and entry[0]["status"] == 200

        await until(b_answered, 30.0, "nginx routing to instance B", interval=0.2)


async def storage_figures(dsn: str) -> dict[str, int]:
    """Bytes on disk of the two tables every hook request writes (heap, TOAST, indexes), and
    the WAL position: the differences across a load are its write amplification."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT pg_relation_size('pipeline_runs') AS runs_heap, "
            "pg_indexes_size('pipeline_runs') AS runs_indexes, "
            "pg_relation_size('hook_requests') AS requests_heap, "
            "pg_total_relation_size('hook_requests') - pg_relation_size('hook_requests') "
            "- pg_indexes_size('hook_requests') AS requests_toast, "
            "pg_indexes_size('hook_requests') AS requests_indexes, "
            "pg_current_wal_lsn() - '0/0'::pg_lsn AS wal"
        )
    finally:
        await conn.close()
    assert row is not None
    return {key: int(value) for key, value in row.items()}


async def runs_by_delivery(dsn: str, hook_id: str) -> dict[str, int]:
    """Runs per delivery id of one hook, counted in the database."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT delivery_id, count(*) AS n FROM pipeline_runs WHERE hook_id = $1 "
            "GROUP BY delivery_id",
            uuid.UUID(hook_id),
        )
    finally:
        await conn.close()
    return {r["delivery_id"]: r["n"] for r in rows}


def is_2xx(status: int | str) -> bool:
    return isinstance(status, int) and 200 <= status < 300
