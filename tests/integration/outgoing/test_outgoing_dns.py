"""Target name lookups against a real (tiny) name server on loopback that answers some names,
says NXDOMAIN for some and never answers the rest (black-holed names)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway.config import Config
from gateway.dispatcher.client import new_session, send
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.dispatcher.outbound import OutboundRequest
from gateway.dispatcher.resolver import OutgoingResolver
from gateway.dispatcher.ssrf import is_refusal
from gateway.storage.database import Database
from tests.integration.dns_server import DNSServer
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import (
    Receiver,
    attempts,
    complete_run,
    create_hook,
    deliveries,
    eventually,
    hook_body,
    outgoing_config,
)

CONCURRENCY = 4
HEALTHY = "healthy.hooks.test"
MISSING = "missing.hooks.test"


@pytest.fixture(autouse=True)
def _slow_system_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """c-ares gives up on a name after resolv.conf's ``options timeout/attempts``: one second
    on some hosts, which a loaded machine can spend before a test looks at the lookups it
    expects still pending. Long ones here, so only the resolver's own timeout ends them."""
    monkeypatch.setenv("RES_OPTIONS", "timeout:30 attempts:1")


@pytest.fixture
async def name_server() -> AsyncIterator[DNSServer]:
    server = await DNSServer({HEALTHY: ["127.0.0.1"]}, nxdomain=[MISSING]).start()
    yield server
    server.close()


def _post(host: str, port: int) -> OutboundRequest:
    return OutboundRequest("POST", f"http://{host}:{port}/hook", {}, b"{}")


async def test_lookups_that_get_no_answer_do_not_hold_up_a_healthy_name(
    name_server: DNSServer,
) -> None:
    resolver = OutgoingResolver(60, [name_server.address])
    black_holed = [f"stuck-{n}.black-hole.test" for n in range(3 * CONCURRENCY)]
    stuck = [
        asyncio.create_task(resolver.resolve(name, 80, socket.AF_INET)) for name in black_holed
    ]
    try:
        await eventually(lambda: name_server.dropped >= set(black_holed))
        [found] = await resolver.resolve(HEALTHY, 80, socket.AF_INET)
        assert (found["hostname"], found["host"], found["port"]) == (HEALTHY, "127.0.0.1", 80)
        assert not any(task.done() for task in stuck)
    finally:
        await resolver.close()
        await asyncio.gather(*stuck, return_exceptions=True)


