"""`gateway prune --older-than AGE` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.storage.database import Database
from tests.integration.runs_helpers import enqueue, make_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _prune(dsn: str, cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_DSN=dsn, GATEWAY_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "prune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_prune_reports_rows_removed_per_table(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    pipeline = await make_pipeline(db)
    old = await enqueue(db, pipeline["id"])
    new = await enqueue(db, pipeline["id"])
    await db.pool.execute(
        "UPDATE pipeline_runs SET status = 'completed', finished_at = now() - interval '31 days' "
        "WHERE id = $1",
        old["id"],
    )

    done = _prune(database_dsn, tmp_path, "--older-than", "30d")

    assert done.returncode == 0, done.stderr
    assert "pipeline_runs: removed 1 rows older than " in done.stdout
    assert "hook_requests: removed 0 rows older than " in done.stdout
    assert "auth_tokens: removed 0 rows older than " in done.stdout
    left = [r["id"] for r in await db.pool.fetch("SELECT id FROM pipeline_runs")]
    assert left == [new["id"]]


def test_prune_rejects_an_unreadable_age(database_dsn: str, tmp_path: Path) -> None:
    done = _prune(database_dsn, tmp_path, "--older-than", "a month")

    assert done.returncode == 2
    assert "30d, 12h, 90m or 3600s" in done.stderr


async def test_prune_clears_old_bodies_when_asked(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    await db.pool.execute(
        "INSERT INTO hook_requests (id, hook_id, received_at, outcome, status_code, body,"
        " body_encoding, body_size) VALUES (gen_random_uuid(), gen_random_uuid(),"
        " now() - interval '8 days', 'accepted', 202, 'x', 'identity', 1)"
    )

    done = _prune(database_dsn, tmp_path, "--older-than", "30d", "--bodies-older-than", "7d")

    assert done.returncode == 0, done.stderr
    assert "hook_requests: cleared 1 bodies older than " in done.stdout
    row = await db.pool.fetchrow("SELECT body, body_size FROM hook_requests")
    assert (row["body"], row["body_size"]) == (None, 1)
    bad = _prune(database_dsn, tmp_path, "--older-than", "30d", "--bodies-older-than", "soon")
    assert bad.returncode == 2
    assert "--bodies-older-than: 'soon' is not an age" in bad.stderr


async def test_a_batch_past_the_command_timeout_says_what_to_change(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    """A batch the server cancels at database.command_timeout: the driver's error alone (exit 1)
    said nothing of --batch-size or the timeout. The table is locked here so that the batch
    waits, whatever the machine's speed."""
    async with db.pool.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE outgoing_deliveries IN ACCESS EXCLUSIVE MODE")
        done = await asyncio.to_thread(
            _prune,
            database_dsn,
            tmp_path,
            "--older-than",
            "30d",
            "--batch-size",
            "500",
            GATEWAY_DATABASE_COMMAND_TIMEOUT="1",
        )
    assert done.returncode == 1, done.stderr
    assert (
        "prune: a batch of up to 500 rows took longer than database.command_timeout (1 s) and "
        "was rolled back; the batches before it are committed. Run it again with a smaller "
        "--batch-size" in done.stderr
    ), done.stderr
    for bad in ("0", "100001", "x"):
        refused = _prune(database_dsn, tmp_path, "--older-than", "30d", "--batch-size", bad)
        assert refused.returncode == 2 and "--batch-size" in refused.stderr, refused.stderr


async def test_the_pruned_log_line_shows_every_count(
    db: Database, database_dsn: str, tmp_path: Path
) -> None:
    # auth_tokens was a field named like a credential: the log wrote "[redacted]" for its count.
    await db.pool.execute(
        "INSERT INTO users (email, name, password_hash, is_admin) VALUES ('p@example.org', '',"
        " 'x', false)"
    )
    await db.pool.execute(
        "INSERT INTO auth_tokens (user_id, kind, token_hash, name, expires_at) SELECT id,"
        " 'access', '\\x01', '', now() - interval '40 days' FROM users"
    )

    done = _prune(database_dsn, tmp_path, "--older-than", "30d", GATEWAY_LOG_LEVEL="info")

    assert done.returncode == 0, done.stderr
    assert "auth_tokens: removed 1 rows older than " in done.stdout
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (pruned,) = [line for line in lines if line["event"] == "pruned"]
    assert pruned["auth_tokens_count"] == 1
    assert pruned["pipeline_runs_count"] == 0
    assert pruned["hook_requests_count"] == 0
    assert pruned["outgoing_deliveries_count"] == 0
