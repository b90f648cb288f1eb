"""Fixtures shared by the outgoing-delivery tests: the gateway's config for them, a pipeline to hang
hooks on, a receiver on 127.0.0.1 and a running dispatcher. A module overrides one by defining
a fixture of the same name (e.g. a config with shorter timeouts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import Config
from gateway.dispatcher.dispatcher import Dispatcher
from gateway.storage.database import Database
from tests.integration.management_helpers import make_environment, make_pipeline
from tests.integration.outgoing_helpers import Receiver, outgoing_config


@pytest.fixture
def config(database_dsn: str) -> Config:
    return outgoing_config(database_dsn)


@pytest.fixture
async def pipeline(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    env = await make_environment(client, admin_headers)
    return await make_pipeline(client, admin_headers, env["id"], name="Deploy API")


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[tuple[Receiver, str]]:
    """A :class:`Receiver` and its base URL; requests it holds are released at the end."""
    target = Receiver()
    server = await aiohttp_server(target.app())
    yield target, f"http://127.0.0.1:{server.port}"
    target.release.set()


@pytest.fixture
async def dispatcher(db: Database, config: Config) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(db, config)
    await running.start()
    yield running
    await running.stop(0)
