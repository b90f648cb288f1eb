"""SIGHUP reload against a running application: live keys change what the API does at once,
restart-only keys are reported and left alone, a broken file changes nothing.

The reload is driven the way the SIGHUP handler drives it (``ConfigReloader.reload_and_log``
on the application's config holder); tests/acceptance/test_sighup.py sends the real signal.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import appkeys
from gateway.config import Config
from gateway.reload import ConfigReloader, changed_keys
from gateway.security.secret_keys import new_key_line
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_SECRET_KEY
from tests.integration.ingest_helpers import PR_OPENED, create_hook, new_pipeline
from tests.integration.ops_helpers import (
    call_hook,
    holder_of,
    reload_to,
    requests_of,
    with_section,
)

BASE = f"""
[security]
secret_keys = ["{TEST_SECRET_KEY}"]
key_file = ""
"""


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    # stdout or stderr, depending on how an earlier test configured logging.
    captured = capsys.readouterr()
    return captured.out + captured.err


async def body_stored(client: Any, headers: dict[str, str], hook: dict[str, Any]) -> bool:
    assert (await call_hook(client, hook)).status == 202
    stored: bool = (await requests_of(client, headers, hook))[0]["body_stored"]
    return stored


async def test_a_file_reload_applies_live_keys_and_reports_the_others(
    client: Any, admin_headers: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = await create_hook(client, admin_headers, await new_pipeline(client, admin_headers))
    path = tmp_path / "config.toml"
    reloader = ConfigReloader(path, holder_of(client), env={})
    assert await body_stored(client, admin_headers, hook)

    path.write_text(BASE + '[hooks]\nstore_bodies = "sometimes"\n[server]\nprot = 1\n')
    rejected = reloader.reload_and_log()
    assert rejected.error is not None and len(rejected.problems) == 2
    assert "config_reload_rejected" in logged(capsys)
    assert await body_stored(client, admin_headers, hook)  # the old config is in force

    path.write_text(BASE + '[hooks]\nstore_bodies = "none"\n')
    result = reloader.reload_and_log()
    assert "hooks.store_bodies" in result.applied
    # The test config differs from this file in restart-only keys too: reported, not applied.
    assert "database.dsn" in result.needs_restart
    assert holder_of(client).current.database.dsn != ""
    assert "config_reload_needs_restart" in logged(capsys)
    assert not await body_stored(client, admin_headers, hook)


async def test_auth_ttls_public_url_and_body_limit_are_live(
    client: Any, admin_headers: dict[str, str], config: Config
) -> None:
    hook = await create_hook(client, admin_headers, await new_pipeline(client, admin_headers))
    changed = with_section(config, "auth", access_token_ttl=120)
    changed = with_section(
        changed, "server", public_url="https://hooks.example", max_body_bytes=100
    )
    assert sorted(reload_to(client, changed)) == [
        "auth.access_token_ttl",
        "server.max_body_bytes",
        "server.public_url",
    ]

    login = await client.post(
        "/users/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert (await login.json())["expires_in"] == 120
    shown = await client.get(f"/hooks/incoming/{hook['id']}", headers=admin_headers)
    assert (await shown.json())["url"].startswith("https://hooks.example/hooks/incoming/")
    assert len(PR_OPENED) > 100
    assert (await call_hook(client, hook)).status == 413


async def signed_hook(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    """A new hook that requires a signature: its secret is sealed with the keys in force."""
    pipeline = await new_pipeline(client, headers)
    hook: dict[str, Any] = await create_hook(client, headers, pipeline, requires_secret=True)
    return hook


async def test_a_reload_with_a_missing_or_broken_key_file_changes_no_key(
    client: Any, admin_headers: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = await signed_hook(client, admin_headers)
    db = client.app[appkeys.DATABASE]
    box_before = db.secret_box
    path = tmp_path / "config.toml"
    reloader = ConfigReloader(path, holder_of(client), env={})
    key_file = tmp_path / "keys"

    # A typo'd path: a reload must not generate a key (every stored secret would be unreadable).
    path.write_text(f'[security]\nsecret_keys = []\nkey_file = "{key_file}"\n')
    missing = reloader.reload_and_log()
    assert missing.error is not None and "does not exist" in missing.error, missing
    assert not key_file.exists() and db.secret_box is box_before
    assert holder_of(client).current.security.secret_keys == (TEST_SECRET_KEY,)
    assert "config_reload_rejected" in logged(capsys)

    key_file.write_text("not a key line\n")
    broken = reloader.reload_and_log()
    assert broken.error is not None and db.secret_box is box_before
    assert (await call_hook(client, hook)).status == 202  # still verified with the old keys

    # Fixed: the same reload now applies (nothing was half-applied before).
    key_file.write_text(f"{TEST_SECRET_KEY}\n")
    key_file.chmod(0o600)
    fixed = reloader.reload_and_log()
    assert fixed.error is None and "security.key_file" in fixed.applied, fixed
    assert db.secret_box is not box_before
    assert (await call_hook(client, hook)).status == 202  # the same key, read from the file


async def test_an_edited_key_file_is_read_again(
    client: Any, admin_headers: dict[str, str], tmp_path: Path
) -> None:
    """Rotation through a mounted key file: its path stays, its content changes, and each
    reload reads it again (the documented steps: the new key last, then first)."""
    hook = await signed_hook(client, admin_headers)
    db = client.app[appkeys.DATABASE]
    key_file = tmp_path / "keys"
    key_file.write_text(f"{TEST_SECRET_KEY}\n")
    key_file.chmod(0o600)
    path = tmp_path / "config.toml"
    path.write_text(f'[security]\nsecret_keys = []\nkey_file = "{key_file}"\n')
    reloader = ConfigReloader(path, holder_of(client), env={})
    assert "security.key_file" in reloader.reload().applied  # another path
    assert reloader.reload().applied == []  # nothing changed: the keys are not reinstalled

    new = new_key_line("next")
    key_file.write_text(f"{TEST_SECRET_KEY}\n{new}\n")
    assert reloader.reload().applied == ["security.key_file"]
    assert db.secret_box.key_ids == ("test", "next") and db.secret_box.primary_key_id == "test"
    key_file.write_text(f"{new}\n{TEST_SECRET_KEY}\n")
    assert reloader.reload().applied == ["security.key_file"]
    assert db.secret_box.primary_key_id == "next"

    box = db.secret_box
    key_file.write_text("not a key line\n")
    for _ in range(2):  # rejected, and again at the next reload: the file is still changed
        assert reloader.reload().error is not None and db.secret_box is box
    key_file.write_text(f"{new}\n{TEST_SECRET_KEY}\n")  # repaired: the keys in force again
    assert reloader.reload().applied == [] and db.secret_box is box
    assert (await call_hook(client, hook)).status == 202  # sealed with "test", still opens


@pytest.mark.parametrize("between", ["replaced", "removed"])
async def test_a_reload_installs_the_keys_its_check_read(
    client: Any, admin_headers: dict[str, str], tmp_path: Path, between: str
) -> None:
    """The key file is read once per reload: a file replaced or removed between the check and
    the apply cannot install unchecked keys, nor make the reload generate a new key file."""
    hook = await signed_hook(client, admin_headers)
    db = client.app[appkeys.DATABASE]
    holder = holder_of(client)
    key_file = tmp_path / "keys"
    key_file.write_text(f"{TEST_SECRET_KEY}\n")
    key_file.chmod(0o600)
    new = with_section(holder.current, "security", secret_keys=(), key_file=str(key_file))
    changed = frozenset(changed_keys(holder.current, new))
    assert holder.check(new, changed) == []

    if between == "replaced":
        key_file.write_text(f"{new_key_line('other')}\n")
    else:
        key_file.unlink()
    assert holder.apply(new, changed) == []

    assert db.secret_box.primary_key_id == "test"  # what the check read, not the file now
    assert db.secret_box.key_ids == ("test",)
    assert key_file.exists() == (between == "replaced")  # never generated
    assert (await call_hook(client, hook)).status == 202  # its secret still opens


async def _late_body_answer(
    client: Any, path: str, length: int = 50, headers: dict[str, str] | None = None
) -> bytes:
    """The answer (status line, headers and body) to a body that never finishes arriving."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f'Content-Length: {length}\r\n\r\n{{"a":'.encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        size = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(size), 5)
    finally:
        writer.close()


