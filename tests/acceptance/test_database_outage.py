"""The database goes away under load and comes back: a real ``gateway serve`` on a PostgreSQL
this test stops (``pg_ctl stop -m fast``) and starts again while signed deliveries keep coming.

Must hold: every request gets a 2xx or a 503 with Retry-After (never a hang: the client gives up
after 10 s and no request may hit that); the gateway recovers by itself once the database is
back; no 2xx without its run row. A 503'd delivery may still have committed (the commit reached
the server but its answer did not reach the gateway); the sender's retry with the same delivery
id then gets 200 and the original run, so retrying every 503 leaves exactly one run per delivery.
Figures are printed (also without -s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.fault_load import Load, client, report
from tests.acceptance.lb_client import Api
from tests.acceptance.lb_load import is_2xx, runs_by_delivery
from tests.acceptance.live_gateway import start_gateway, stop_gateway
from tests.acceptance.pg_control import ControlledPostgres

CONNECTIONS = 8
BEFORE_STOP = 300  # answers before the database is stopped
OUTAGE = 3.0  # seconds of load against the stopped database
RECOVERY_LIMIT = 30.0  # the gateway must accept again within this long after the restart
AFTER_RECOVERY = 300  # answers after the first post-restart 202


@pytest.fixture
def postgres(tmp_path: Path) -> Any:
    server = ControlledPostgres(tmp_path / "pg" / "data")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.mark.timeout(300)
async def test_database_stopped_mid_load_then_back(
    postgres: ControlledPostgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = start_gateway(
        tmp_path,
        postgres.dsn,
        sections={"batch": {"retry_after": 1}, "database": {"connect_timeout": 2.0}},
    )
    try:
        async with client(CONNECTIONS) as session:
            api = Api(session, live.url, live.token)
            _, hook = await api.seed_hook()
            load = Load(session, f"{live.url}/hooks/incoming/{hook['id']}", hook["secret"])
            runner = asyncio.create_task(load.run())
            try:
                await load.until(lambda a: len(a) >= BEFORE_STOP, 60, "load before the stop")
                await asyncio.to_thread(postgres.stop, "fast")
                stopped_at = time.monotonic()
                await asyncio.sleep(OUTAGE)
                ready_during, _ = await api.call("GET", "/readyz")
                restarting = time.monotonic()
                await asyncio.to_thread(postgres.start)
                restarted = time.monotonic()
                recovery = await load.until(
                    lambda a: any(x.status == 202 and x.sent_at > restarted for x in a[-50:]),
                    RECOVERY_LIMIT,
                    "a 202 after the database came back",
                )
                recovered_count = len(load.answers)
                await load.until(
                    lambda a: len(a) >= recovered_count + AFTER_RECOVERY, 60, "load after recovery"
                )
            finally:
                load.stop()
                await runner
            ready_after, _ = await api.call("GET", "/readyz")
            first = list(load.answers)
            runs_before_retries = await runs_by_delivery(postgres.dsn, hook["id"])
            # The sender retries every failure with the same delivery id.
            failed = [a.delivery for a in first if not is_2xx(a.status)]
            retried = await asyncio.gather(*(load.send(d) for d in failed))
            runs = await runs_by_delivery(postgres.dsn, hook["id"])
    finally:
        stop_gateway(live)

    statuses = Counter(a.status for a in first)
    during = [a for a in first if stopped_at <= a.sent_at < restarting]
    not_stored = [e for e in live.gateway.events if e.get("event") == "hook_request_not_stored"]
    ok = {a.delivery for a in first if is_2xx(a.status)}
    ambiguous = set(runs_before_retries) - ok  # committed although the sender saw a 503
    report(
        capsys,
        "database outage",
        {
            "requests": len(first),
            "2xx": len(ok),
            "503": statuses.get(503, 0),
            "other": {k: v for k, v in statuses.items() if k not in (202, 503)},
            "during_outage": dict(Counter(a.status for a in during)),
            "recovered_after_s": round(recovery, 2),
            "runs_before_retries": sum(runs_before_retries.values()),
            "committed_but_503": len(ambiguous),
            "retried": len(retried),
            "retry_answers": dict(Counter(a.status for a in retried)),
            "runs": sum(runs.values()),
            "not_stored_errors": [f"{e.get('error_type')}: {e.get('error')}" for e in not_stored],
        },
    )
    # Only 202 or 503 (+ Retry-After); no hang, no connection error, no 500.
    assert set(statuses) <= {202, 503}, statuses
    assert all(a.retry_after and a.retry_after.isdigit() for a in first if a.status == 503)
    assert statuses[503] > 0 and during, "the outage was never observed by a request"
    # Sent while the database was down: nothing can have been committed.
    assert all(a.status == 503 for a in during), Counter(a.status for a in during)
    assert ready_during == 503 and ready_after == 200
    # No 2xx without its row, and exactly one row each.
    assert all(runs_before_retries.get(d) == 1 for d in ok)
    # Retried with the same delivery id: 202 for the uncommitted, 200 (the original run) for any
    # that had committed; afterwards exactly one run per delivery and no run for anything else.
    assert all(is_2xx(a.status) for a in retried), Counter(a.status for a in retried)
    assert {a.delivery for a in retried if a.status == 200} == ambiguous
    deliveries = {a.delivery for a in first}
    assert set(runs) == deliveries and set(runs.values()) == {1}
