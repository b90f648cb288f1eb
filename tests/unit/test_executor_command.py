"""The executor's command environment and output tail (pure)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from gateway.executor.command import (
    CommandResult,
    OutputTail,
    command_env,
    env_name,
    env_value,
    too_large,
)
from tests.conftest import ROOT


def test_variable_names_become_environment_names() -> None:
    assert env_name("source_ref") == "HOOK_VAR_SOURCE_REF"
    assert env_name("pull-request.id") == "HOOK_VAR_PULL_REQUEST_ID"


def test_values_are_strings_as_is_and_json_otherwise() -> None:
    assert env_value("main") == "main"
    assert env_value("") == ""
    assert env_value(42) == "42"
    assert env_value(1.5) == "1.5"
    assert env_value(True) == "true"
    assert env_value(None) == ""
    assert env_value({"a": [1, "b"]}) == '{"a":[1,"b"]}'


def test_command_env_adds_run_values_and_drops_inherited_hook_and_gateway_values() -> None:
    run_id = uuid.uuid4()
    run = {"id": run_id, "pipeline_id": 7, "attempt": 2, "variables": {"source_ref": "main"}}
    base = {
        "PATH": "/bin",
        "HOOK_VAR_STALE": "x",
        "HOOK_RUN_ID": "old",
        # The executor's own credentials never reach a command a webhook started.
        "GATEWAY_DATABASE_DSN": "postgresql://app:s3cret@db/app",
        "GATEWAY_SECURITY_SECRET_KEYS": "k:AAAA",
        "GATEWAY_ADMIN_PASSWORD": "bootstrap",
        "PGPASSWORD": "s3cret",
        "PGPASSFILE": "/home/app/.pgpass",
    }

    assert command_env(base, run) == {
        "PATH": "/bin",
        "HOOK_VAR_SOURCE_REF": "main",
        "HOOK_RUN_ID": str(run_id),
        "HOOK_PIPELINE_ID": "7",
        "HOOK_ATTEMPT": "2",
    }


def test_output_tail_keeps_the_last_bytes() -> None:
    tail = OutputTail(limit=8)
    tail.add(b"0123456789")
    tail.add(b"ab")
    assert tail.text() == "[output truncated: first 4 bytes dropped]\n456789ab"
    small = OutputTail(limit=8)
    small.add(b"ok\xff")
    assert small.text() == "ok\ufffd"


def test_results_describe_signals() -> None:
    assert CommandResult(-9, "").description == "killed by SIGKILL"
    assert CommandResult(3, "").description == "exit code 3"


def test_the_executor_hides_its_environment_from_its_commands() -> None:
    # Non-dumpable: /proc/<pid>/environ (the DSN, the keys) is then root's alone, so a command
    # running as the executor's user cannot read it from its parent. Checked in a child
    # process: the flag would stick to this test process.
    probe = (
        "import ctypes; from gateway.executor.command import hide_environment; "
        "ok = hide_environment(); print(ok, ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["True", "0"]  # PR_GET_DUMPABLE: 0


def test_too_large_names_the_variables_over_the_limit_or_else_the_total() -> None:
    # "HOOK_VAR_A=" and 131,060 bytes: 131,071, the most one environment string may hold.
    at_limit = {"HOOK_VAR_A": "x" * 131_060, "PATH": "/bin"}
    over = {**at_limit, "HOOK_VAR_B": "secret" + "y" * 200_000, "HOOK_VAR_C": "z" * 140_000}
    assert too_large(["sh"], over) == (
        "HOOK_VAR_B (200017 bytes), HOOK_VAR_C (140011 bytes) longer than the 131071 bytes the "
        "system allows one environment variable"
    )
    many = {f"HOOK_VAR_{i}": "x" * 100_000 for i in range(30)}
    assert too_large(["sh", "-c", "true"], {**many, "PATH": "/bin"}) == (
        "the command's arguments and environment take 3000401 bytes (HOOK_VAR_* 3000380), "
        "more than the system allows"
    )
