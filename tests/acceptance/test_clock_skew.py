"""Two ``gateway serve`` instances on one database, one of them with its clock 120 s fast
(libfaketime): which push of a key is the newer under ``cancel-in-progress`` must not depend on
the instances' clocks. A run's queued_at used to be the receiving instance's clock, so the fast
instance's older push was taken for the newer one and the newer deploy was cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from tests.acceptance.faketime import skewed_clock
from tests.acceptance.live_gateway import LiveGateway, fresh_database, start_gateway, stop_gateway
from tests.integration.ingest_helpers import create_hook, new_pipeline


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def instances(
    server_dsn: str, template_database: str, tmp_path: Path
) -> Iterator[tuple[LiveGateway, LiveGateway]]:
    """(right, fast): the second instance's clock runs 120 s ahead (time, datetime and the
    monotonic clocks alike)."""
    with fresh_database(server_dsn, template_database) as dsn:
        (tmp_path / "right").mkdir()
        (tmp_path / "fast").mkdir()
        right = start_gateway(tmp_path / "right", dsn)
        try:
            fast = start_gateway(tmp_path / "fast", dsn, env=skewed_clock("+120"))
            try:
                # The skew is real (log lines carry each process's own time).
                [right_up], [fast_up] = (
                    right.gateway.named("listening"),
                    fast.gateway.named("listening"),
                )
                ahead = _time(fast_up["timestamp"]) - _time(right_up["timestamp"])
                assert ahead.total_seconds() > 100, (right_up, fast_up)
                yield right, fast
            finally:
                stop_gateway(fast)
        finally:
            stop_gateway(right)


async def test_the_newer_push_wins_whatever_the_receiving_instances_clock_says(
    instances: tuple[LiveGateway, LiveGateway],
) -> None:
    right, fast = instances
    async with aiohttp.ClientSession(base_url=right.url) as client:
        pipeline_id = await new_pipeline(client, right.auth)
        response = await client.put(
            f"/pipelines/{pipeline_id}/concurrency",
            json={"policy": "cancel-in-progress", "key": "branch"},
            headers=right.auth,
        )
        assert response.status == 200, await response.text()
        hook = await create_hook(
            client,
            right.auth,
            pipeline_id,
            requires_secret=False,
            settings={"variables": [{"name": "branch", "type": "string"}]},
        )
        path = f"/hooks/incoming/{hook['id']}"
        runs = []
        # The older push through the fast instance, the newer one (after its 202) through the
        # instance whose clock is right.
        for instance in (fast, right):
            answer = await client.post(f"{instance.url}{path}", json={"branch": "main"})
            assert answer.status == 202, await answer.text()
            runs.append((await answer.json())["run_id"])
        older, newer = runs

        response = await client.post(
            "/runs/claim", json={"pipeline_id": pipeline_id, "limit": 2}, headers=right.auth
        )
        assert response.status == 200, await response.text()
        assert [r["id"] for r in await response.json()] == [newer]
        cancelled = await (await client.get(f"/runs/{older}", headers=right.auth)).json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["message"] == f"superseded by run {newer}"
        started = await (await client.get(f"/runs/{newer}", headers=right.auth)).json()
        times = (cancelled["queued_at"], started["queued_at"], started["started_at"])
        assert _time(times[0]) < _time(times[1]) <= _time(times[2]), times
