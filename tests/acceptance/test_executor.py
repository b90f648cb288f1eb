"""`gateway executor` as a real subprocess against a real database.

- The seed's deploy example end to end: the seed's hook, a signed GitHub pull_request delivery
  to POST /hooks/incoming/{id}, then `gateway executor -- sh -c 'echo $HOOK_VAR_SOURCE_REF > out'`
  writes the branch name and the run ends completed.
- `kill -9` of an executor mid-run: its command and the command's children die with it (the
  guard), and once its lease expires another executor takes the run
  (attempt 2) and completes it.
- SIGSTOP of an executor mid-run: the command's guard stops the command before the lease the
  executor last renewed can expire.
- SIGTERM: a stopping executor releases a run it could not finish in its grace period.
- SIGHUP: the executor re-reads its config file (as serve and dispatch do) instead of dying
  with its runs' leases.
- Its pipeline deleted: the executor says so and exits 1.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.storage import pipelines, runs
from gateway.storage.database import Database, Record
from tests.acceptance.process_helpers import process_alive, until_gone
from tests.integration.ingest_helpers import PR_OPENED, SEED_VARIABLES, github_headers, hook_path
from tests.integration.management_helpers import make_environment, make_pipeline, make_seed_hook
from tests.integration.runs_helpers import enqueue, run_row
from tests.integration.runs_helpers import make_pipeline as make_runs_pipeline

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0


class ExecutorProcess:
    """A `gateway executor` subprocess; its stderr (JSON log lines) goes to a file."""

    def __init__(
        self,
        dsn: str,
        cwd: Path,
        pipeline_id: int,
        *command: str,
        args: Any = (),
        log_level: str | None = "info",  # None: as the config file in ``cwd`` says
        output: int | None = None,  # stdout and stderr (a file descriptor) instead of a file
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "HOOK_"))}
        env.update(GATEWAY_DATABASE_DSN=dsn, GATEWAY_LOG_FORMAT="json")
        if log_level is not None:
            env["GATEWAY_LOG_LEVEL"] = log_level
        self.log_path = cwd / f"executor-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "executor",
                "--pipeline",
                str(pipeline_id),
                "--poll-interval",
                "0.5",
                *args,
                "--",
                *command,
            ],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=self._log if output is None else output,
            stderr=subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"event": "unparsed", "line": line})
        return events

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def executors() -> Iterator[list[ExecutorProcess]]:
    started: list[ExecutorProcess] = []
    yield started
    for executor in started:
        executor.close()


async def wait_for_run(db: Database, run_id: Any, status: str, what: str = "") -> Record:
    """The run once it has ``status`` (polled; fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while True:
        row = await db.pool.fetchrow("SELECT * FROM pipeline_runs WHERE id = $1", run_id)
        if row is not None and row["status"] == status:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"run never became {status} {what}; last: {dict(row or {})}")
        await asyncio.sleep(0.1)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_file(path: Path) -> str:
    """The file's text once it is not empty (polled; fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while not (text := await asyncio.to_thread(_read, path)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        await asyncio.sleep(0.05)
    return text


async def test_seed_deploy_example_end_to_end(
    client: Any,
    db: Database,
    database_dsn: str,
    admin_headers: dict[str, str],
    tmp_path: Path,
    executors: list[ExecutorProcess],
) -> None:
    env = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, env["id"])
    hook = await make_seed_hook(client, admin_headers, pipeline["id"])
    response = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert response.status == 202, await response.text()
    run_id = uuid.UUID((await response.json())["run_id"])

    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", "echo $HOOK_VAR_SOURCE_REF > out"
    )
    executors.append(executor)
    run = await wait_for_run(db, run_id, "completed")

    assert (tmp_path / "out").read_text() == "changes\n"
    assert run["variables"] == SEED_VARIABLES
    assert run["exit_code"] == 0
    assert run["attempt"] == 1
    assert executor.stop() == 0
    [finished] = [e for e in executor.events() if e["event"] == "run_finished"]
    assert finished["run_id"] == str(run_id)
    assert finished["status"] == "completed"
    assert isinstance(finished["duration_ms"], float)


async def test_every_variable_reaches_the_command_environment(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(
        db,
        pipeline["id"],
        source_ref="main",
        pull_request_id=42,
        draft=False,
        labels=["a", "b"],
        note=None,
    )
    script = 'env | grep ^HOOK_ | sort > env.txt; echo "to stdout"; echo "to stderr" >&2; exit 3'
    executors.append(ExecutorProcess(database_dsn, tmp_path, pipeline["id"], "sh", "-c", script))

    row = await wait_for_run(db, run["id"], "failed")

    assert (tmp_path / "env.txt").read_text().splitlines() == [
        "HOOK_ATTEMPT=1",
        "HOOK_PIPELINE_ID=" + str(pipeline["id"]),
        f"HOOK_RUN_ID={run['id']}",
        "HOOK_VAR_DRAFT=false",
        'HOOK_VAR_LABELS=["a","b"]',
        "HOOK_VAR_NOTE=",
        "HOOK_VAR_PULL_REQUEST_ID=42",
        "HOOK_VAR_SOURCE_REF=main",
    ]
    assert row["exit_code"] == 3
    assert row["message"] == "command failed: exit code 3"
    assert row["output"] == "to stdout\nto stderr\n"


async def test_killed_executor_run_is_taken_over_after_its_lease_expires(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    # Attempt 1 records its process group and sleeps; any later attempt finishes at once.
    script = (
        'if [ "$HOOK_ATTEMPT" = 1 ]; then echo $$ > first.pid; sleep 60; fi; '
        'echo "done on attempt $HOOK_ATTEMPT" > out'
    )
    first = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", script, args=("--lease-seconds", "5")
    )
    executors.append(first)
    await wait_for_file(tmp_path / "first.pid")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert (await wait_for_run(db, run["id"], "in-progress"))["attempt"] == 1

    second = ExecutorProcess(database_dsn, tmp_path, pipeline["id"], "sh", "-c", script)
    executors.append(second)
    row = await wait_for_run(db, run["id"], "completed", "after the lease expired")

    assert row["attempt"] == 2
    assert (tmp_path / "out").read_text() == "done on attempt 2\n"
    assert row["claimed_by"] != "" and row["finished_at"] is not None
    assert second.stop() == 0


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["sigterm", "sigkill"])
async def test_a_killed_executors_command_and_its_children_die_with_it(
    db: Database,
    database_dsn: str,
    tmp_path: Path,
    executors: list[ExecutorProcess],
    ignores_sigterm: bool,
) -> None:
    """kill -9 of the executor: its quiet command (it writes nothing, so no SIGPIPE can end
    it) and the command's background child are stopped by the command's guard, with SIGKILL
    5 s after SIGTERM (a sixth of the lease) when they ignore SIGTERM; long before the 30 s
    lease could expire and another executor start the run again."""
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    trap = "trap '' TERM; " if ignores_sigterm else ""
    script = trap + "sleep 60 & echo $! > child.pid; echo $$ > command.pid; wait"
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", script, args=("--lease-seconds", "30")
    )
    executors.append(executor)
    await wait_for_file(tmp_path / "command.pid")
    pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("command", "child")]
    assert all(process_alive(pid) for pid in pids)

    executor.process.send_signal(signal.SIGKILL)
    executor.process.wait(10)

    await until_gone(pids, within=20)  # two thirds of the lease: nobody else claimed it yet
    row = await run_row(db, run["id"])
    assert (row["status"], row["attempt"]) == ("in-progress", 1)  # left to its lease
    events = executor.events()
    [orphaned] = [e for e in events if e["event"] == "command_orphaned"]
    assert orphaned["run_id"] == str(run["id"]) and orphaned["pid"] == pids[0]
    assert (orphaned["level"], orphaned["kill_after"]) == ("warning", 5.0)
    killed = [e for e in events if e["event"] == "command_orphaned_killed"]
    assert len(killed) == ignores_sigterm


async def test_a_stopped_executors_command_is_stopped_before_its_lease_can_expire(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    """SIGSTOP of the executor (or a hang): its socket stays open, but the lease is no longer
    renewed. The command's guard stops the command's group on its own, before the lease can
    expire and another executor start the run again."""
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    script = "sleep 60 & echo $! > child.pid; echo $$ > command.pid; wait"
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", script, args=("--lease-seconds", "6")
    )
    executors.append(executor)
    await wait_for_file(tmp_path / "command.pid")
    pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("command", "child")]
    executor.process.send_signal(signal.SIGSTOP)
    try:
        await until_gone(pids, within=10)
        # Gone while the lease the stopped executor last renewed still holds: nobody else
        # can have claimed the run yet.
        held = await db.pool.fetchval(
            "SELECT lease_expires_at > statement_timestamp() FROM pipeline_runs WHERE id = $1",
            run["id"],
        )
        assert held is True
    finally:
        executor.process.send_signal(signal.SIGCONT)
    [unattended] = [e for e in executor.events() if e["event"] == "command_unattended"]
    assert unattended["run_id"] == str(run["id"]) and unattended["pid"] == pids[0]
    assert not [e for e in executor.events() if e["event"] == "command_orphaned"]


async def test_sigterm_releases_a_run_that_outlives_the_grace_period(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    executor = ExecutorProcess(
        database_dsn,
        tmp_path,
        pipeline["id"],
        "sh",
        "-c",
        "echo $$ > started; sleep 60",
        args=("--grace-seconds", "0.5"),
    )
    executors.append(executor)
    await wait_for_file(tmp_path / "started")

    assert executor.stop() == 0

    row = await wait_for_run(db, run["id"], "queued")
    assert row["attempt"] == 0  # released: the interrupted attempt is not counted
    assert row["lease_token"] is None
    assert "released" in row["message"]
    events = [e["event"] for e in executor.events()]
    assert "executor_draining" in events and "executor_stopped" in events


async def test_two_executors_racing_on_1000_runs_run_each_exactly_once(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    async with db.transaction() as session:
        await runs.enqueue_many(session, pipeline["id"], [{"n": i} for i in range(1000)])
    command = ("sh", "-c", 'echo "$HOOK_RUN_ID $HOOK_ATTEMPT" >> ran.txt')
    for _ in range(2):
        executors.append(
            ExecutorProcess(
                database_dsn, tmp_path, pipeline["id"], *command, args=("--concurrency", "4")
            )
        )

    deadline = time.monotonic() + 110
    while await db.pool.fetchval("SELECT count(*) FROM pipeline_runs WHERE status <> 'completed'"):
        assert time.monotonic() < deadline, "the executors did not finish 1000 runs"
        await asyncio.sleep(0.2)
    assert [e.stop() for e in executors] == [0, 0]

    lines = (tmp_path / "ran.txt").read_text().splitlines()
    ran = collections.Counter(line.split()[0] for line in lines)
    assert len(lines) == 1000
    assert len(ran) == 1000 and set(ran.values()) == {1}
    assert {line.split()[1] for line in lines} == {"1"}
    ids = {str(r["id"]) for r in await db.pool.fetch("SELECT id FROM pipeline_runs")}
    assert set(ran) == ids
    per_executor = [
        sum(e["event"] == "run_finished" for e in executor.events()) for executor in executors
    ]
    assert sum(per_executor) == 1000
    assert min(per_executor) > 0  # both took part in the race


async def test_cancel_in_progress_terminates_the_superseded_command(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db, policy="cancel-in-progress", key="source_ref")
    older = await enqueue(db, pipeline["id"], source_ref="main", n=1)
    script = (
        'echo $$ > "started-$HOOK_VAR_N"; if [ "$HOOK_VAR_N" = 1 ]; then sleep 60; fi; '
        'echo ok > "done-$HOOK_VAR_N"'
    )
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", script, args=("--lease-seconds", "5")
    )
    executors.append(executor)
    await wait_for_file(tmp_path / "started-1")

    newer = await enqueue(db, pipeline["id"], source_ref="main", n=2)

    await wait_for_run(db, newer["id"], "completed")
    row = await wait_for_run(db, older["id"], "cancelled")
    assert row["message"] == f"superseded by run {newer['id']}"
    assert not (tmp_path / "done-1").exists()  # its command was terminated, not finished
    assert executor.stop() == 0
    [lost] = [e for e in executor.events() if e["event"] == "run_lease_lost"]
    assert lost["run_id"] == str(older["id"])
    outcomes = {e["run_id"]: e["status"] for e in executor.events() if e["event"] == "run_finished"}
    assert outcomes == {str(older["id"]): "abandoned", str(newer["id"]): "completed"}


async def wait_for_event(executor: ExecutorProcess, name: str) -> dict[str, Any]:
    """The executor's first log event called ``name`` (polled; fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while True:
        found = [e for e in await asyncio.to_thread(executor.events) if e["event"] == name]
        if found:
            return found[0]
        assert executor.process.poll() is None, f"executor exited: {executor.events()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} event; got {executor.events()}")
        await asyncio.sleep(0.05)


