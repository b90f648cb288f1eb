"""`gateway dispatch` as a real process: killed mid-request, another process finishes the job."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.ingest.signatures import STANDARD_WEBHOOKS, generate_secret
from gateway.storage import outgoing
from gateway.storage.database import Database
from tests.acceptance.faketime import skewed_clock
from tests.conftest import TEST_SECRET_KEY
from tests.integration.outgoing_helpers import (
    HANG,
    Receiver,
    attempts,
    complete_run,
    deliveries,
    eventually,
)
from tests.integration.runs_helpers import make_pipeline
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


async def _dispatch(dsn: str, cwd: Path, **extra_env: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_DATABASE_DSN": dsn,
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_OUTGOING_ALLOW_PRIVATE_TARGETS": "true",
            "GATEWAY_OUTGOING_TIMEOUT": "30",
            "GATEWAY_OUTGOING_POLL_INTERVAL": "0.2",
            "PYTHONPATH": str(ROOT),
            **extra_env,
        }
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "dispatch",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _statuses(db: Database, hook_id: uuid.UUID) -> list[str]:
    return [d["status"] for d in await deliveries(db, hook_id)]


async def _notify_hook(
    db: Database, target_url: str, secret: str | None = None
) -> tuple[int, uuid.UUID]:
    """A pipeline with an outgoing hook to ``target_url`` on run.completed, signed with
    ``secret`` when given: (pipeline, hook)."""
    pipeline = await make_pipeline(db)
    hook_id = uuid.uuid4()
    values = {
        "name": "notify",
        "active": True,
        "target_url": target_url,
        "events": ["run.completed"],
        "trigger_when": {"events": ["run.completed"], "conditions": []},
        "settings": {},
        "requires_secret": secret is not None,
    }
    await outgoing.insert_hook(db, hook_id, pipeline["id"], values, secret, None)
    return pipeline["id"], hook_id


async def test_a_killed_dispatcher_loses_its_delivery_to_the_next_one(
    db: Database, database_dsn: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    target = Receiver()
    target.plan("/deploys", HANG, 200)
    server = await aiohttp_server(target.app())
    pipeline_id, hook_id = await _notify_hook(db, f"http://127.0.0.1:{server.port}/deploys")

    first = await _dispatch(database_dsn, tmp_path)
    try:
        await complete_run(db, pipeline_id)
        await eventually(lambda: len(target.seen) == 1, limit=60)
    finally:
        first.kill()  # SIGKILL: no chance to hand the delivery back
        await first.communicate()
    assert await _statuses(db, hook_id) == ["delivering"]

    # The crashed process's lease runs out; a new process claims and delivers.
    await db.pool.execute(
        "UPDATE outgoing_deliveries SET locked_until = now() - interval '1 second' "
        "WHERE hook_id = $1",
        hook_id,
    )
    second = await _dispatch(database_dsn, tmp_path)
    try:
        await eventually(lambda: _is_done(db, hook_id), limit=60)
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(second.communicate(), timeout=30)
    assert second.returncode == 0, stderr.decode()
    assert len(target.seen) == 2 and target.successes == 1
    assert target.seen[0].headers["webhook-id"] == target.seen[1].headers["webhook-id"]
    [attempt] = await attempts(db, hook_id)
    assert (attempt["outcome"], attempt["attempt"]) == ("succeeded", 2)


@pytest.mark.parametrize("offset", ["+120", "-120"])
async def test_a_dispatchers_clock_neither_stretches_nor_cuts_short_a_rotations_grace(
    db: Database, database_dsn: str, tmp_path: Path, aiohttp_server: Any, offset: str
) -> None:
    """The database's clock sets the end of a rotation's grace; a dispatcher whose clock is
    120 s off signs by it all the same. A grace of 60 s still running is honoured by a clock
    that says it ended a minute ago (ahead), and a grace over by a second is not by one that
    says it has two minutes to go (behind)."""
    target = Receiver()
    target.plan("/deploys", 200)
    server = await aiohttp_server(target.app())
    old, new = generate_secret(STANDARD_WEBHOOKS), generate_secret(STANDARD_WEBHOOKS)
    pipeline_id, hook_id = await _notify_hook(
        db, f"http://127.0.0.1:{server.port}/deploys", secret=old
    )
    async with db.transaction() as session:
        await outgoing.lock_hook(session, hook_id)
        await outgoing.rotate_secret(session, hook_id, new, 60)
    ahead = offset.startswith("+")
    if not ahead:
        await db.pool.execute(
            "UPDATE outgoing_hooks SET previous_secret_expires_at = now() - interval '1 second'"
            " WHERE id = $1",
            hook_id,
        )
    dispatcher = await _dispatch(
        database_dsn,
        tmp_path,
        GATEWAY_SECURITY_SECRET_KEYS=TEST_SECRET_KEY,
        **skewed_clock(offset),
    )
    try:
        await complete_run(db, pipeline_id)
        await eventually(lambda: _is_done(db, hook_id), limit=60)
    finally:
        dispatcher.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(dispatcher.communicate(), timeout=30)
    assert dispatcher.returncode == 0, stderr.decode()
    [seen] = target.seen
    sent = int(seen.headers["webhook-timestamp"])  # the skew is real
    assert abs(sent - time.time() - int(offset)) < 60, (sent, time.time())
    Webhook(new).verify(seen.body, seen.headers)
    if ahead:
        Webhook(old).verify(seen.body, seen.headers)  # the grace had 60 s to go
    else:
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(seen.body, seen.headers)


async def _is_done(db: Database, hook_id: uuid.UUID) -> bool:
    return await _statuses(db, hook_id) == ["succeeded"]


async def test_dispatch_serves_probes_and_its_own_metrics_on_the_configured_port(
    db: Database, database_dsn: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    target = Receiver()
    server = await aiohttp_server(target.app())
    pipeline_id, hook_id = await _notify_hook(db, f"http://127.0.0.1:{server.port}/deploys")
    port = free_port()
    process = await _dispatch(database_dsn, tmp_path, GATEWAY_OUTGOING_DISPATCH_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def answers(path: str) -> tuple[int, str]:
                try:
                    async with session.get(base + path) as response:
                        return response.status, await response.text()
                except aiohttp.ClientConnectionError:
                    return 0, ""

            await eventually(lambda: _status_is(answers("/healthz"), 200), limit=60)
            assert (await answers("/readyz"))[0] == 200
            # The probes answer from before the dispatcher starts (dispatch() opens them first):
            # its gauges show once it runs, before anything is delivered.
            before = ""

            async def gauges_shown() -> bool:
                nonlocal before
                before = (await answers("/metrics"))[1]
                return "hookgate_outgoing_at_limit" in before

            await eventually(gauges_shown, limit=60)
            await complete_run(db, pipeline_id)
            await eventually(lambda: _is_done(db, hook_id), limit=60)
            status, text = await answers("/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    # The dispatcher's gauges are there from its start (an alert on them sees 0, not nothing).
    for series in (
        "hookgate_outgoing_in_flight 0.0",
        'hookgate_outgoing_at_limit{limit="target"} 0.0',
        'hookgate_outgoing_at_limit{limit="environment"} 0.0',
    ):
        assert series in before.splitlines(), before
    assert status == 200
    assert 'hookgate_outgoing_attempts_total{outcome="succeeded"} 1.0' in text
    assert "hookgate_db_pool_size" in text


async def _status_is(answer: Any, status: int) -> bool:
    return bool((await answer)[0] == status)


async def test_dispatch_stops_with_a_clear_message_when_its_port_is_taken(
    database_dsn: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await _dispatch(database_dsn, tmp_path, GATEWAY_OUTGOING_DISPATCH_PORT=str(port))
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        finally:
            if process.returncode is None:  # still running: the test fails, leaving nothing
                process.kill()
                await process.wait()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()


async def test_a_second_sigterm_forces_the_stop_of_a_dispatcher_waiting_for_a_delivery(
    db: Database, database_dsn: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    # The target never answers and the stop would wait shutdown_timeout (60 s) for it.
    target = Receiver()
    target.plan("/deploys", HANG)
    server = await aiohttp_server(target.app())
    pipeline_id, hook_id = await _notify_hook(db, f"http://127.0.0.1:{server.port}/deploys")
    process = await _dispatch(
        database_dsn, tmp_path, GATEWAY_SERVER_SHUTDOWN_TIMEOUT="60", GATEWAY_LOG_LEVEL="info"
    )
    try:
        await complete_run(db, pipeline_id)
        await eventually(lambda: len(target.seen) == 1, limit=60)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 1, stderr.decode()
    assert b'"stop_forced"' in stderr and b'"forced": true' in stderr
    # Cut off, not lost: the delivery is still leased and is sent again after its lease.
    assert await _statuses(db, hook_id) == ["delivering"]
