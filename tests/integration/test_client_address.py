"""The client address recorded for each hook request, behind (un)trusted proxies.

The test client connects from 127.0.0.1: with 127.0.0.1/32 in ``server.trusted_proxies`` the
peer is a trusted proxy and X-Forwarded-For decides; without it the header is ignored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.config import Config
from tests.integration.ingest_helpers import create_hook, new_pipeline
from tests.integration.ops_helpers import call_hook, reload_to, requests_of, with_section

LOOPBACK_TRUSTED = ("127.0.0.1/32", "10.0.0.0/8")


@pytest.fixture
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    trusted = getattr(request, "param", LOOPBACK_TRUSTED)
    return replace(config, server=replace(config.server, trusted_proxies=trusted))


async def recorded_ip(client: Any, headers: dict[str, str], **forwarded: str) -> str:
    hook = await create_hook(client, headers, await new_pipeline(client, headers))
    assert (await call_hook(client, hook, **forwarded)).status == 202
    [row] = await requests_of(client, headers, hook)
    address: str = row["client_ip"]
    return address


async def test_a_trusted_proxy_forwards_the_client_address(
    client: Any, admin_headers: dict[str, str]
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert await recorded_ip(client, admin_headers, **forwarded) == "203.0.113.7"


async def test_the_chain_is_read_from_the_right_up_to_the_first_untrusted_hop(
    client: Any, admin_headers: dict[str, str]
) -> None:
    # The sender wrote 1.2.3.4 itself; 198.51.100.9 is who connected to our proxy 10.1.2.3.
    forwarded = {"X-Forwarded-For": "1.2.3.4, 198.51.100.9, 10.1.2.3"}
    assert await recorded_ip(client, admin_headers, **forwarded) == "198.51.100.9"


@pytest.mark.parametrize("config", [("10.0.0.0/8",), ()], indirect=True)
async def test_an_untrusted_peer_cannot_forge_its_address(
    client: Any, admin_headers: dict[str, str]
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert await recorded_ip(client, admin_headers, **forwarded) == "127.0.0.1"


async def test_trusted_proxies_follow_a_reload(
    client: Any, admin_headers: dict[str, str], config: Config
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert await recorded_ip(client, admin_headers, **forwarded) == "203.0.113.7"
    reload_to(client, with_section(config, "server", trusted_proxies=("10.0.0.0/8",)))
    assert await recorded_ip(client, admin_headers, **forwarded) == "127.0.0.1"


async def test_links_keep_the_scheme_a_trusted_proxy_forwards(
    client: Any, admin_headers: dict[str, str]
) -> None:
    """Behind a TLS-terminating proxy the pagination links say https, as the client used."""
    forwarded = {**admin_headers, "X-Forwarded-Proto": "https", "Host": "hooks.example.com"}
    response = await client.get("/users?per_page=1", headers=forwarded)
    assert response.status == 200
    assert response.headers["Link"].startswith("<https://hooks.example.com/users?")


@pytest.mark.parametrize("config", [()], indirect=True)
async def test_links_ignore_a_forwarded_scheme_from_an_untrusted_peer(
    client: Any, admin_headers: dict[str, str]
) -> None:
    forwarded = {**admin_headers, "X-Forwarded-Proto": "https", "Host": "hooks.example.com"}
    response = await client.get("/users?per_page=1", headers=forwarded)
    assert response.headers["Link"].startswith("<http://hooks.example.com/users?")