async def test_body_timeout_is_live_on_both_route_tables(
    client: Any, admin_headers: dict[str, str], config: Config
) -> None:
    hook = await create_hook(client, admin_headers, await new_pipeline(client, admin_headers))
    assert reload_to(client, with_section(config, "server", body_timeout=0.3)) == [
        "server.body_timeout"
    ]
    for path in (f"/hooks/incoming/{hook['id']}", "/users/login"):
        started = time.monotonic()
        head = await _late_body_answer(client, path)
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert time.monotonic() - started < 5  # 0.3 s, not the 30 s the tests start with


async def test_the_body_deadline_grows_with_the_declared_size(
    client: Any, admin_headers: dict[str, str], config: Config, db: Any
) -> None:
    """body_timeout per MiB declared, on both route tables: 0.3 s becomes 0.9 s for a body of
    2 MiB and a byte (a large status report from a slow executor is not cut off at 0.3 s)."""
    from tests.integration.runs_helpers import enqueue
    from tests.integration.runs_helpers import make_pipeline as make_run_pipeline

    hook = await create_hook(client, admin_headers, await new_pipeline(client, admin_headers))
    changed = with_section(config, "server", body_timeout=0.3, max_body_bytes=3 * 1_048_576)
    assert sorted(reload_to(client, changed)) == ["server.body_timeout", "server.max_body_bytes"]
    run = await enqueue(db, (await make_run_pipeline(db))["id"])
    declared = 2 * 1_048_576 + 1
    for path in (f"/hooks/incoming/{hook['id']}", f"/runs/{run['id']}/status"):
        answer = await _late_body_answer(client, path, declared, admin_headers)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received within 0.9 s" in answer, answer
