"""Prometheus metrics: recording, the /metrics route on a real pool, multi-process summing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import appkeys, metrics
from gateway.ingest.hook_cache import HOOK_CACHE
from gateway.ingest.metrics_route import metrics_service, routes
from gateway.storage.database import Database
from tests.conftest import ROOT
from tests.integration.ingest_helpers import (
    PR_OPENED,
    execute,
    github_headers,
    hook_path,
    seed_hook,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def current() -> dict[Any, float]:
    return samples(metrics.render(None).decode())


def test_recording_functions_move_the_right_series() -> None:
    before = current()
    for _ in range(3):
        metrics.record_ingest("accepted", 202, 0.002)
    metrics.record_ingest("rejected", 401, 0.0001)
    metrics.record_batch(5, 7)
    metrics.record_outgoing_attempt("failed")
    metrics.record_outgoing_failure()
    after = current()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hookgate_ingest_requests_total", outcome="accepted", status="202") == 3
    assert delta("hookgate_ingest_requests_total", outcome="rejected", status="401") == 1
    assert delta("hookgate_ingest_latency_seconds_count") == 4
    assert delta("hookgate_ingest_latency_seconds_bucket", le="0.0025") == 4
    assert delta("hookgate_ingest_latency_seconds_bucket", le="0.001") == 1
    assert delta("hookgate_batch_size_count") == 1 and delta("hookgate_batch_size_sum") == 5
    assert value(after, "hookgate_batch_queue_depth") == 7
    assert delta("hookgate_outgoing_attempts_total", outcome="failed") == 1
    assert delta("hookgate_outgoing_failures_total") == 1
    assert not any(name.endswith("_created") for name, _ in after)


async def test_route_scrapes_with_pool_gauges(db: Database, aiohttp_client: Any) -> None:
    app = web.Application()
    app[appkeys.DATABASE] = db
    app.add_routes(routes)
    app.cleanup_ctx.append(metrics_service)
    client = await aiohttp_client(app)
    metrics.record_ingest("skipped", 202, 0.003)

    async with db.transaction() as session:  # hold one connection while scraping
        await session.fetchval("ping")
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        parsed = samples(await response.text())
    assert value(parsed, "hookgate_db_pool_size") == db.pool.get_size() >= 1
    assert value(parsed, "hookgate_db_pool_in_use") >= 1
    assert value(parsed, "hookgate_ingest_requests_total", outcome="skipped", status="202") >= 1
    families = {f.name: f.type for f in text_string_to_metric_families(await response.text())}
    assert families["hookgate_ingest_latency_seconds"] == "histogram"
    assert families["hookgate_batch_queue_depth"] == "gauge"


WRITER = textwrap.dedent(
    """
    import sys
    from gateway import metrics
    assert metrics.MULTIPROC_DIR, "not in multi-process mode"
    for _ in range(int(sys.argv[1])):
        metrics.record_ingest("accepted", 202, 0.004)
    metrics.record_batch(int(sys.argv[1]), 2)
    metrics.set_pool(3, 1)
    metrics.record_outgoing_attempt("succeeded")
    """
)


def test_multiprocess_two_writers_one_scrape(tmp_path: Path) -> None:
    directory = metrics.prepare_multiproc_dir(tmp_path / "prom", owner_pid=4242424)
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    pids = []
    for count in (3, 5):
        process = subprocess.run(
            [sys.executable, "-c", WRITER + "\nprint(__import__('os').getpid())", str(count)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        pids.append(int(process.stdout.strip()))

    parsed = samples(metrics.render(str(directory)).decode())
    assert value(parsed, "hookgate_ingest_requests_total", outcome="accepted", status="202") == 8
    assert value(parsed, "hookgate_ingest_latency_seconds_count") == 8
    assert value(parsed, "hookgate_batch_size_sum") == 8
    assert value(parsed, "hookgate_outgoing_attempts_total", outcome="succeeded") == 2
    assert value(parsed, "hookgate_db_pool_size") == 6  # livesum over both writers
    assert value(parsed, "hookgate_batch_queue_depth") == 4

    metrics.worker_exited(pids[0], directory)
    parsed = samples(metrics.render(str(directory)).decode())
    assert value(parsed, "hookgate_db_pool_size") == 3  # the dead worker's share is gone
    assert value(parsed, "hookgate_ingest_requests_total", outcome="accepted", status="202") == 8


def test_prepare_multiproc_dir_is_fresh_and_removes_stale_runs(tmp_path: Path) -> None:
    base = tmp_path / "prom"
    stale = base / "999999999"  # no such process
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"x")
    mine = base / str(os.getpid())
    mine.mkdir()
    (mine / "counter_2.db").write_bytes(b"x")
    path = metrics.prepare_multiproc_dir(base)
    assert path == mine and list(path.iterdir()) == []
    assert not stale.exists()
    assert (path.stat().st_mode & 0o777) == 0o700


async def test_a_500_for_a_hook_that_cannot_be_opened_counts_as_an_error(
    client: Any, admin_headers: dict[str, str], config: Any
) -> None:
    # README, Metrics: `error` is the 500. A secret sealed with a key this host lacks answers
    # 500 until an operator adds the key; counted as `rejected`, no alert on errors saw it.
    hook = await seed_hook(client, admin_headers)
    sealed_elsewhere = "enc:v1:gone:" + "A" * 40
    await execute(
        config.database.dsn,
        "UPDATE incoming_hooks SET secret = $2 WHERE id = $1::uuid",
        hook["id"],
        sealed_elsewhere,
    )
    client.app[appkeys.SERVICES][HOOK_CACHE].invalidate(hook["id"])
    before = current()
    headers = github_headers(hook["secret"], PR_OPENED)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 500
    after = current()

    def delta(outcome: str) -> float:
        labels = {"outcome": outcome, "status": "500"}
        name = "hookgate_ingest_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert (delta("error"), delta("rejected")) == (1, 0)
