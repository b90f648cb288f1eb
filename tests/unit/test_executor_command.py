"""The executor's command environment and output tail (pure)."""

from __future__ import annotations

import uuid

from gateway.executor.command import CommandResult, OutputTail, command_env, env_name, env_value


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
