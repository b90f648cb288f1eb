"""Configuration: defaults, the shipped config.toml, validation messages, environment overrides."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    Config,
    ConfigError,
    ServerConfig,
    build_config,
    load_config,
)
from gateway.security.secret_keys import ensure_key_file, new_key_line

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.toml"
SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]


def _section_class(name: str) -> Any:
    return type(getattr(Config(), name))


def _problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env or {})
    return caught.value.problems


def test_defaults_are_the_dataclass_defaults() -> None:
    config = build_config({}, {})
    for name in SECTIONS:
        assert getattr(config, name) == _section_class(name)(), name
    assert config.server.port == 8080 and config.database.dsn == ""
    assert config.database.data_dir == "var/pgdata"
    assert config.log.format == "json" and config.log.level == "info"


def test_config_objects_are_frozen() -> None:
    config = build_config({}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


def test_base_url_defaults_to_the_listener_and_prefers_public_url() -> None:
    assert ServerConfig().base_url == "http://127.0.0.1:8080"
    assert ServerConfig(public_url="https://hooks.example.com/").base_url == (
        "https://hooks.example.com"
    )


# --- the shipped config.toml stays in sync with config.py ------------------------------------


def test_shipped_config_has_exactly_the_sections_of_config_py() -> None:
    raw = tomllib.loads(SHIPPED.read_text())
    assert sorted(raw) == sorted(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_shipped_config_lists_every_key_of_the_section(section: str) -> None:
    raw = tomllib.loads(SHIPPED.read_text()).get(section, {})
    expected = {f.name for f in dataclasses.fields(_section_class(section))}
    missing, extra = expected - set(raw), set(raw) - expected
    assert not missing, f"config.toml [{section}] lacks {sorted(missing)} (defined in config.py)"
    assert not extra, f"config.toml [{section}] has {sorted(extra)}, unknown to config.py"


@pytest.mark.parametrize("section", SECTIONS)
def test_shipped_config_values_equal_the_defaults(section: str) -> None:
    config = load_config(SHIPPED, env={})
    assert getattr(config, section) == _section_class(section)()


def test_every_shipped_key_is_commented() -> None:
    # Each key (or group of adjacent keys) is preceded by at least one comment line.
    lines = SHIPPED.read_text().splitlines()
    uncommented = []
    for number, line in enumerate(lines):
        if not re.match(r"^[a-z_]+\s*=", line):
            continue
        above = number - 1
        while above >= 0 and re.match(r"^[a-z_]+\s*=", lines[above]):
            above -= 1
        if above < 0 or not lines[above].startswith("#"):
            uncommented.append(line)
    assert not uncommented


# --- validation: every problem names the key, the bad value and what is allowed --------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"server": {"prot": 8080}},
            ["unknown key 'server.prot'", "allowed keys in [server]", "port"],
            id="typo-key",
        ),
        pytest.param(
            {"server": {"port": "8080"}},
            ["server.port = '8080'", "must be an integer"],
            id="string-for-int",
        ),
        pytest.param(
            {"server": {"port": 8080.5}},
            ["server.port = 8080.5", "must be an integer"],
            id="float-for-int",
        ),
        pytest.param(
            {"server": {"port": True}},
            ["server.port = True", "must be an integer"],
            id="bool-for-int",
        ),
        pytest.param(
            {"server": {"access_log": "yes"}},
            ["server.access_log = 'yes'", "must be true or false"],
            id="string-for-bool",
        ),
        pytest.param(
            {"database": {"connect_timeout": "5s"}},
            ["database.connect_timeout = '5s'", "must be a number"],
            id="string-for-float",
        ),
        pytest.param(
            {"server": {"trusted_proxies": "10.0.0.0/8"}},
            ["server.trusted_proxies = '10.0.0.0/8'", "must be a list of str"],
            id="string-for-list",
        ),
        pytest.param(
            {"server": {"port": 70000}},
            ["server.port = 70000", "must be between 1 and 65535"],
            id="port-too-high",
        ),
        pytest.param(
            {"database": {"pool_max_size": 0}},
            ["database.pool_max_size = 0", "must be >= 1"],
            id="below-minimum",
        ),
        pytest.param(
            {"auth": {"access_token_ttl": 10}},
            ["auth.access_token_ttl = 10", "must be between 60 and 31536000"],
            id="ttl-too-short",
        ),
        pytest.param(
            {"log": {"format": "xml"}},
            ["log.format = 'xml'", "must be one of json, console"],
            id="bad-choice",
        ),
        pytest.param(
            {"log": {"level": "verbose"}},
            ["log.level = 'verbose'", "must be one of debug, info, warning, error"],
            id="bad-level",
        ),
        pytest.param(
            {"sever": {"port": 1}},
            ["unknown section [sever]", "allowed: server, database"],
            id="unknown-section",
        ),
        pytest.param(
            {"server": 8080},
            ["[server] must be a table, got int"],
            id="section-not-a-table",
        ),
        pytest.param(
            {"server": {"trusted_proxies": ["10.0.0.0/8", "not-a-network"]}},
            ["server.trusted_proxies contains 'not-a-network'", "IP address or CIDR network"],
            id="bad-cidr",
        ),
        pytest.param(
            {"database": {"dsn": "mysql://app@db/app"}},
            ["database.dsn is invalid (the scheme is 'mysql')", "postgresql://user:password@host"],
            id="dsn-wrong-scheme",
        ),
        pytest.param(
            {"database": {"dsn": "postgresql://app@db:port/app"}},
            ["database.dsn is invalid (a port is not a number from 0 to 65535): must be a URL"],
            id="dsn-bad-port",
        ),
        pytest.param(
            {"hooks": {"secret_grace_period": 2**31}},
            ["hooks.secret_grace_period = 2147483648", "between 0 and 31536000"],
            id="grace-period-past-a-year",
        ),
        pytest.param(
            {"auth": {"access_token_ttl": 10**12}},
            ["auth.access_token_ttl = 1000000000000", "between 60 and 31536000"],
            id="token-ttl-past-a-year",
        ),
        pytest.param(
            {"auth": {"login_failure_window": 0}},
            ["auth.login_failure_window = 0", "between 1 and 86400"],
            id="login-window-zero",
        ),
        pytest.param(
            {"auth": {"login_failures_per_account": -1}},
            ["auth.login_failures_per_account = -1", "between 0 and 1000000"],
            id="login-failures-negative",
        ),
        pytest.param(
            {"auth": {"max_personal_tokens": -1}},
            ["auth.max_personal_tokens = -1", "between 0 and 10000"],
            id="personal-token-limit-negative",
        ),
        pytest.param(
            {"auth": {"max_personal_tokens": 10_001}},
            ["auth.max_personal_tokens = 10001", "between 0 and 10000"],
            id="personal-token-limit-too-large",
        ),
        pytest.param(
            {"outgoing": {"retry_schedule": [10, 1e12]}},
            ["outgoing.retry_schedule = [10, 1000000000000.0]", "every entry must be <= 604800"],
            id="retry-delay-past-a-week",
        ),
        pytest.param(
            {"outgoing": {"retry_after_max": 1e300}},
            ["outgoing.retry_after_max = 1e+300", "between 0 and 604800"],
            id="retry-after-max-past-a-week",
        ),
        pytest.param(
            {"outgoing": {"dns_timeout": 0}},
            ["outgoing.dns_timeout = 0", "between 0.1 and 60"],
            id="dns-timeout-zero",
        ),
        pytest.param(
            {"outgoing": {"dns_timeout": 600}},
            ["outgoing.dns_timeout = 600", "between 0.1 and 60"],
            id="dns-timeout-past-a-minute",
        ),
        pytest.param(
            {"database": {"dsn": "postgresql://app@db/app?sslmode=require&connect_timeout=10"}},
            ["database.dsn parameter 'connect_timeout'", "use database.connect_timeout"],
            id="dsn-libpq-only-parameter",
        ),
        pytest.param(
            {"database": {"pool_min_size": 5, "pool_max_size": 2}},
            ["database.pool_min_size = 5", "must be <= database.pool_max_size (2)"],
            id="pool-min-above-max",
        ),
        pytest.param(
            {"server": {"management_host": "10.0.0.5"}},
            ["server.management_host = '10.0.0.5' is invalid while server.management_port = 0"],
            id="management-host-without-port",
        ),
        pytest.param(
            {"server": {"port": 9000, "management_port": 9000}},
            ["server.management_port = 9000", "must differ from server.port"],
            id="same-ports",
        ),
        pytest.param(
            {"server": {"public_url": "hooks.example.com"}},
            ["server.public_url = 'hooks.example.com'", "http:// or https://"],
            id="public-url-scheme",
        ),
        pytest.param(
            {"database": {"data_dir": ""}},
            ["database.data_dir = ''", "must be a directory path"],
            id="empty-data-dir",
        ),
        pytest.param(
            {"server": {"host": ""}},
            ["server.host = ''", "must be an address"],
            id="empty-host",
        ),
        pytest.param(
            {"database": {"command_timeout": 3_000_000}},
            ["database.command_timeout = 3000000", "between 0.1 and 2147483"],
            id="command-timeout-over-statement-timeout-range",
        ),
        pytest.param(  # no password would do: the API takes at most 1024 characters
            {"auth": {"password_min_length": 1025}},
            ["auth.password_min_length = 1025", "between 1 and 1024"],
            id="password-min-length-over-the-longest-password",
        ),
    ],
)
def test_invalid_values_are_named_with_what_is_allowed(
    raw: dict[str, Any], expected: list[str]
) -> None:
    problems = _problems(raw)
    assert len(problems) == 1, problems
    for fragment in expected:
        assert fragment in problems[0]


@pytest.mark.parametrize(
    ("raw", "env", "problem"),
    [
        (-1, {}, "outgoing.per_environment_concurrency = -1 is invalid: must be >= 0"),
        (2.5, {}, "outgoing.per_environment_concurrency = 2.5 is invalid: must be an integer"),
        ("8", {}, "outgoing.per_environment_concurrency = '8' is invalid: must be an integer"),
        (True, {}, "outgoing.per_environment_concurrency = True is invalid: must be an integer"),
        (
            None,
            {"GATEWAY_OUTGOING_PER_ENVIRONMENT_CONCURRENCY": "half"},
            "GATEWAY_OUTGOING_PER_ENVIRONMENT_CONCURRENCY = 'half' is invalid: must be an integer",
        ),
        (
            None,
            {"GATEWAY_OUTGOING_PER_ENVIRONMENT_CONCURRENCY": "-2"},
            "GATEWAY_OUTGOING_PER_ENVIRONMENT_CONCURRENCY = -2 is invalid: must be >= 0",
        ),
    ],
)
def test_per_environment_concurrency_is_a_count_of_requests(
    raw: Any, env: dict[str, str], problem: str
) -> None:
    outgoing = {} if raw is None else {"per_environment_concurrency": raw}
    assert _problems({"outgoing": outgoing}, env) == [problem]


def test_per_environment_concurrency_may_be_0_or_more_than_concurrency() -> None:
    # 0: no limit; above concurrency: the same (the dispatcher never has more in flight), so a
    # lowered concurrency does not make the default an error.
    assert build_config({}, {}).outgoing.per_environment_concurrency == 32
    for value in (0, 1, 100):
        raw = {"outgoing": {"concurrency": 8, "per_environment_concurrency": value}}
        assert build_config(raw, {}).outgoing.per_environment_concurrency == value
    env = {"GATEWAY_OUTGOING_PER_ENVIRONMENT_CONCURRENCY": "4"}
    assert build_config({}, env).outgoing.per_environment_concurrency == 4


def test_choices_are_taken_in_any_case() -> None:
    # GATEWAY_LOG_LEVEL=INFO is how most programs spell a level; stored as the lower case.
    config = build_config(
        {"log": {"format": "JSON"}, "hooks": {"store_bodies": "Failures"}},
        {"GATEWAY_LOG_LEVEL": "WARNING"},
    )
    assert (config.log.level, config.log.format) == ("warning", "json")
    assert config.hooks.store_bodies == "failures"
    assert _problems({"log": {"level": "VERBOSE"}}) == [
        "log.level = 'VERBOSE' is invalid: must be one of debug, info, warning, error"
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems({"server": {"port": "x", "hots": "a"}, "log": {"format": "xml"}})
    assert len(problems) == 3
    assert any("server.port" in p for p in problems)
    assert any("server.hots" in p for p in problems)
    assert any("log.format" in p for p in problems)


# Several keys wrong on their own, in the file and in the environment, and two checks across
# keys whose keys are valid; two more read a key that is wrong (management_port) and are skipped.
SEVERAL_PROBLEMS = {
    "server": {
        "port": "eighty",
        "management_port": 70000,
        "management_host": "10.0.0.5",
        "public_url": "hooks.example.com",
    },
    "database": {"pool_min_size": 5, "pool_max_size": 2},
    "log": {"format": "xml"},
}
SEVERAL_PROBLEMS_ENV = {"GATEWAY_BATCH_MAX_SIZE": "lots"}
SEVERAL_PROBLEMS_REPORTED = [
    "server.port = 'eighty' is invalid: must be an integer",
    "server.management_port = 70000 is invalid: must be between 0 and 65535",
    "GATEWAY_BATCH_MAX_SIZE = 'lots' is invalid: must be an integer",
    "log.format = 'xml' is invalid: must be one of json, console",
    "database.pool_min_size = 5 is invalid: must be <= database.pool_max_size (2)",
    "server.public_url = 'hooks.example.com' is invalid: must start with http:// or https://",
]


def test_checks_across_keys_are_reported_with_the_problems_of_single_keys() -> None:
    """An operator fixing one round of errors used to get a new round: the checks across keys
    ran only once every key was valid on its own."""
    assert _problems(SEVERAL_PROBLEMS, SEVERAL_PROBLEMS_ENV) == SEVERAL_PROBLEMS_REPORTED


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        pytest.param(
            {"database": {"pool_min_size": 0, "pool_max_size": 2}},
            {},
            ["database.pool_min_size = 0 is invalid: must be >= 1"],
            id="pool-size-wrong-alone",
        ),
        pytest.param(
            {"server": {"management_port": "x", "management_host": "10.0.0.5"}},
            {},
            ["server.management_port = 'x' is invalid: must be an integer"],
            id="management-port-wrong",
        ),
        pytest.param(
            {"database": {"embedded": "no"}},
            {},
            ["database.embedded = 'no' is invalid: must be true or false"],
            id="embedded-wrong",
        ),
        pytest.param(
            {"database": {"embedded": False, "data_dir": ""}},
            {"GATEWAY_DATABASE_DSN": ""},
            ["GATEWAY_DATABASE_DSN is set but empty"],
            id="blank-dsn-override",
        ),
        pytest.param(
            {"server": 8080, "database": {"pool_min_size": 5, "pool_max_size": 2}},
            {"GATEWAY_SERVER_HOST": ""},
            [
                "[server] must be a table, got int",
                "database.pool_min_size = 5 is invalid: must be <= database.pool_max_size (2)",
                "server.host = '' is invalid: must be an address",  # set by an override
            ],
            id="section-not-a-table",
        ),
    ],
)
def test_a_check_across_keys_skips_a_key_already_refused(
    raw: dict[str, Any], env: dict[str, str], expected: list[str]
) -> None:
    problems = _problems(raw, env)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), problems


def test_a_config_error_keeps_what_was_valid() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"server": {"port": 0, "host": "0.0.0.0"}, "log": {"level": "loud"}}, {})
    assert caught.value.refused == {"server.port", "log.level"}
    assert caught.value.partial is not None
    assert caught.value.partial.server.host == "0.0.0.0"
    assert caught.value.partial.server.port == ServerConfig().port


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param("mysql://app:hunter2@db/app", id="wrong-scheme"),
        pytest.param("host=db user=app password=hunter2", id="key-value"),
        pytest.param("postgresql://app:hun/ter2@db/app", id="slash-in-password"),
        pytest.param("postgresql://app:hunter2#x@db:54x/app", id="hash-in-password"),
        pytest.param("postgresql://app:hun?ter2@db:port/app", id="question-mark-in-password"),
        pytest.param("postgresql://app:hun@ter2@db:5432/app", id="at-sign-in-password"),
        pytest.param("postgresql://app:hun@ter2:x@db:5432/app", id="at-sign-and-colon"),
    ],
)
def test_dsn_password_never_appears_in_a_problem(dsn: str) -> None:
    problems = _problems({"database": {"dsn": dsn}})
    assert len(problems) == 1 and problems[0].startswith("database.dsn is invalid")
    assert "hunter2" not in problems[0] and "hun" not in problems[0]


def test_the_dsn_is_not_in_the_repr_of_the_config() -> None:
    # Nothing logs a Config today; a traceback or a debug line showing one must not leak it.
    dsn = "postgresql://app:REPRPW_zz@db:5432/app?password=REPRPW_q"
    for config in (
        build_config({"database": {"dsn": dsn}}, {}),
        build_config({}, {"GATEWAY_DATABASE_DSN": dsn}),
    ):
        assert config.database.dsn == dsn
        assert "data_dir='var/pgdata'" in repr(config.database)
        assert "REPRPW" not in repr(config) and "REPRPW" not in repr(config.database)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db1:5432,db2:5432/app?target_session_attrs=read-write",
        "postgresql://app:pw@db1,db2:6432/app",
        "postgresql://app@[::1]:5432,db2/app",
    ],
)
def test_a_dsn_with_several_hosts_is_valid(dsn: str) -> None:
    assert build_config({"database": {"dsn": dsn}}, {}).database.dsn == dsn


def test_an_unencoded_at_sign_in_the_password_is_named() -> None:
    [problem] = _problems({"database": {"dsn": "postgresql://app:p@ss@db:5432/app"}})
    assert problem.startswith(
        "database.dsn is invalid (an '@' in the user name or password must be percent-encoded"
    )
    dsn = "postgresql://app:p%40ss@db:5432/app"
    assert build_config({"database": {"dsn": dsn}}, {}).database.dsn == dsn


@pytest.mark.parametrize("char", ["[", "]", "/"])
def test_a_character_to_percent_encode_in_the_password_is_named(char: str) -> None:
    """A '[' or ']' in the password (a generated one) made the URL unreadable and the problem
    blamed the port alone, without the hint given for '/', '#' and '?'."""
    [problem] = _problems({"database": {"dsn": f"postgresql://app:hun{char}ter2@db:5432/app"}})
    assert problem == (
        "database.dsn is invalid (a port is not a number from 0 to 65535; a '/', '#', '?', '[' "
        "or ']' in the password must be percent-encoded): must be a URL like "
        "postgresql://user:password@host:5432/database"
    )


def test_a_bad_port_among_several_hosts_is_named_without_blaming_the_password() -> None:
    [problem] = _problems({"database": {"dsn": "postgresql://app@db1:5432,db2:54x/app"}})
    assert problem == (
        "database.dsn is invalid (a port is not a number from 0 to 65535): must be a URL like "
        "postgresql://user:password@host:5432/database"
    )


def test_an_empty_dispatch_host_is_refused() -> None:
    """It would bind every interface, exposing /metrics and /readyz."""
    assert _problems({"outgoing": {"dispatch_host": " "}}) == [
        "outgoing.dispatch_host = '' is invalid: must be an address, e.g. 127.0.0.1"
    ]


def test_an_empty_dsn_without_the_embedded_fallback_is_refused() -> None:
    """Instances behind a load balancer set embedded = false: a DSN variable forgotten in one
    unit must stop that instance, not start a database of its own."""
    assert _problems({"database": {"embedded": False}}) == [
        "database.dsn is empty and database.embedded = false: set database.dsn "
        "(GATEWAY_DATABASE_DSN) to the database this gateway must use"
    ]
    config = build_config({"database": {"embedded": False, "dsn": "postgresql://db/app"}}, {})
    assert config.database.dsn == "postgresql://db/app"


def test_a_dsn_of_the_wrong_type_is_not_echoed() -> None:
    problems = _problems({"database": {"dsn": 42}})
    assert problems == ["database.dsn = '***' is invalid: must be a string"]


def test_config_error_message_names_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"server": {"port": 0}}, {}, source="/etc/hookgate.toml")
    assert str(caught.value).startswith("/etc/hookgate.toml: server.port = 0 is invalid")


# --- files ------------------------------------------------------------------------------------


def test_bad_toml_is_a_config_error_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = = 8080\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.source == str(path)
    assert "not valid TOML" in caught.value.problems[0]
    assert "line 2" in caught.value.problems[0]


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path: Path) -> None:
    """A file saved by Windows Notepad starts with a UTF-8 BOM: it was refused as "not valid
    TOML: Invalid statement (at line 1, column 1)", which the operator cannot see."""
    path = tmp_path / "config.toml"
    path.write_bytes("\ufeff[server]\nport = 9300\n".encode())
    assert load_config(path, env={}).server.port == 9300


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path, env={})


