"""Shared fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), one fresh database per test.

The schema is applied once per session to a template database; each test gets
``CREATE DATABASE ... TEMPLATE`` (tens of milliseconds) and the database is dropped afterwards,
off the test's path (:class:`DatabaseDropper`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

import gateway.logs
from gateway.app import HANDLER_OPTIONS, create_app
from gateway.config import Config, DatabaseConfig, build_config
from gateway.models import TokenPair
from gateway.storage.database import SCHEMA_PATH, Database
from tests.connection_origins import record_connection_origins

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Seals hook secrets in every test (a fixed key, so no test writes var/secret-keys).
TEST_SECRET_KEY = "test:" + base64.b64encode(bytes(range(32))).decode()

record_connection_origins()  # an unclosed connection's warning names its opener


def _dsn_with_database(dsn: str, database: str) -> str:
    # yarl drops the query (the embedded server's ?host=/socket/dir) on with_path; keep it.
    url = URL(dsn)
    return str(url.with_path("/" + database).with_query(url.query))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server the tests may create databases on."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    from gateway.storage.embedded import import_wheel

    data_dir = Path(os.environ.get("TEST_PGDATA", ROOT / "var" / "test-pgdata"))
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # 'stop': the wheel counts the processes using this data directory and stops the server
    # when the last one exits, so concurrent test runs in one checkout can share it.
    server = import_wheel().get_server(data_dir, cleanup_mode="stop")
    yield server.get_uri()


async def _create_database(server_dsn: str, name: str, template: str = "") -> None:
    """CREATE DATABASE ``name`` (a copy of ``template`` if given)."""
    copy = f' TEMPLATE "{template}"' if template else ""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()


async def _drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class DatabaseDropper:
    """Drops the tests' databases on a thread of its own, so that no test waits for it.

    DROP DATABASE makes the server checkpoint and waits for it (all of the server's dirty
    pages written and synced): 0.3 to 2 s on a loaded machine, which every test's teardown sat
    through. Here the drops queued meanwhile go out together, on a connection each, and
    PostgreSQL serves drops waiting at the same time with fewer checkpoints. :meth:`close`
    waits for the last one and fails naming the databases that could not be dropped."""

    # Drops waiting at once share checkpoints (one that starts after they asked serves them
    # all), so more of them keep up with more tests; each holds a connection meanwhile, and
    # every xdist worker has a dropper.
    CONCURRENCY = 8

    def __init__(self, server_dsn: str) -> None:
        self._server_dsn = server_dsn
        self._names: queue.Queue[str | None] = queue.Queue()
        self._failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="database-dropper", daemon=True)
        self._thread.start()

    def drop(self, name: str) -> None:
        """Drop database ``name`` soon (it may still have connections: they are ended)."""
        self._names.put(name)

    def close(self) -> None:
        """Wait until every database handed over is dropped."""
        self._names.put(None)
        self._thread.join()
        assert not self._failures, "could not drop: " + "; ".join(self._failures)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self._names.get()]
            while not self._names.empty():
                batch.append(self._names.get_nowait())
            closing = None in batch
            names = [name for name in batch if name is not None]
            if names:
                asyncio.run(self._drop_all(names))

    async def _drop_all(self, names: list[str]) -> None:
        slots = asyncio.Semaphore(self.CONCURRENCY)

        async def drop(name: str) -> None:
            async with slots:
                try:
                    await _drop_database(self._server_dsn, name)
                except Exception as exc:  # reported by close(), at the end of the session
                    self._failures.append(f"{name}: {exc!r}")

        await asyncio.gather(*(drop(name) for name in names))


@pytest.fixture(scope="session")
def database_dropper(server_dsn: str) -> Iterator[DatabaseDropper]:
    dropper = DatabaseDropper(server_dsn)
    yield dropper
    dropper.close()


@contextmanager
def _session_template(
    server_dsn: str, name: str, template: str, fill: Callable[[Database], Awaitable[object]]
) -> Iterator[str]:
    """A database for the session, made as a copy of ``template`` (or empty) and filled by
    ``fill``; dropped at the end."""

    async def create() -> None:
        await _create_database(server_dsn, name, template)
        db = await Database.connect(
            _dsn_with_database(server_dsn, name), DatabaseConfig(pool_min_size=1, pool_max_size=1)
        )
        try:
            await fill(db)
        finally:
            await db.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(_drop_database(server_dsn, name))


@pytest.fixture(scope="session")
def template_database(server_dsn: str) -> Iterator[str]:
    """A database holding the schema, copied for every test."""
    name = f"hookgate_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _session_template(server_dsn, name, "", lambda db: db.apply_schema(SCHEMA_PATH)):
        yield name


ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class AdminTemplate:
    """The schema template plus the administrator and one login of theirs."""

    name: str
    access_token: str
    good_until: float  # time.monotonic() until which the access token is sure to be valid


@pytest.fixture(scope="session")
def admin_template_database(server_dsn: str, template_database: str) -> Iterator[AdminTemplate]:
    """The template plus the administrator of ``admin_token``, made by ``accounts.create_user``,
    and logged in by ``accounts.login``, once per session: the Argon2 hash and check these
    compute cost a tenth of a second of CPU each, which every test logging in as the
    administrator would otherwise spend again."""
    from gateway import accounts

    auth = build_config({}, {}).auth
    pairs: list[TokenPair] = []

    async def admin(db: Database) -> None:
        await accounts.create_user(db, auth, ADMIN_EMAIL, ADMIN_PASSWORD, is_admin=True)
        pairs.append(await accounts.login(db, auth, ADMIN_EMAIL, ADMIN_PASSWORD))

    name = f"{template_database}_admin"
    logged_in = time.monotonic()
    with _session_template(server_dsn, name, template_database, admin):
        [pair] = pairs
        good_until = logged_in + pair.expires_in - TOKEN_MARGIN
        yield AdminTemplate(name, pair.access_token, good_until)


# A test starting later than this before the template's access token expires logs in itself.
TOKEN_MARGIN = 600.0


@pytest.fixture
def test_template(request: pytest.FixtureRequest, template_database: str) -> str:
    """The template this test's database is copied from: the one with the administrator in it
    when the test logs in as them (``admin_token``, ``admin_headers``), else the bare schema."""
    if "admin_token" in request.fixturenames:
        admin: AdminTemplate = request.getfixturevalue("admin_template_database")
        return admin.name
    return template_database


@pytest.fixture
async def database_dsn(
    server_dsn: str, test_template: str, database_dropper: DatabaseDropper
) -> AsyncIterator[str]:
    """DSN of a fresh database for this test, with the schema applied."""
    name = f"hookgate_t_{uuid.uuid4().hex[:12]}"
    await _create_database(server_dsn, name, test_template)
    yield _dsn_with_database(server_dsn, name)
    database_dropper.drop(name)


@pytest.fixture
def config(database_dsn: str) -> Config:
    """Defaults plus this test's database (tests override fields with dataclasses.replace);
    hook secrets are encrypted at rest with TEST_SECRET_KEY."""
    base = build_config({}, {})
    return replace(
        base,
        database=replace(base.database, dsn=database_dsn, pool_min_size=1, pool_max_size=4),
        server=replace(base.server, public_url="http://hooks.test"),
        security=replace(base.security, secret_keys=(TEST_SECRET_KEY,), key_file=""),
    )


@pytest.fixture
async def db(config: Config) -> AsyncIterator[Database]:
    database = await Database.connect(config.database.dsn, config.database)
    yield database
    await database.close()


@pytest.fixture
async def client(config: Config, db: Database, aiohttp_client: Any) -> Any:
    """A test client for the full application (both route tables on one listener)."""
    # aiohttp_client comes last so that it is torn down first: the app's cleanup (batcher
    # flush, listeners) runs while the pool and the test database still exist.
    return await client_for(create_app(config, db), aiohttp_client)


async def client_for(app: web.Application, aiohttp_client: Any) -> Any:
    """A test client for ``app`` on a server with the gateway's handler options (started here:
    aiohttp's TestServer drops options given to its constructor)."""
    server = TestServer(app)
    await server.start_server(**HANDLER_OPTIONS)
    return await aiohttp_client(server)


@pytest.fixture
async def admin_token(client: Any, admin_template_database: AdminTemplate) -> str:
    """A bearer token of the administrator (ADMIN_EMAIL): their user row, and the access and
    refresh tokens of a login, come with the test's database (``test_template``), so they are
    there before any other. Should the session outlast that token, a login through ``client``
    gives a new one."""
    if time.monotonic() < admin_template_database.good_until:
        return admin_template_database.access_token
    response = await client.post(
        "/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status == 200, await response.text()
    token: str = (await response.json())["access_token"]
    return token


@pytest.fixture
def admin_headers(admin_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debug events reach ``capture_logs`` whatever level an earlier test configured: a debug
    call returns at once while the configured level is above debug. Restored after the test."""
    monkeypatch.setattr(gateway.logs, "_THRESHOLD", [logging.DEBUG])
