"""Outgoing requests to targets that are broken or hostile, through the dispatcher's real
session (client.new_session) to real servers on loopback."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest

from gateway.dispatcher.client import new_session, send
from gateway.dispatcher.outbound import OutboundRequest
from gateway.dispatcher.ssrf import is_refusal
from tests.integration.outgoing_helpers import Receiver


@pytest.mark.parametrize("allow_private_targets", [True, False])
async def test_lookups_stuck_in_the_default_executor_do_not_hold_up_a_delivery(
    aiohttp_server: Any, allow_private_targets: bool
) -> None:
    """getaddrinfo holds a thread until the target's name server answers, whatever the
    request's timeout (a dead name server: 10 s and more per lookup). On the loop's default
    executor (min(32, CPUs + 4) threads, also used elsewhere in the process) a handful of
    targets with broken DNS took every thread, and the lookup of any other target waited
    behind them until its delivery timed out. Here the default executor has no thread free."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    loop = asyncio.get_running_loop()
    stuck = threading.Event()
    blocked = [loop.run_in_executor(None, stuck.wait) for _ in range(40)]
    session = new_session(
        allow_private_targets=allow_private_targets, concurrency=4, dns_timeout=5.0
    )
    request = OutboundRequest("POST", f"http://localhost:{server.port}/hook", {}, b"{}")
    try:
        if allow_private_targets:
            answer = await send(session, request, 2.0, 100)
            assert answer.status == 200
        else:
            # The guard needs the lookup too: refused at once, not a timeout.
            with pytest.raises(aiohttp.ClientError) as raised:
                await send(session, request, 2.0, 100)
            assert "(loopback), refused" in (is_refusal(raised.value) or "")
    finally:
        stuck.set()
        await asyncio.gather(*blocked)
        await session.close()
