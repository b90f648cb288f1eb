"""The `gateway` command as an operator runs it: check-config, serve's refusal, user, migrate."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from yarl import URL

from gateway import accounts
from gateway.config import AuthConfig
from gateway.exceptions import InvalidCredentials, InvalidToken
from gateway.storage.database import Database, dsn_target
from tests.acceptance.process_helpers import (
    ROOT,
    free_port,
    occupied_port,
    port_is_free,
    run_gateway,
    write_config,
)
from tests.conftest import TEST_SECRET_KEY, _drop_database, _dsn_with_database
from tests.integration.ingest_helpers import fetch
from tests.integration.pg_partition import CuttableProxy

# --- check-config -------------------------------------------------------------------------------


def test_version_names_the_release() -> None:
    result = run_gateway("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"gateway \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_check_config_accepts_the_shipped_file() -> None:
    result = run_gateway("check-config", str(ROOT / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{ROOT / 'config.toml'}: OK"


def test_check_config_defaults_to_config_toml_in_the_working_directory() -> None:
    result = run_gateway("check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config.toml: OK"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[server]\nprot = 8080\n", ["unknown key 'server.prot'", "port"]),
        ("[server]\nport = '8080'\n", ["server.port = '8080'", "must be an integer"]),
        ("[log]\nformat = 'xml'\n", ["log.format = 'xml'", "one of json, console"]),
        ("[server\nport = 1\n", ["not valid TOML"]),
    ],
)
def test_check_config_names_what_is_wrong(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run_gateway("check-config", str(path))
    assert result.returncode == 2
    assert f"invalid configuration in {path}" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert result.stdout == ""


def test_check_config_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    """Keys wrong on their own (in the file and an override) and checks across keys: all in
    one run, not a new round after each fix. A check that reads a refused key (the management
    host needs the management port) is skipped, not reported about a value never given."""
    path = tmp_path / "bad.toml"
    path.write_text(
        "[server]\nport = 'eighty'\nmanagement_port = 70000\nmanagement_host = '10.0.0.5'\n"
        "public_url = 'hooks.example.com'\n"
        "[database]\npool_min_size = 5\npool_max_size = 2\n"
        "[log]\nformat = 'xml'\n"
    )
    result = run_gateway("check-config", str(path), env={"GATEWAY_BATCH_MAX_SIZE": "lots"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gateway: invalid configuration in {path}:",
        "  - server.port = 'eighty' is invalid: must be an integer",
        "  - server.management_port = 70000 is invalid: must be between 0 and 65535",
        "  - GATEWAY_BATCH_MAX_SIZE = 'lots' is invalid: must be an integer",
        "  - log.format = 'xml' is invalid: must be one of json, console",
        "  - database.pool_min_size = 5 is invalid: must be <= database.pool_max_size (2)",
        "  - server.public_url = 'hooks.example.com' is invalid: must start with http:// or "
        "https://",
    ]


def test_gateway_config_variable_picks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chosen.toml"
    path.write_text("[server]\nworkers = 0\n")
    result = run_gateway("check-config", env={"GATEWAY_CONFIG": str(path)})
    assert result.returncode == 2
    assert str(path) in result.stderr and "server.workers = 0" in result.stderr


def test_check_config_without_a_file_says_so(tmp_path: Path) -> None:
    """Run from the wrong directory, it must not look as if a file had been checked."""
    result = run_gateway("check-config", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "no config file found (looked for config.toml): the built-in defaults and the "
        "GATEWAY_* overrides are valid"
    )


def test_bad_overrides_without_a_file_do_not_name_one(tmp_path: Path) -> None:
    """The problems come from the environment: the answer must not blame a file that is absent."""
    env = {"PYTHONPATH": str(ROOT), "GATEWAY_SERVER_PORT": "abc"}
    result = run_gateway("check-config", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gateway: invalid configuration (no config file found at config.toml; checked the "
        "GATEWAY_* overrides):",
        "  - GATEWAY_SERVER_PORT = 'abc' is invalid: must be an integer",
    ]


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["--config", "", "serve"], {}, "argument --config: an empty path: name the config file"),
        (["check-config", " "], {}, "argument path: an empty path: name the config file"),
        (
            ["serve"],
            {"GATEWAY_CONFIG": ""},
            "  - GATEWAY_CONFIG is set but empty: name the file, or unset it to use ./config.toml",
        ),
    ],
)
def test_an_empty_config_path_is_not_the_default_file(
    tmp_path: Path, args: list[str], env: dict[str, str], problem: str
) -> None:
    """`gateway --config "$CONFIG" serve` with CONFIG unset (or GATEWAY_CONFIG left empty) read
    ./config.toml when there was one, silently: another file than the one meant."""
    # The file a regression would read instead: it could not start a server either.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sections = {"server": {"port": free_port()}, "database": {"data_dir": str(blocker / "pg")}}
    write_config(tmp_path / "config.toml", sections)
    result = run_gateway(*args, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), **env}, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(problem)
    assert '"config_loaded"' not in result.stderr


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = run_gateway("--config", str(tmp_path / "absent.toml"), "check-config")
    assert result.returncode == 2
    assert "file not found" in result.stderr


# --- serve refuses a bad configuration before it starts anything --------------------------------


@pytest.mark.parametrize(
    ("server_section", "env", "fragment"),
    [
        ({"prot": 8081}, {}, "unknown key 'server.prot'"),
        ({"access_log": "yes"}, {}, "server.access_log = 'yes' is invalid: must be true or false"),
        ({}, {"GATEWAY_BATCH_MAX_SIZE": "lots"}, "GATEWAY_BATCH_MAX_SIZE = 'lots'"),
    ],
)
def test_serve_exits_before_binding_with_a_bad_config(
    tmp_path: Path, server_section: dict[str, object], env: dict[str, str], fragment: str
) -> None:
    port = free_port()
    data_dir = tmp_path / "pgdata"
    config = write_config(
        tmp_path / "config.toml",
        {"server": {"port": port, **server_section}, "database": {"data_dir": str(data_dir)}},
    )
    result = run_gateway("--config", str(config), "serve", env=env)
    assert result.returncode == 2
    assert fragment in result.stderr
    # Nothing was started: no listener, no embedded database, not even a log line.
    assert "listening" not in result.stderr and "embedded_postgres" not in result.stderr
    assert port_is_free(port)
    assert not data_dir.exists()


def test_serve_reports_a_port_in_use(tmp_path: Path, database_dsn: str) -> None:
    with occupied_port() as port:
        config = write_config(
            tmp_path / "config.toml",
            {"server": {"port": port}, "database": {"dsn": database_dsn}},
        )
        result = run_gateway("--config", str(config), "serve")
    assert result.returncode == 1
    assert f"gateway: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_an_address_of_no_interface_is_a_configuration_error(
    tmp_path: Path, database_dsn: str
) -> None:
    # Status 2, as with workers (test_worker_kill.py): no restart can mend it.
    config = write_config(
        tmp_path / "config.toml",
        {"server": {"host": "192.0.2.1"}, "database": {"dsn": database_dsn}},
    )
    result = run_gateway("--config", str(config), "serve")
    assert result.returncode == 2
    assert "gateway: cannot listen on 192.0.2.1:" in result.stderr
    assert "Traceback" not in result.stderr


# --- user create --------------------------------------------------------------------------------


def _dsn_config(tmp_path: Path, dsn: str) -> Path:
    return write_config(tmp_path / "config.toml", {"database": {"dsn": dsn}})


async def _can_log_in(db: Database, email: str, password: str) -> bool:
    try:
        await accounts.login(db, AuthConfig(), email, password)
    except InvalidCredentials:  # only a refused password: any other error fails the test
        return False
    return True


async def test_user_create_reads_the_password_from_a_variable(
    tmp_path: Path, database_dsn: str, db: Database
) -> None:
    password = "correct horse battery staple"
    result = run_gateway(
        "--config",
        str(_dsn_config(tmp_path, database_dsn)),
        "user",
        "create",
        "--email",
        "ops@example.com",
        "--admin",
        "--password-env",
        "OPS_PASSWORD",
        env={"OPS_PASSWORD": password},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created user ")
    assert "<ops@example.com> (admin)" in result.stdout
    assert password not in result.stdout + result.stderr
    row = await db.pool.fetchrow("SELECT is_admin, password_hash FROM users")
    assert row["is_admin"] is True and row["password_hash"].startswith("$argon2id$")
    assert await _can_log_in(db, "ops@example.com", password)


async def test_user_create_reads_the_password_from_stdin(
    tmp_path: Path, database_dsn: str, db: Database
) -> None:
    password = "typed into a pipe"
    config = str(_dsn_config(tmp_path, database_dsn))
    result = run_gateway(
        "--config", config, "user", "create", "--email", "dev@example.com", input=password + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert "(admin)" not in result.stdout
    assert await db.pool.fetchval("SELECT is_admin FROM users") is False
    assert await _can_log_in(db, "dev@example.com", password)
    assert not await _can_log_in(db, "dev@example.com", password + "\n")

    again = run_gateway(
        "--config", config, "user", "create", "--email", "DEV@example.com", input="whatever123\n"
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.parametrize(
    ("args", "env", "stdin", "code", "message"),
    [
        (["--email", "a@example.com"], {}, "short\n", 2, "password: must be at least 8"),
        # Longer than POST /users/login takes: the account could never log in.
        (
            ["--email", "a@example.com"],
            {},
            "x" * 1025 + "\n",
            2,
            "password: must be at most 1024 characters",
        ),
        (["--email", "not-an-email"], {}, "long enough\n", 2, "email: must be a valid email"),
        (
            ["--email", "a@example.com", "--password-env", "UNSET_VAR"],
            {},
            None,
            1,
            "environment variable UNSET_VAR is not set",
        ),
    ],
)
def test_user_create_rejects_bad_input(
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    stdin: str | None,
    code: int,
    message: str,
) -> None:
    # Before any database is asked: this one cannot be reached (nothing listens there).
    config = str(_dsn_config(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    result = run_gateway("--config", config, "user", "create", *args, env=env, input=stdin)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_user_set_password_refuses_a_short_password_before_any_database(tmp_path: Path) -> None:
    config = str(_dsn_config(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    result = run_gateway(
        "--config", config, "user", "set-password", "--email", "a@example.com", input="short\n"
    )
    assert result.returncode == 2, result.stderr
    assert "password: must be at least 8" in result.stderr
    longest = run_gateway(
        "--config", config, "user", "set-password", "--email", "a@example.com", input="x" * 1025
    )
    assert longest.returncode == 2, longest.stderr
    assert "password: must be at most 1024 characters" in longest.stderr


async def test_user_set_password_recovers_an_account_and_ends_its_sessions(
    tmp_path: Path, database_dsn: str, db: Database
) -> None:
    await accounts.create_user(db, AuthConfig(), "ops@example.com", "forgotten passphrase")
    pair = await accounts.login(db, AuthConfig(), "ops@example.com", "forgotten passphrase")
    config = str(_dsn_config(tmp_path, database_dsn))
    new_password = "a brand new passphrase"
    result = run_gateway(
        "--config",
        config,
        "user",
        "set-password",
        "--email",
        "OPS@example.com",
        "--password-env",
        "NEW_PASSWORD",
        env={"NEW_PASSWORD": new_password},
    )
    assert result.returncode == 0, result.stderr
    assert "password set for user" in result.stdout and "2 session token(s) ended" in result.stdout
    assert new_password not in result.stdout + result.stderr
    assert await _can_log_in(db, "ops@example.com", new_password)
    assert not await _can_log_in(db, "ops@example.com", "forgotten passphrase")
    with pytest.raises(InvalidToken):
        await accounts.authenticate_bearer(db, pair.access_token)

    unknown = run_gateway(
        "--config",
        config,
        "user",
        "set-password",
        "--email",
        "x@example.com",
        input="long enough\n",
    )
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "gateway: no user with email 'x@example.com'",
    )
    short = run_gateway(
        "--config", config, "user", "set-password", "--email", "ops@example.com", input="short\n"
    )
    assert short.returncode == 2 and "password: must be at least 8" in short.stderr
    assert await _can_log_in(db, "ops@example.com", new_password)


# --- migrate ------------------------------------------------------------------------------------


@pytest.fixture
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    """DSN of a database without the schema."""
    name = f"hookgate_empty_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _dsn_with_database(server_dsn, name)
    await _drop_database(server_dsn, name)


async def test_migrate_creates_the_schema_and_is_idempotent(
    tmp_path: Path, empty_database: str
) -> None:
    config = str(_dsn_config(tmp_path, empty_database))
    first = run_gateway("--config", config, "migrate")
    assert first.returncode == 0, first.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
        assert version >= 1
        assert first.stdout.strip() == f"schema applied: version {version}"
        assert f'"event": "schema_applied", "version": {version}' in first.stderr
        await conn.execute("INSERT INTO users (email, password_hash) VALUES ('k@example.com', 'x')")
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")

        second = run_gateway("--config", config, "migrate")
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == f"schema applied: version {version}"
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
        assert tables == await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await conn.close()


async def test_migrate_refuses_a_database_a_newer_release_migrated(
    tmp_path: Path, database_dsn: str
) -> None:
    """A rolled-back release's migrate would put older functions back: refused, nothing run."""
    conn = await asyncpg.connect(database_dsn)
    try:
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version + 1)
        digests = await conn.fetch("SELECT * FROM schema_digest ORDER BY sha256")
        config = str(_dsn_config(tmp_path, database_dsn))
        result = run_gateway("--config", config, "migrate", "--timeout", "0")
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"gateway: cannot apply schema.sql: the database's schema is at version "
            f"{version + 1}, newer than this release's {version}; applying this file would put "
            "older functions back. Nothing was applied: run the newer release's `gateway "
            "migrate` (instances of this release run on the newer schema without it)"
        )
        assert await conn.fetch("SELECT * FROM schema_digest ORDER BY sha256") == digests
    finally:
        await conn.close()
    wrong = run_gateway("--config", config, "migrate", "--timeout", "soon")
    assert wrong.returncode == 2
    assert "not a number of seconds (0 to 2147483, 0: no limit): 'soon'" in wrong.stderr
    # More than the server's statement_timeout takes: a usage error, not the server's refusal
    # after connecting (exit 1, "Value exceeds integer range").
    too_long = run_gateway("--config", config, "migrate", "--timeout", "2147484")
    assert too_long.returncode == 2, too_long.stderr
    assert "not a number of seconds (0 to 2147483, 0: no limit): '2147484'" in too_long.stderr


