"""The row values PostgreSQL quotes in an integrity error's DETAIL (a token hash, a password
hash, a hook secret) reach neither a log line nor an answer; the error's first line does."""

from __future__ import annotations

import hashlib
import re
import traceback
from dataclasses import replace
from typing import Any

import pytest

from gateway.config import Config
from gateway.exceptions import AlreadyExists
from gateway.logs import configure_logging
from gateway.storage import users
from gateway.storage.database import Database
from gateway.storage.error_details import WITHHELD
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

NEW_PASSWORD = "Canary-Row-Passw0rd-77e1"


@pytest.fixture
def config(config: Config) -> Config:
    """Hook secrets in plaintext (no key): a row's DETAIL would quote the secret itself."""
    return replace(config, security=replace(config.security, secret_keys=(), key_file=""))


async def _drift(db: Database, *tables: str) -> None:
    """A NOT NULL column this release does not write (a newer schema during a rolling
    upgrade): every insert into ``tables`` fails with a not-null violation."""
    for table in tables:
        await db.pool.execute(f"ALTER TABLE {table} ADD COLUMN newer int NOT NULL DEFAULT 1")
        await db.pool.execute(f"ALTER TABLE {table} ALTER COLUMN newer DROP DEFAULT")


async def test_a_failed_insert_logs_its_constraint_but_not_the_row(
    client: Any, admin_token: str, db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = {"Authorization": f"Bearer {admin_token}"}
    environment = await (
        await client.post("/environments", json={"name": "e"}, headers=headers)
    ).json()
    pipeline = await (
        await client.post(
            f"/environments/{environment['id']}/pipelines",
            json={
                "name": "p",
                "resource_type": "application",
                "resource_id": 1,
                "action_type": "deploy",
            },
            headers=headers,
        )
    ).json()
    await _drift(db, "auth_tokens", "users", "incoming_hooks")
    configure_logging("debug", "json")
    capsys.readouterr()
    try:
        answers = [
            await client.post("/users/me/tokens", json={"name": "ci"}, headers=headers),
            await client.post(
                "/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            ),
            await client.post(
                "/users",
                json={"email": "dev@example.com", "password": NEW_PASSWORD},
                headers=headers,
            ),
            await client.post(
                f"/pipelines/{pipeline['id']}/hooks/incoming",
                json={"name": "h", "action_type": "deploy"},
                headers=headers,
            ),
        ]
        output = capsys.readouterr().err
    finally:
        configure_logging("info", "json")
    assert [a.status for a in answers] == [500, 500, 500, 500]
    shown = output + "".join([await a.text() for a in answers])
    # The first line, naming column and table, is there for the operator ...
    for table in ("auth_tokens", "users", "incoming_hooks"):
        assert f'null value in column \\"newer\\" of relation \\"{table}\\"' in output, table
    # ... the row is not: no token hash, password hash, hook secret, email.
    assert "Failing row contains" not in shown
    assert not re.search(r"\\\\x[0-9a-f]{16}", shown)
    assert "$argon2" not in shown
    assert "dev@example.com" not in shown
    assert "h, t, deploy" not in shown
    assert WITHHELD in output


async def test_a_unique_violation_quotes_no_key_value(db: Database) -> None:
    """``Key (token_hash)=(\\x...) already exists``: neither the translated error nor the
    driver's error it was raised from (shown in a logged traceback) quotes the hash."""
    user = await users.insert_user(db, "owner@example.com", "", "not-a-real-hash", False)
    digest = hashlib.sha256(b"canary token").digest()
    await users.insert_token(db, user.id, "personal", digest, "first", None)
    with pytest.raises(AlreadyExists) as caught:
        await users.insert_token(db, user.id, "personal", digest, "second", None)
    text = "".join(traceback.format_exception(caught.value))
    assert digest.hex()[:16] not in text
    assert "auth_tokens_token_hash_key" in text  # the constraint is named
    assert WITHHELD in text