def test_without_any_file_the_defaults_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    config = load_config(None, env={})
    assert config.server == ServerConfig()


def test_gateway_config_picks_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[server]\nport = 9100\n")
    local = tmp_path / "config.toml"
    local.write_text("[server]\nport = 9200\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(None, env={}).server.port == 9200
    config = load_config(None, env={"GATEWAY_CONFIG": str(chosen)})
    assert config.server.port == 9100 and config.source == str(chosen)
    # An explicit path (--config) beats the variable.
    assert load_config(local, env={"GATEWAY_CONFIG": str(chosen)}).server.port == 9200
    with pytest.raises(ConfigError, match="file not found"):
        load_config(None, env={"GATEWAY_CONFIG": str(tmp_path / "missing.toml")})


# --- environment overrides ----------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[server]\nport = 9000\naccess_log = true\ntrusted_proxies = ['10.0.0.0/8']\n"
        "[database]\nconnect_timeout = 1.0\n[log]\nformat = 'json'\n"
    )
    env = {
        "GATEWAY_SERVER_PORT": "9001",  # int
        "GATEWAY_SERVER_ACCESS_LOG": "off",  # bool
        "GATEWAY_SERVER_TRUSTED_PROXIES": "192.168.0.0/16, fd00::/8",  # list, comma-separated
        "GATEWAY_DATABASE_CONNECT_TIMEOUT": "2.5",  # float
        "GATEWAY_DATABASE_DSN": "postgresql://app@db/app",  # str
        "GATEWAY_LOG_FORMAT": "console",
    }
    config = load_config(path, env=env)
    assert config.server.port == 9001
    assert config.server.access_log is False
    assert config.server.trusted_proxies == ("192.168.0.0/16", "fd00::/8")
    assert config.database.connect_timeout == 2.5
    assert config.database.dsn == "postgresql://app@db/app"
    assert config.log.format == "console"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False)],
)
def test_boolean_overrides(text: str, expected: bool) -> None:
    config = build_config({}, {"GATEWAY_SERVER_ACCESS_LOG": text})
    assert config.server.access_log is expected