async def test_heartbeats_keep_a_run_longer_than_its_lease_from_a_second_executor(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    # Each start of the command appends a line; the command outlives the 5 s lease (the
    # shortest allowed) by more than half again.
    script = 'echo "$HOOK_RUN_ID $HOOK_ATTEMPT" >> ran.txt; sleep 8; echo done'
    pair = [
        ExecutorProcess(
            database_dsn,
            tmp_path,
            pipeline["id"],
            "sh",
            "-c",
            script,
            args=("--lease-seconds", "5"),
        )
        for _ in range(2)
    ]
    executors.extend(pair)
    for executor in pair:  # both are claiming before the run exists
        await wait_for_event(executor, "executor_started")
    run = await enqueue(db, pipeline["id"], source_ref="main")

    claimed = await wait_for_run(db, run["id"], "in-progress")
    first_expiry = claimed["lease_expires_at"]
    assert first_expiry - claimed["started_at"] <= timedelta(seconds=5.5)
    latest, deadline = first_expiry, time.monotonic() + WAIT
    while (row := await run_row(db, run["id"]))["status"] == "in-progress":
        assert row["attempt"] == 1 and row["lease_token"] == claimed["lease_token"]
        latest = max(latest, row["lease_expires_at"])
        assert time.monotonic() < deadline, "the run never finished"
        await asyncio.sleep(0.1)
    assert row["status"] == "completed", dict(row)

    # The lease was renewed while the command ran: it ended well past the first expiry.
    assert latest - first_expiry >= timedelta(seconds=2)
    assert row["attempt"] == 1 and row["exit_code"] == 0 and row["output"] == "done\n"
    assert row["message"] == "" and row["lease_expires_at"] is None
    assert (tmp_path / "ran.txt").read_text() == f"{run['id']} 1\n"  # started exactly once
    assert all(executor.process.poll() is None for executor in pair)  # both ran throughout
    assert [executor.stop() for executor in pair] == [0, 0]
    started = [[e for e in x.events() if e["event"] == "run_started"] for x in pair]
    assert sorted(len(s) for s in started) == [0, 1]
    for executor in pair:
        events = {e["event"] for e in executor.events()}
        assert not events & {"run_lease_lost", "heartbeat_failed", "run_report_refused"}


async def test_sigterm_lets_a_short_run_finish_within_the_grace_period(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", "echo $$ > started; sleep 1; echo done"
    )  # default grace period: 30 s
    executors.append(executor)
    await wait_for_file(tmp_path / "started")

    assert executor.stop() == 0

    row = await run_row(db, run["id"])
    assert row["status"] == "completed"
    assert row["attempt"] == 1 and row["exit_code"] == 0 and row["output"] == "done\n"
    events = executor.events()
    names = [e["event"] for e in events]
    assert names.index("executor_draining") < names.index("run_finished")
    assert names.index("run_finished") < names.index("executor_stopped")
    [draining] = [e for e in events if e["event"] == "executor_draining"]
    assert (draining["running"], draining["grace_seconds"]) == (1, 30.0)
    [finished] = [e for e in events if e["event"] == "run_finished"]
    assert (finished["status"], finished["exit_code"]) == ("completed", 0)


async def test_sighup_reloads_the_config_and_the_executor_goes_on_running(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    """SIGHUP (a closed terminal, the `systemctl reload` that serve takes) had its default
    action: the executor died mid-run, its command with it, and the run waited for its lease.
    It now re-reads the config file: [log] applies at once, [database] at the next start, and
    the running command and later runs go on."""
    config = tmp_path / "config.toml"
    config.write_text('[log]\nlevel = "info"\n')
    pipeline = await make_runs_pipeline(db)
    first = await enqueue(db, pipeline["id"], n=1)
    script = 'echo "$HOOK_VAR_N" > "started-$HOOK_VAR_N"; while [ ! -e go ]; do sleep 0.05; done'
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", script, log_level=None
    )
    executors.append(executor)
    await wait_for_file(tmp_path / "started-1")

    config.write_text(
        '[log]\nlevel = "debug"\n[database]\ncommand_timeout = 20.0\n[server]\nport = 9\n'
    )
    executor.process.send_signal(signal.SIGHUP)
    reloaded = await wait_for_event(executor, "config_reloaded")
    assert reloaded["applied"] == ["log.level"]
    restart = await wait_for_event(executor, "config_reload_needs_restart")
    assert restart["keys"] == ["database.command_timeout"]
    unused = await wait_for_event(executor, "config_reload_not_used")
    assert unused["keys"] == ["server.port"]

    (tmp_path / "go").write_text("")
    assert (await wait_for_run(db, first["id"], "completed"))["attempt"] == 1
    second = await enqueue(db, pipeline["id"], n=2)
    assert (await wait_for_run(db, second["id"], "completed"))["attempt"] == 1
    assert executor.stop() == 0


async def test_an_executor_whose_terminal_closed_goes_on_running(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    """Started from a terminal that then closes: SIGHUP, and every write to its stderr fails
    (EIO). Surviving the SIGHUP is not enough: each log call raised, so the executor claimed a
    run, died in its task at `run_started` and left the run in progress, and claimed the next
    one the same way. Its log lines are lost; its runs are done."""
    pipeline = await make_runs_pipeline(db)
    terminal, its_end = os.openpty()
    executor = ExecutorProcess(
        database_dsn, tmp_path, pipeline["id"], "sh", "-c", "echo done", output=its_end
    )
    executors.append(executor)
    os.close(its_end)
    seen = b""
    deadline = time.monotonic() + WAIT
    while b"executor_started" not in seen:
        assert time.monotonic() < deadline, seen
        seen += await asyncio.to_thread(os.read, terminal, 65536)
    os.close(terminal)  # the terminal goes away: its side of the pty reads EIO from now on
    executor.process.send_signal(signal.SIGHUP)

    for n in (1, 2):
        run = await enqueue(db, pipeline["id"], n=n)
        row = await wait_for_run(db, run["id"], "completed")
        assert (row["attempt"], row["output"]) == (1, "done\n")
    assert executor.stop() == 0


async def test_an_executor_whose_pipeline_is_deleted_exits_1_saying_so(
    db: Database, database_dsn: str, tmp_path: Path, executors: list[ExecutorProcess]
) -> None:
    # As for a pipeline missing at the start: exit status 1 and why (it used to poll the
    # deleted pipeline for ever, silently, a service manager showing it healthy).
    pipeline = await make_runs_pipeline(db)
    run = await enqueue(db, pipeline["id"])
    executor = ExecutorProcess(database_dsn, tmp_path, pipeline["id"], "true")
    executors.append(executor)
    await wait_for_run(db, run["id"], "completed")

    assert await pipelines.delete_pipeline(db, pipeline["id"])

    assert await asyncio.to_thread(executor.process.wait, WAIT) == 1
    events = executor.events()
    [deleted] = [e for e in events if e["event"] == "executor_pipeline_deleted"]
    assert (deleted["level"], deleted["pipeline_id"]) == ("error", pipeline["id"])
    assert {"event": "unparsed", "line": f"gateway: pipeline {pipeline['id']} was deleted"} in (
        events
    )