@pytest.mark.parametrize(
    "command", [["keys", "status"], ["keys", "rotate"], ["prune", "--older-than", "30d"]]
)
async def test_commands_refuse_a_database_an_older_release_migrated(
    tmp_path: Path, database_dsn: str, command: list[str]
) -> None:
    """A new release's maintenance command run before its `gateway migrate` (the upgrade's
    step 3 forgotten): a database at the previous schema version lacks what its queries read.
    They accepted any version from 5 on, and `keys status` and `keys rotate` then failed with
    a traceback (column "previous_secret" does not exist, schema version 7)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
        # The database as the release before this one left it: its last section undone.
        await conn.execute("DELETE FROM schema_version WHERE version = $1", version)
        await conn.execute(
            "ALTER TABLE outgoing_hooks DROP COLUMN previous_secret, "
            "DROP COLUMN previous_secret_expires_at"
        )
    finally:
        await conn.close()
    config = write_config(
        tmp_path / "config.toml",
        {"database": {"dsn": database_dsn}, "security": {"secret_keys": [TEST_SECRET_KEY]}},
    )
    result = run_gateway("--config", str(config), *command, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"gateway: the database schema is at version {version - 1}, older than this release's "
        f"{version}: run this release's `gateway migrate` (or start its `gateway serve`) first"
    )


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = write_config(
        tmp_path / "config.toml",
        {"database": {"dsn": f"postgresql://app:s3cret@127.0.0.1:{port}/app"}},
    )
    result = run_gateway("--config", str(config), "migrate")
    assert result.returncode == 1
    # What failed, in the OS's words (uvloop's or asyncio's), and where: one line.
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("gateway: database unavailable: ConnectionRefusedError: ")
    assert line.endswith(f"(connecting to 127.0.0.1:{port}/app)")
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_migrate_reports_what_the_server_said(tmp_path: Path, server_dsn: str) -> None:
    name = f"hookgate_absent_{uuid.uuid4().hex[:10]}"
    config = _dsn_config(tmp_path, _dsn_with_database(server_dsn, name))
    result = run_gateway("--config", str(config), "migrate")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'gateway: database unavailable: InvalidCatalogNameError: database "{name}" does not '
        f"exist (connecting to {dsn_target(_dsn_with_database(server_dsn, name))})"
    )


async def test_a_role_that_may_not_create_tables_gets_one_line_not_a_traceback(
    tmp_path: Path, empty_database: str
) -> None:
    role = f"hookgate_reader_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(empty_database)
    try:
        await owner.execute(f'CREATE ROLE "{role}" LOGIN')
        # PostgreSQL 15's default for roles that do not own the database, on any version.
        await owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        dsn = str(URL(empty_database).with_user(role))
        result = run_gateway("--config", str(_dsn_config(tmp_path, dsn)), "migrate")
    finally:
        await owner.execute(f'DROP ROLE IF EXISTS "{role}"')  # it owns nothing
        await owner.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "gateway: cannot apply schema.sql: permission denied for schema public: run `gateway "
        "migrate` as a role that may create and alter the tables (the owner of the database "
        "and of its tables), then start the gateway again"
    )


@pytest.mark.parametrize(
    "parameter",
    [
        "statement_timeot=5",  # 42704: a setting the server does not know
        "lock_timeout=abc",  # 22023: a value it refuses
    ],
)
def test_migrate_reports_a_dsn_parameter_the_server_refuses(
    tmp_path: Path, database_dsn: str, parameter: str
) -> None:
    # Parameters asyncpg does not know reach the server as settings; a misspelt one, or a bad
    # value, is refused at connect time: one line naming it, not a traceback, not an outage.
    dsn = database_dsn + ("&" if "?" in database_dsn else "?") + parameter
    config = write_config(tmp_path / "config.toml", {"database": {"dsn": dsn}})
    result = run_gateway("--config", str(config), "migrate")
    assert result.returncode == 2, result.stderr  # a configuration error: restarting won't help
    assert result.stderr.startswith("gateway: the database refused the connection: ")
    assert f'"{parameter.partition("=")[0]}"' in result.stderr  # the server names the setting
    assert "Traceback" not in result.stderr


async def test_migrate_refuses_a_server_older_than_postgresql_14(
    tmp_path: Path, database_dsn: str
) -> None:
    # schema.sql needs PostgreSQL 14 (CREATE OR REPLACE TRIGGER): an older server failed
    # halfway through the schema with a syntax error. A proxy makes this server announce 13.
    [row] = await fetch(database_dsn, "SELECT current_setting('server_version') AS v")
    version = row["v"]
    proxy = CuttableProxy(database_dsn)
    dsn = await proxy.start()
    proxy.rewrite_replies(b"server_version\x00" + version[:2].encode(), b"server_version\x0013")
    try:
        result = await asyncio.to_thread(
            run_gateway, "--config", str(_dsn_config(tmp_path, dsn)), "migrate"
        )
    finally:
        await proxy.close()
    assert result.returncode == 2, result.stderr  # a configuration error: restarting won't help
    assert result.stderr.strip() == (
        "gateway: PostgreSQL 14 or newer is required; the server runs PostgreSQL 13 "
        f"(connecting to {dsn_target(dsn)})"
    )


async def test_a_role_without_connect_privilege_gets_one_line_and_the_outage_status(
    tmp_path: Path, empty_database: str
) -> None:
    # A grant on the server, not a DSN written wrong: exit 1 like any refusal an operator fixes
    # on the server side, with the server's words (message and detail) on one line.
    role = f"hookgate_noconnect_{uuid.uuid4().hex[:8]}"
    name = URL(empty_database).path.lstrip("/")
    owner = await asyncpg.connect(empty_database)
    try:
        await owner.execute(f'CREATE ROLE "{role}" LOGIN')
        await owner.execute(f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC')
        dsn = str(URL(empty_database).with_user(role))
        result = run_gateway("--config", str(_dsn_config(tmp_path, dsn)), "migrate")
    finally:
        await owner.execute(f'DROP ROLE IF EXISTS "{role}"')
        await owner.close()
    assert result.returncode == 1, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("gateway: ")]
    assert line.startswith(
        f'gateway: the database refused the connection: permission denied for database "{name}"'
    )
    assert "CONNECT privilege" in line and "query parameters" not in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["migrate"], ["keys", "status"], ["keys", "rotate"]])
def test_a_missing_certificate_file_in_the_dsn_is_a_configuration_error(
    tmp_path: Path, database_dsn: str, command: list[str]
) -> None:
    # The driver reads sslrootcert before it connects and reported a bare "[Errno 2] No such
    # file or directory", which the gateway called an outage (exit 1, retried for ever).
    # `gateway keys` words its own errors: it said 1 for this configuration error.
    missing = tmp_path / "certs" / "root.crt"
    dsn = (
        database_dsn
        + ("&" if "?" in database_dsn else "?")
        + (f"sslmode=verify-full&sslrootcert={missing}")
    )
    config = write_config(
        tmp_path / "config.toml",
        {"database": {"dsn": dsn}, "security": {"secret_keys": [TEST_SECRET_KEY]}},
    )
    result = run_gateway("--config", str(config), *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith(
        f"gateway: database.dsn parameter 'sslrootcert' names '{missing}': no such file or "
        f"directory (connecting to {dsn_target(database_dsn)})"
    )


def test_check_config_refuses_a_missing_certificate_file_as_serve_does(tmp_path: Path) -> None:
    """check-config said OK to a DSN whose sslrootcert is missing, which serve then refused
    with status 2: the check meant to run before a deployment passed what would not start."""
    missing = tmp_path / "certs" / "root.crt"
    dsn = (
        f"postgresql://app:hunter2@db.internal:5432/hooks?sslmode=verify-full&sslrootcert={missing}"
    )
    problem = f"database.dsn parameter 'sslrootcert' names '{missing}': no such file or directory"
    valid = write_config(tmp_path / "valid.toml", {"database": {"dsn": dsn}})
    result = run_gateway("check-config", str(valid), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [f"gateway: {problem}"]
    # Beside another problem, in the same list.
    invalid = write_config(
        tmp_path / "bad.toml", {"database": {"dsn": dsn}, "log": {"format": "xml"}}
    )
    result = run_gateway("check-config", str(invalid), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"gateway: invalid configuration in {invalid}:",
        "  - log.format = 'xml' is invalid: must be one of json, console",
        f"  - {problem}",
    ]
    assert "hunter2" not in result.stderr


def _refused_data_dir(tmp_path: Path, data_dir: Path, command: list[str]) -> str:
    """Run ``command`` with ``data_dir`` as [database] data_dir; the last line of its stderr,
    once it is known to be a configuration error's (status 2) without a traceback."""
    config = write_config(
        tmp_path / "config.toml",
        {"server": {"port": free_port()}, "database": {"data_dir": str(data_dir)}},
    )
    result = run_gateway("--config", str(config), *command, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("under_a_file", [False, True], ids=["a-file", "under-a-file"])
@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["check-config"]])
def test_a_data_dir_that_cannot_be_a_directory_is_a_configuration_error(
    tmp_path: Path, command: list[str], under_a_file: bool
) -> None:
    """[database] data_dir naming a file, or a path under one: serve and migrate died with a
    FileExistsError traceback (a parent that is a file) or, after initdb failed, pointed at a
    server log that cannot exist, both with the status of an outage (1, restarted for ever);
    check-config said OK."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    data_dir = blocker / "pgdata" if under_a_file else blocker
    problem = f"cannot be created: {blocker} is a file" if under_a_file else "is not a directory"
    assert _refused_data_dir(tmp_path, data_dir, command) == (
        f"gateway: database.data_dir '{data_dir}' {problem}"
    )
    assert not (tmp_path / "var").exists()  # no key file was made for a start that fails


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["check-config"]])
def test_a_data_dir_holding_other_files_is_refused_before_anything_in_it_changes(
    tmp_path: Path, command: list[str]
) -> None:
    """A non-empty directory that is no PostgreSQL data directory (a data_dir naming the wrong
    directory): initdb refuses it, but run as root the wheel had first made its server user the
    directory's owner; the operator got `did not start (CalledProcessError: ...initdb...)`, a
    log initdb never writes and the status of an outage. Now it is refused first, by
    check-config too, with the directory, its files and its owner as they were."""
    data_dir = tmp_path / "not-postgres"
    data_dir.mkdir(mode=0o755)
    (data_dir / "notes.txt").write_text("someone else's file\n")
    before = data_dir.stat()
    assert _refused_data_dir(tmp_path, data_dir, command) == (
        f"gateway: database.data_dir '{data_dir}' holds other files and no PostgreSQL data "
        "(no PG_VERSION): name an empty or new directory (a mount point's lost+found counts: "
        "use a directory under it); nothing in it was changed"
    )
    after = data_dir.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )
    assert [entry.name for entry in data_dir.iterdir()] == ["notes.txt"]
    assert (data_dir / "notes.txt").read_text() == "someone else's file\n"


# --- the load-balancer instance configuration fails closed ----------------------------------


def _instance_env(tmp_path: Path, **extra: str | None) -> dict[str, str | None]:
    """Free ports, and a data directory that cannot be created: a regression that started the
    instance anyway fails at once instead of serving (or leaving an embedded server behind)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return {
        "GATEWAY_SERVER_PORT": str(free_port()),
        "GATEWAY_SERVER_MANAGEMENT_PORT": str(free_port()),
        "GATEWAY_DATABASE_DATA_DIR": str(blocker / "pgdata"),
        **extra,
    }