@pytest.mark.parametrize("allow_private_targets", [True, False])
async def test_more_black_holed_names_than_concurrency_do_not_hold_up_a_healthy_target(
    aiohttp_server: Any, name_server: DNSServer, allow_private_targets: bool
) -> None:
    """Lookups used to run on one thread per request the dispatcher may have in flight
    (``[outgoing] concurrency``), and a lookup goes on after its delivery timed out: as many
    names whose name servers never answer took every thread until the system resolver gave
    up (10 s and more), and a healthy target's lookup waited behind them until its delivery
    timed out too. Here three times as many deliveries to black-holed names have timed out,
    their lookups still waiting for an answer, when a healthy target is sent to."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    session = new_session(
        allow_private_targets=allow_private_targets,
        concurrency=CONCURRENCY,
        dns_timeout=60,
        nameservers=[name_server.address],
    )
    black_holed = [f"stuck-{n}.black-hole.test" for n in range(3 * CONCURRENCY)]
    try:
        for start in range(0, len(black_holed), CONCURRENCY):
            batch = black_holed[start : start + CONCURRENCY]
            sent = [send(session, _post(name, server.port), 0.5, 100) for name in batch]
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
            assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
        # Every black-holed name has been asked for, and none answered: their lookups are
        # all in flight at once, none waiting for another to end.
        await eventually(lambda: name_server.dropped >= set(black_holed))
        if allow_private_targets:
            answer = await send(session, _post(HEALTHY, server.port), 10, 100)
            assert answer.status == 200
            assert [seen.headers["Host"] for seen in receiver.seen] == [f"{HEALTHY}:{server.port}"]
        else:
            # The guard needs the lookup too: refused at once, not a timeout.
            with pytest.raises(aiohttp.ClientError) as raised:
                await send(session, _post(HEALTHY, server.port), 10, 100)
            assert "127.0.0.1 (loopback), refused" in (is_refusal(raised.value) or "")
    finally:
        await session.close()


async def test_a_name_that_does_not_exist_fails_at_once_as_a_dns_error(
    name_server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a host whose resolv.conf has a search list (CI runners, containers): the name is
    # asked for again with the search domain appended, which must not be black-holed either.
    monkeypatch.setenv("LOCALDOMAIN", "corp.example")
    session = new_session(
        allow_private_targets=False,
        concurrency=CONCURRENCY,
        dns_timeout=5.0,
        nameservers=[name_server.address],
    )
    try:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as raised:
            await send(session, _post(MISSING, 80), 10, 100)
        assert str(raised.value) == (
            f"Cannot connect to host {MISSING}:80 ssl:default [Domain name not found]"
        )
        assert is_refusal(raised.value) is None  # retried, not refused
    finally:
        await session.close()


@pytest.fixture
def config(database_dsn: str) -> Config:
    return outgoing_config(database_dsn, dns_timeout=0.2, retry_schedule=[0.1])


@pytest.mark.parametrize("allow_private_targets", [True, False])
async def test_a_lookup_that_gets_no_answer_is_recorded_as_a_dns_timeout_and_retried(
    client: Any,
    admin_headers: dict[str, str],
    db: Database,
    config: Config,
    name_server: DNSServer,
    allow_private_targets: bool,
) -> None:
    config = replace(
        config, outgoing=replace(config.outgoing, allow_private_targets=allow_private_targets)
    )
    env = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, env["id"], name="Deploy API")
    host = "stuck.black-hole.test"
    hook = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(f"http://{host}:8080/hook")
    )

    async def failed() -> bool:
        return [d["status"] for d in await deliveries(db, hook["id"])] == ["failed"]

    running = Dispatcher(db, config, nameservers=[name_server.address])
    await running.start()
    try:
        await complete_run(db, pipeline["id"])
        await eventually(failed)
        # A reload applies a new dns_timeout to the next lookup.
        longer = replace(config, outgoing=replace(config.outgoing, dns_timeout=0.3))
        running.apply_config(config, longer, frozenset({"outgoing.dns_timeout"}))
        await complete_run(db, pipeline["id"])
        await eventually(lambda: _attempt_count_is(db, hook["id"], 4))
    finally:
        await running.stop(0)
    recorded = [
        (a["outcome"], a["status_code"], a["message"]) for a in await attempts(db, hook["id"])
    ]
    cause = f"ClientConnectorDNSError: Cannot connect to host {host}:8080 ssl:default [DNS lookup"
    assert recorded[:2] == [
        ("failed", 0, f"{cause} of {host} timed out after 0.2s]"),
        ("failed", 0, f"{cause} of {host} timed out after 0.2s]; gave up after 2 attempts"),
    ]
    assert recorded[2][2] == f"{cause} of {host} timed out after 0.3s]"


async def _attempt_count_is(db: Database, hook_id: str, count: int) -> bool:
    return len(await attempts(db, hook_id)) == count


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_reloads_that_change_dns_timeout_keep_one_resolver(
    db: Database, config: Config, name_server: DNSServer
) -> None:
    """A new dns_timeout used to replace the dispatcher's session, and a replaced session is
    closed only when the dispatcher stops: each such reload kept a c-ares channel more, with
    its thread and four descriptors. Counted with no await in between: nothing else runs."""
    running = Dispatcher(db, config, nameservers=[name_server.address])
    await running.start()
    try:
        old, threads = config, _threads()
        for n in range(20):
            new = replace(config, outgoing=replace(config.outgoing, dns_timeout=1.0 + n))
            running.apply_config(old, new, frozenset({"outgoing.dns_timeout"}))
            old = new
        assert _threads() - threads < 5
    finally:
        await running.stop(0)