def test_secret_keys_from_the_environment_take_a_key_file_as_written(tmp_path: Path) -> None:
    # GATEWAY_SECURITY_SECRET_KEYS="$(cat /etc/hookgate/secret-keys)" (README, load balancer):
    # one key per line under a '#' header that itself holds a comma.
    path = tmp_path / "secret-keys"
    (generated,), _ = ensure_key_file(path)
    old, older = new_key_line("old"), new_key_line("older")
    with path.open("a") as out:
        out.write(f"\n  # retired, decrypt only\n{old}, {older}\r\n")
    config = build_config({}, {"GATEWAY_SECURITY_SECRET_KEYS": path.read_text()})
    assert [line.partition(":")[0] for line in config.security.secret_keys] == [
        generated.key_id,
        "old",
        "older",
    ]
    assert config.security.secret_keys[1:] == (old, older)


def test_an_empty_list_override_clears_the_list() -> None:
    raw = {"server": {"trusted_proxies": ["10.0.0.0/8"]}}
    assert build_config(raw, {"GATEWAY_SERVER_TRUSTED_PROXIES": ""}).server.trusted_proxies == ()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_SERVER_PORT": "eighty"}, ["GATEWAY_SERVER_PORT = 'eighty'", "an integer"]),
        ({"GATEWAY_SERVER_PORT": "0"}, ["GATEWAY_SERVER_PORT = 0", "between 1 and 65535"]),
        ({"GATEWAY_SERVER_ACCESS_LOG": "maybe"}, ["= 'maybe'", "must be true or false"]),
        ({"GATEWAY_BATCH_MAX_WAIT_MS": "fast"}, ["GATEWAY_BATCH_MAX_WAIT_MS", "a number"]),
        ({"GATEWAY_LOG_LEVEL": "loud"}, ["GATEWAY_LOG_LEVEL = 'loud'", "one of debug"]),
        (
            {"GATEWAY_SERVER_PROT": "9000"},
            ["unknown environment override GATEWAY_SERVER_PROT", "GATEWAY_SERVER_PORT"],
        ),
        # A typo in the section, or the wrong case, is no more ignored than one in the key.
        (
            {"GATEWAY_DATABSE_DSN": "postgresql://db/app"},
            [
                "unknown environment override GATEWAY_DATABSE_DSN;"
                " did you mean GATEWAY_DATABASE_DSN?"
            ],
        ),
        (
            {"GATEWAY_server_port": "9000"},
            ["unknown environment override GATEWAY_server_port; did you mean GATEWAY_SERVER_PORT?"],
        ),
        (
            {"GATEWAY_ADMIN_PASWORD": "x"},
            ["unknown environment override GATEWAY_ADMIN_PASWORD; did you mean GATEWAY_ADMIN_"],
        ),
        # Blank, these would select a laptop's fallback in place of the shared database or keys.
        (
            {"GATEWAY_DATABASE_DSN": " "},
            ["GATEWAY_DATABASE_DSN is set but empty: the embedded PostgreSQL would start"],
        ),
        (
            {"GATEWAY_SECURITY_SECRET_KEYS": ""},
            ["GATEWAY_SECURITY_SECRET_KEYS is set but empty: a generated key file would be used"],
        ),
    ],
)
def test_invalid_overrides_name_the_variable(env: dict[str, str], expected: list[str]) -> None:
    problems = _problems({}, env)
    assert len(problems) == 1, problems
    for fragment in expected:
        assert fragment in problems[0]


