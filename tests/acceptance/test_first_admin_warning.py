"""`gateway serve` with only one of GATEWAY_ADMIN_EMAIL / GATEWAY_ADMIN_PASSWORD on a database
without users warns at start-up (`first_admin_incomplete`): otherwise it would serve with no
user at all and nothing saying why. Once a user exists the variables are ignored, silently."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.live_gateway import fresh_database
from tests.acceptance.process_helpers import GatewayProcess, free_port, write_config

EMAIL = "half@example.com"
PASSWORD = "only half of the bootstrap pair"


def _start_up_events(tmp_path: Path, dsn: str, env: dict[str, str]) -> GatewayProcess:
    """Start `gateway serve` until it listens, then stop it; the finished process."""
    config = write_config(tmp_path / "config.toml", {"server": {"port": free_port()}})
    gateway = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": dsn, **env})
    try:
        gateway.wait_event("listening")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.finish() == 0
    finally:
        gateway.kill()
    return gateway


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("GATEWAY_ADMIN_EMAIL", "GATEWAY_ADMIN_PASSWORD"),
        ("GATEWAY_ADMIN_PASSWORD", "GATEWAY_ADMIN_EMAIL"),
    ],
)
def test_half_of_the_admin_variables_on_an_empty_database_warns(
    server_dsn: str, template_database: str, tmp_path: Path, given: str, missing: str
) -> None:
    value = EMAIL if given == "GATEWAY_ADMIN_EMAIL" else PASSWORD
    with fresh_database(server_dsn, template_database) as dsn:
        gateway = _start_up_events(tmp_path, dsn, {given: value})
    [warning] = gateway.named("first_admin_incomplete")
    assert warning["level"] == "warning"
    assert (warning["set"], warning["missing"]) == (given, missing)
    assert "gateway user create" in warning["hint"]
    assert not gateway.named("first_admin_created")
    assert PASSWORD not in gateway.output


def test_no_warning_once_a_user_exists_or_without_the_variables(
    server_dsn: str, template_database: str, tmp_path: Path
) -> None:
    with fresh_database(server_dsn, template_database) as dsn:
        quiet = _start_up_events(tmp_path, dsn, {})  # no variable: the CLI creates the admin

        async def add_user() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "INSERT INTO users (email, password_hash) VALUES ('u@example.com', 'x')"
                )
            finally:
                await conn.close()

        asyncio.run(add_user())
        ignored = _start_up_events(tmp_path, dsn, {"GATEWAY_ADMIN_EMAIL": EMAIL})
    assert not quiet.named("first_admin_incomplete")
    assert not ignored.named("first_admin_incomplete")


@pytest.mark.parametrize(
    ("email", "password", "problem"),
    [
        (EMAIL, "short", "GATEWAY_ADMIN_PASSWORD: must be at least 8 characters"),
        ("not-an-email", PASSWORD, "GATEWAY_ADMIN_EMAIL: must be a valid email address"),
    ],
)
def test_a_first_admin_the_variables_cannot_make_names_the_variable(
    server_dsn: str, template_database: str, tmp_path: Path, email: str, password: str, problem: str
) -> None:
    """serve stopped with "gateway: password: must be at least 8 characters", exit 2: which
    password, among a DSN's, a key's and the users'? The variable is named (never its value)."""
    config = write_config(tmp_path / "config.toml", {"server": {"port": free_port()}})
    env = {"GATEWAY_ADMIN_EMAIL": email, "GATEWAY_ADMIN_PASSWORD": password}
    with fresh_database(server_dsn, template_database) as dsn:
        gateway = GatewayProcess(config, env={"GATEWAY_DATABASE_DSN": dsn, **env})
        try:
            assert gateway.finish() == 2
        finally:
            gateway.kill()
    assert gateway.output.strip().splitlines()[-1] == (
        f"gateway: {problem} (the first administrator, created while no user exists)"
    )
    assert "Traceback" not in gateway.output