def test_an_instance_without_its_dsn_refuses_to_start(tmp_path: Path) -> None:
    instance = ROOT / "deploy" / "config.instance.toml"
    result = run_gateway(
        "--config", str(instance), "serve", cwd=tmp_path, env=_instance_env(tmp_path), timeout=30
    )
    assert result.returncode == 2
    assert "database.dsn is empty and database.embedded = false" in result.stderr
    assert not (tmp_path / "var").exists()  # no key file either


def test_an_instance_without_its_keys_refuses_to_start(tmp_path: Path, database_dsn: str) -> None:
    instance = ROOT / "deploy" / "config.instance.toml"
    result = run_gateway(
        "--config",
        str(instance),
        "serve",
        cwd=tmp_path,
        env=_instance_env(
            tmp_path,
            GATEWAY_DATABASE_DSN=database_dsn,
            GATEWAY_SECURITY_SECRET_KEYS=None,  # the variable forgotten
        ),
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith(
        "gateway: security.key_file 'var/secret-keys' does not exist and "
        "security.create_key_file = false: set security.secret_keys "
        "(GATEWAY_SECURITY_SECRET_KEYS) or put the shared key file there"
    )
    assert not (tmp_path / "var" / "secret-keys").exists()
    # Refused before it touched the shared database (applying the schema takes locks).
    assert '"schema_applied"' not in result.stderr and '"schema_current"' not in result.stderr


def test_check_config_refuses_an_instance_file_without_its_keys(
    tmp_path: Path, database_dsn: str
) -> None:
    instance = ROOT / "deploy" / "config.instance.toml"
    result = run_gateway(
        "check-config",
        str(instance),
        cwd=tmp_path,
        env=_instance_env(
            tmp_path, GATEWAY_DATABASE_DSN=database_dsn, GATEWAY_SECURITY_SECRET_KEYS=None
        ),
        timeout=30,
    )
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (
        "gateway: security.key_file 'var/secret-keys' does not exist and "
        "security.create_key_file = false: set security.secret_keys "
        "(GATEWAY_SECURITY_SECRET_KEYS) or put the shared key file there"
    )
    assert not (tmp_path / "var").exists()


def test_check_config_reports_the_missing_keys_with_the_other_problems(tmp_path: Path) -> None:
    """An instance file with neither its DSN nor its keys: both in one run (the key file used
    to be looked at only once everything else was valid)."""
    instance = ROOT / "deploy" / "config.instance.toml"
    result = run_gateway(
        "check-config",
        str(instance),
        cwd=tmp_path,
        env=_instance_env(tmp_path, GATEWAY_SECURITY_SECRET_KEYS=None),
        timeout=30,
    )
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"gateway: invalid configuration in {instance}:",
        "  - database.dsn is empty and database.embedded = false: set database.dsn "
        "(GATEWAY_DATABASE_DSN) to the database this gateway must use",
        "  - security.key_file 'var/secret-keys' does not exist and "
        "security.create_key_file = false: set security.secret_keys "
        "(GATEWAY_SECURITY_SECRET_KEYS) or put the shared key file there",
    ]
    assert not (tmp_path / "var").exists()