def test_unrelated_gateway_variables_are_not_overrides() -> None:
    env = {
        "GATEWAY_ADMIN_EMAIL": "admin@example.com",
        "GATEWAY_ADMIN_PASSWORD": "x" * 12,
        "GATEWAY_CONFIG": "/nowhere.toml",
        # What Kubernetes gives every pod beside a Service named "gateway", and Docker links.
        "GATEWAY_SERVICE_HOST": "10.96.0.12",
        "GATEWAY_SERVICE_PORT": "8080",
        "GATEWAY_SERVICE_PORT_HTTP": "8080",
        "GATEWAY_PORT": "tcp://10.96.0.12:8080",
        "GATEWAY_PORT_8080_TCP": "tcp://10.96.0.12:8080",
        "GATEWAY_PORT_8080_TCP_ADDR": "10.96.0.12",
        "GATEWAY_NAME": "/web/gateway",
        # Another program's variable, in no section's likeness.
        "GATEWAY_TOKEN": "not ours",
    }
    assert build_config({}, env) == build_config({}, {})


def _float_keys() -> list[tuple[str, str]]:
    return [
        (section.name, key.name)
        for section in dataclasses.fields(Config)
        if section.name != "source"
        for key in dataclasses.fields(_section_class(section.name))
        if typing.get_type_hints(_section_class(section.name))[key.name] is float
    ]


