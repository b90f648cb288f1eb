"""``[server] drain_delay``: after SIGTERM the gateway keeps serving for that long, /readyz
answering 503, so that a balancer that learns of the stop from its probes takes the instance
out of rotation before the port closes; then it stops as usual. The delay counts towards the
bound past which a stop is overdue (a supervisor kills its worker, a single process forces
its own stop): with a delay longer than ``shutdown_timeout`` + 5 s, the stop must still be
graceful."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.lb_client import Api, client_from, payload, signed_headers
from tests.acceptance.live_gateway import (
    LiveGateway,
    fresh_database,
    start_gateway,
    stop_gateway,
)
from tests.acceptance.process_helpers import port_is_free

# Longer than shutdown_timeout (0) + KILL_GRACE (5): the old bound would have cut it short.
DRAIN_DELAY = 6.0


async def _seed_hook(live: LiveGateway) -> dict[str, Any]:
    async with client_from("127.0.0.1") as session:
        _, hook = await Api(session, live.url, live.token).seed_hook()
        async with session.get(f"{live.url}/readyz") as ready:
            assert ready.status == 200
    return hook


async def _served_during_the_delay(live: LiveGateway, hook: dict[str, Any]) -> None:
    """Probes fail, while hooks (and liveness) are still served. A new session each time: new
    connections, which the kernel spreads over the workers."""
    for _ in range(6):
        async with client_from("127.0.0.1") as session:
            async with session.get(f"{live.url}/readyz") as ready:
                assert ready.status == 503
                answer = await ready.json()
                assert answer["message"] == "not ready: the gateway is stopping"
            async with session.get(f"{live.url}/healthz") as alive:
                assert alive.status == 200
    body = payload(7)
    async with client_from("127.0.0.1") as session:
        async with session.post(
            f"{live.url}/hooks/incoming/{hook['id']}",
            data=body,
            headers=signed_headers(hook["secret"], body),
        ) as accepted:
            assert accepted.status == 202, await accepted.text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_keeps_serving_for_the_drain_delay_with_readyz_failing(
    server_dsn: str, template_database: str, tmp_path: Path, workers: int
) -> None:
    with fresh_database(server_dsn, template_database) as dsn:
        live = start_gateway(
            tmp_path,
            dsn,
            server={"drain_delay": DRAIN_DELAY, "shutdown_timeout": 0.0, "workers": workers},
            listening=workers,
        )
        try:
            hook = asyncio.run(_seed_hook(live))
            live.gateway.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            live.gateway.wait_for(  # each worker keeps serving, as one process does
                lambda e: (
                    e.get("event") == "stop_delayed"
                    and len(live.gateway.named("stop_delayed")) >= workers
                ),
                "stop_delayed",
                timeout=10,
            )
            asyncio.run(_served_during_the_delay(live, hook))
            assert time.monotonic() - signalled < DRAIN_DELAY, "the checks took the whole delay"

            assert live.gateway.finish(timeout=60) == 0, live.gateway.output
            took = time.monotonic() - signalled
        finally:
            stop_gateway(live)
    assert took >= DRAIN_DELAY
    assert port_is_free(live.port)
    events = {e.get("event") for e in live.gateway.events}
    assert not events & {"stop_overdue", "stop_forced", "worker_killed"}, live.gateway.output
    assert [e["drain_delay"] for e in live.gateway.named("stop_delayed")] == [DRAIN_DELAY] * workers
