"""`gateway serve` listening on a wildcard address without `[server] public_url` warns at
start-up: the hook URLs the API shows (http://0.0.0.0:PORT/...) would be unusable for senders,
which is what the Docker image (GATEWAY_SERVER_HOST=0.0.0.0) gives unless it is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.live_gateway import fresh_database, start_gateway, stop_gateway


@pytest.mark.parametrize(
    ("public_url", "warned"), [("", True), ("https://hooks.example.com", False)]
)
def test_a_wildcard_listener_without_public_url_warns(
    server_dsn: str, template_database: str, tmp_path: Path, public_url: str, warned: bool
) -> None:
    with fresh_database(server_dsn, template_database) as dsn:
        live = start_gateway(tmp_path, dsn, server={"host": "0.0.0.0", "public_url": public_url})
        try:
            warnings = live.gateway.named("public_url_not_set")
        finally:
            stop_gateway(live)
    assert bool(warnings) is warned
    if warned:
        assert warnings[0]["hook_urls"] == f"http://0.0.0.0:{live.port}"
        assert "GATEWAY_SERVER_PUBLIC_URL" in warnings[0]["hint"]
