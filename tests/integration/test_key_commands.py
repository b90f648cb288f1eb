"""``gateway keys``: generate (no config needed), status and rotate against a real database."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config import Config, load_config
from gateway.security import key_commands
from gateway.security.secret_box import SecretBox, key_id_of
from gateway.security.secret_keys import new_key_line, parse_key_line
from gateway.storage import environments, hooks, pipelines
from gateway.storage.database import Database
from tests.conftest import ROOT

VALUES = {
    "name": "h",
    "active": True,
    "action_type": "deploy",
    "requires_secret": True,
    "secret_algorithm": "sha256",
    "secret_header_name": "x-hub-signature-256",
    "trigger_when": {},
    "settings": {},
}


def test_generate_prints_a_valid_line_without_any_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    assert cli.main(["--config", str(broken), "keys", "generate", "--key-id", "k2"]) == 0
    line = capsys.readouterr().out.strip()
    assert parse_key_line(line).key_id == "k2"
    assert cli.main(["keys", "generate"]) == 0
    assert len(parse_key_line(capsys.readouterr().out.strip()).key) == 32


def test_rotate_is_offered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["keys", "rotate", "--help"])
    assert exit_info.value.code == 0
    assert "--batch-size" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("0", "must be a number greater than 0, got 0"),
        ("many", "'many' is not a number"),
        # Past int64 it was a driver traceback (exit 1), after connecting.
        ("100000000000000000000", "must be at most 10000, got 100000000000000000000"),
    ],
)
def test_rotate_refuses_a_batch_size_out_of_range_before_anything(
    capsys: pytest.CaptureFixture[str], size: str, problem: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["keys", "rotate", "--batch-size", size])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"gateway keys rotate: error: argument --batch-size: {problem}"
    )


async def seeded(db: Database, stored: list[str]) -> list[uuid.UUID]:
    env = await environments.insert_environment(db, f"env-{uuid.uuid4().hex[:8]}", "")
    pipeline = await pipelines.insert_pipeline(db, env["id"], "p", "application", 1, "deploy")
    ids = []
    for value in stored:
        ids.append(uuid.uuid4())
        await hooks.insert_incoming_hook(db, ids[-1], pipeline["id"], VALUES, value, None)
    return ids


def config_file(tmp_path: Path, keys: list[str]) -> Path:
    path = tmp_path / "config.toml"
    quoted = ", ".join(f'"{k}"' for k in keys)
    path.write_text(f'[security]\nsecret_keys = [{quoted}]\nkey_file = ""\n')
    return path


async def run_cli(path: Path, dsn: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(path),
        "keys",
        *args,
        cwd=ROOT,
        env={**os.environ, "GATEWAY_DATABASE_DSN": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_status_reports_key_usage_and_missing_keys(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    line_a, line_b = new_key_line("a"), new_key_line("b")
    box_a = SecretBox.from_key_set(_key_set(line_a))
    await seeded(db, [box_a.encrypt("x"), box_a.encrypt("y"), "legacy"])

    code, out, _ = await run_cli(config_file(tmp_path, [line_b, line_a]), database_dsn, "status")
    assert code == 0, out
    assert "primary key: b" in out
    assert "configured keys: b, a (from [security] secret_keys)" in out
    assert "incoming_hooks.secret: 2 sealed with a" in out
    assert "incoming_hooks.secret: 1 sealed with plaintext" in out
    assert line_a.split(":")[1] not in out

    code, out, err = await run_cli(config_file(tmp_path, [line_b]), database_dsn, "status")
    assert code == 1 and "2 sealed with a (KEY MISSING)" in out and "does not have" in err


async def status_with(tmp_path: Path, dsn: str, security: str) -> tuple[int, str, str]:
    """``keys status`` with a config file whose [security] section is ``security``."""
    path = tmp_path / "config.toml"
    path.write_text(f"[security]\n{security}\n")
    return await run_cli(path, dsn, "status")


async def test_status_names_a_key_file_read_beside_secret_keys(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    """With secret_keys set, an existing key file's keys still open secrets (moving from the
    generated key): status names the file as their source, not secret_keys alone."""
    line_a, line_b = new_key_line("a"), new_key_line("b")
    await seeded(db, [SecretBox.from_key_set(_key_set(line_a)).encrypt("x")])
    key_file = tmp_path / "secret-keys"
    key_file.write_text(line_a + "\n")
    security = f'secret_keys = ["{line_b}"]\nkey_file = "{key_file}"'
    code, out, _ = await status_with(tmp_path, database_dsn, security)
    assert code == 0, out
    assert f"configured keys: b, a (from [security] secret_keys and key_file '{key_file}')" in out
    assert "1 sealed with a\n" in out


async def test_status_without_its_key_file_does_not_claim_plaintext(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    """Run from another directory, the relative key file is not found: that is what status
    must say, not that secrets are stored in plaintext (key_file = "")."""
    line_a = new_key_line("a")
    await seeded(db, [SecretBox.from_key_set(_key_set(line_a)).encrypt("x")])
    absent = tmp_path / "var" / "secret-keys"
    code, out, err = await status_with(tmp_path, database_dsn, f'key_file = "{absent}"')
    assert code == 1, out
    assert f"primary key: (none: key_file '{absent}' does not exist)" in out
    assert "configured keys: none\n" in out
    assert "stored in plaintext" not in out
    assert "1 sealed with a (KEY MISSING)" in out and "does not have" in err


async def test_status_names_sensitive_header_values_left_in_plaintext(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    """An earlier release stored X-Functions-Key as written (the rule did not name it then):
    status says so and fails until `keys rotate` seals it; an ordinary header is no secret."""
    line_a = new_key_line("a")
    await seeded(db, [])
    pipeline_id = await db.pool.fetchval("SELECT max(id) FROM pipelines")
    headers = [
        {"name": "X-Functions-Key", "value": "FUNCKEY_legacy_0123456789"},
        {"name": "X-Run", "value": "plain"},
    ]
    await db.pool.execute(
        "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events, settings, "
        "requires_secret) VALUES ($1, $2, 'o', 'https://example.com/h', '{run.completed}', "
        "$3::jsonb, false)",
        uuid.uuid4(),
        pipeline_id,
        {"request_headers": headers},  # the pool's jsonb codec encodes it
    )
    config = config_file(tmp_path, [line_a])

    code, out, err = await run_cli(config, database_dsn, "status")
    assert code == 1, out
    assert "outgoing_hooks.settings.request_headers: 1 sensitive, in plaintext" in out
    assert "gateway keys rotate" in err and "FUNCKEY" not in out + err

    assert (await run_cli(config, database_dsn, "rotate"))[0] == 0
    code, out, _ = await run_cli(config, database_dsn, "status")
    assert code == 0 and "in plaintext" not in out
    assert "outgoing_hooks.settings.request_headers: 1 sealed with a" in out


async def test_rotate_command_reencrypts(db: Database, database_dsn: str, tmp_path: Path) -> None:
    line_a, line_b = new_key_line("a"), new_key_line("b")
    box_a = SecretBox.from_key_set(_key_set(line_a))
    ids = await seeded(db, [box_a.encrypt("x"), "legacy"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    key_commands.add_commands(parser.add_subparsers(dest="command"), rotate=True)
    args = parser.parse_args(
        ["--config", str(config_file(tmp_path, [line_b, line_a])), "keys", "rotate"]
    )

    def load(path: str | None) -> Config:
        return _with_dsn(load_config(path, env={}), database_dsn)

    assert await asyncio.to_thread(key_commands.main, args, load) == 0
    rows: list[Any] = [await hooks.incoming_hook_with_secrets(db, i) for i in ids]
    assert [key_id_of(r["secret"]) for r in rows] == ["b", "b"]
    box = SecretBox.from_key_set(_key_set(line_b, line_a))
    assert [box.decrypt(r["secret"]) for r in rows] == ["x", "legacy"]


def _key_set(*lines: str) -> Any:
    from gateway.security.secret_keys import load_keys

    return load_keys(lines, "")


def _with_dsn(config: Config, dsn: str) -> Config:
    from dataclasses import replace

    return replace(config, database=replace(config.database, dsn=dsn))


async def test_rotate_never_invents_a_key(db: Database, database_dsn: str, tmp_path: Path) -> None:
    # No configured keys and no key file where the config points: generating one (as a server
    # does on first start) would seal the secrets with a key no server has.
    box_a = SecretBox.from_key_set(_key_set(new_key_line("a")))
    ids = await seeded(db, [box_a.encrypt("x"), "legacy"])
    missing = tmp_path / "keys" / "secret-keys"
    path = tmp_path / "config.toml"
    path.write_text(f'[security]\nsecret_keys = []\nkey_file = "{missing}"\n')
    code, out, err = await run_cli(path, database_dsn, "rotate")
    assert code == 2, (out, err)
    assert err.startswith("gateway: no encryption key on this host (security.secret_keys is")
    assert f"key_file '{missing}' does not exist" in err
    assert not missing.exists()
    rows: list[Any] = [await hooks.incoming_hook_with_secrets(db, i) for i in ids]
    assert [key_id_of(r["secret"]) for r in rows] == ["a", None]


async def test_status_and_rotate_cover_an_outgoing_hooks_previous_secret(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    """An outgoing hook in a rotation's grace keeps its previous secret sealed: `keys status`
    counts it and `keys rotate` re-encrypts it with the primary key."""
    line_a, line_b = new_key_line("a"), new_key_line("b")
    box_a = SecretBox.from_key_set(_key_set(line_a))
    await seeded(db, [])
    pipeline_id = await db.pool.fetchval("SELECT max(id) FROM pipelines")
    hook_id = uuid.uuid4()
    await db.pool.execute(
        "INSERT INTO outgoing_hooks (id, pipeline_id, name, target_url, events, secret, "
        "previous_secret, previous_secret_expires_at) VALUES ($1, $2, 'o', "
        "'https://example.com/h', '{run.completed}', $3, $4, now() + interval '1 hour')",
        hook_id,
        pipeline_id,
        box_a.encrypt("whsec_new"),
        box_a.encrypt("whsec_old"),
    )
    config = config_file(tmp_path, [line_b, line_a])

    code, out, _ = await run_cli(config, database_dsn, "status")
    assert code == 0, out
    assert "outgoing_hooks.previous_secret: 1 sealed with a" in out
    assert (await run_cli(config, database_dsn, "rotate"))[0] == 0
    code, out, _ = await run_cli(config, database_dsn, "status")
    assert "outgoing_hooks.previous_secret: 1 sealed with b" in out
    row = await db.pool.fetchrow(
        "SELECT secret, previous_secret FROM outgoing_hooks WHERE id = $1", hook_id
    )
    box = SecretBox.from_key_set(_key_set(line_b))
    assert (box.decrypt(row["secret"]), box.decrypt(row["previous_secret"])) == (
        "whsec_new",
        "whsec_old",
    )
