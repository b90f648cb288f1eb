"""``GET /metrics`` (Prometheus text format) and the per-process gauge sampler.

The route refreshes this process's pool gauges, then renders: in multi-process mode it reads
every worker's files in a thread, so the event loop never waits on the disk. Each worker also
runs :func:`metrics_service`, which samples its pool every few seconds, so a scrape answered
by one worker still sums the pools of all of them, and watches its event loop's lag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway import appkeys, loop_lag, metrics

routes = web.RouteTableDef()

SAMPLE_INTERVAL = 5.0  # seconds between pool samples in each worker


def sample_pool(db: Any) -> None:
    """Copy the database pool's size and use into the gauges (asyncpg Pool counters)."""
    pool = getattr(db, "pool", None)
    if pool is None:
        return
    size = pool.get_size()
    metrics.set_pool(size, size - pool.get_idle_size())


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    """Every gateway metric, summed over the worker processes."""
    sample_pool(request.app[appkeys.DATABASE])
    if metrics.MULTIPROC_DIR is None:
        body = metrics.render(None)
    else:
        body = await asyncio.to_thread(metrics.render, metrics.MULTIPROC_DIR)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def metrics_service(app: web.Application) -> AsyncIterator[None]:
    """Per-process samplers of the pool gauges and of the event loop's lag
    (gateway.loop_lag); a ``SERVICE_CONTEXTS`` entry."""
    db = app[appkeys.DATABASE]

    async def sample_forever() -> None:
        while True:
            sample_pool(db)
            await asyncio.sleep(SAMPLE_INTERVAL)

    tasks = [
        asyncio.create_task(sample_forever(), name="metrics-sampler"),
        asyncio.create_task(loop_lag.watch_loop_lag(), name="loop-lag-watcher"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        metrics.set_pool(0, 0)