@pytest.mark.parametrize(("section", "key"), _float_keys())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_number_key_refuses_nan_and_infinity(section: str, key: str, value: str) -> None:
    """TOML spells them nan and inf; an env override as float() reads them."""
    problem = f" = {float(value)!r} is invalid: must be a finite number"
    env_key = f"GATEWAY_{section.upper()}_{key.upper()}"
    assert _problems(tomllib.loads(f"[{section}]\n{key} = {value}\n")) == [
        f"{section}.{key}{problem}"
    ]
    assert _problems({}, {env_key: value}) == [env_key + problem]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        pytest.param("sslmode=bogus", "'sslmode'", id="sslmode"),
        pytest.param("sslmode=require?password=hunter2", "'sslmode'", id="second-question-mark"),
        pytest.param("sslmode=Require", "'sslmode'", id="case"),
        pytest.param("target_session_attrs=master", "'target_session_attrs'", id="session-attrs"),
        pytest.param("sslnegotiation=tls", "'sslnegotiation'", id="sslnegotiation"),
    ],
)
def test_a_dsn_parameter_with_fixed_values_is_checked_before_connecting(
    query: str, named: str
) -> None:
    """The driver would refuse them only when connecting, as an outage (exit 1, retried by an
    orchestrator for ever); the value is not echoed, since a typo can run into the password."""
    [problem] = _problems({"database": {"dsn": f"postgresql://app:hunter2@db/app?{query}"}})
    assert problem.startswith(f"database.dsn parameter {named} is invalid: must be one of ")
    assert "hunter2" not in problem


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=verify-full",
        "sslmode=verify_full",  # asyncpg takes underscores for hyphens in sslmode
        "sslmode=disable",
        "target_session_attrs=prefer-standby",
        "",
    ],
)
def test_valid_values_of_those_parameters_pass(query: str) -> None:
    dsn = f"postgresql://app@db/app?{query}"
    assert build_config({"database": {"dsn": dsn}}, {}).database.dsn == dsn


def test_the_fixed_values_are_the_drivers() -> None:
    """If an asyncpg upgrade adds or drops a value, the check must follow it."""
    from asyncpg import connect_utils

    from gateway.config_dsn import DSN_CHOICES as _DSN_CHOICES

    assert set(_DSN_CHOICES["sslmode"]) == {
        mode.name.replace("_", "-") for mode in connect_utils.SSLMode
    }
    assert set(_DSN_CHOICES["target_session_attrs"]) == {
        attribute.value for attribute in connect_utils.SessionAttribute
    }
    assert set(_DSN_CHOICES["sslnegotiation"]) == {
        negotiation.name for negotiation in connect_utils.SSLNegotiation
    }