def test_check_config_names_a_bad_key_line_once(tmp_path: Path) -> None:
    """A [security] key that is wrong is named once: the key-file check, which would read it
    again, is left out."""
    path = tmp_path / "bad.toml"
    path.write_text("[security]\ncreate_key_file = false\n[log]\nformat = 'xml'\n")
    result = run_gateway(
        "check-config",
        str(path),
        cwd=tmp_path,
        env={"GATEWAY_SECURITY_SECRET_KEYS": "k1:not-base64"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gateway: invalid configuration in {path}:",
        "  - log.format = 'xml' is invalid: must be one of json, console",
        "  - security.secret_keys entry 1 is invalid: key 'k1': must decode to 32 bytes, got 7",
    ]
    assert not (tmp_path / "var").exists()


async def test_migrate_behind_a_long_transaction_says_whose_lock_it_waited_for(
    tmp_path: Path, database_dsn: str
) -> None:
    """A session left idle in a transaction that wrote to pipeline_runs holds off the lock the
    schema file takes first on the tables the gateway writes: migrate gave up at its statement
    timeout as "database unavailable"; it now names the lock's holder and logs the wait while it
    lasts. (A reader alone, such as pg_dump, no longer holds up a migrate that adds nothing.)"""
    config = write_config(
        tmp_path / "config.toml", {"database": {"dsn": database_dsn, "command_timeout": 3}}
    )
    holder = await asyncpg.connect(
        database_dsn, server_settings={"application_name": "nightly-report"}
    )
    try:
        async with holder.transaction():
            await holder.execute("UPDATE pipeline_runs SET message = message WHERE false")
            result = run_gateway("--config", str(config), "migrate")
            pid = holder.get_server_pid()
    finally:
        await holder.close()
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: cannot apply schema.sql: it waited "), result.stderr
    assert (
        f"for a lock held by pid {pid} (application_name 'nightly-report', "
        "state 'idle in transaction'" in last
    ), last
    assert "nothing was applied" in last and "then run `gateway migrate`" in last
    assert "database unavailable" not in result.stderr
    assert '"event": "lock_wait"' in result.stderr  # while it waited
    assert "SET message" not in result.stderr  # the holder's query text is never shown
