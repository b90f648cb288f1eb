"""`gateway prune --older-than AGE` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.storage.database import Database
from tests.integration.runs_helpers import enqueue, make_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _prune(dsn: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_DSN=dsn, GATEWAY_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
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
    left = [r["id"] for r in await db.pool.fetch("SELECT id FROM pipeline_runs")]
    assert left == [new["id"]]


def test_prune_rejects_an_unreadable_age(database_dsn: str, tmp_path: Path) -> None:
    done = _prune(database_dsn, tmp_path, "--older-than", "a month")

    assert done.returncode == 2
    assert "30d, 12h, 90m or 3600s" in done.stderr
