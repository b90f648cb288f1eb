"""Operator configuration: parsed once from ``config.toml`` into frozen, typed objects.

Precedence: built-in defaults < the TOML file < ``GATEWAY_<SECTION>_<KEY>`` environment variables.
Validation collects every problem and names the key, the bad value and what is allowed, so a
bad edit is rejected before a port is bound (or, on SIGHUP, before the running config changes).
One run reports them all: each key on its own, and every check across keys (pool_min_size <=
pool_max_size ...) whose keys are valid; one whose key was refused is skipped, as its answer
would be about a value the operator did not give.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from gateway import config_env
from gateway.config_dsn import check_dsn

DEFAULT_CONFIG_PATH = "config.toml"
ENV_CONFIG_PATH = config_env.ENV_CONFIG_PATH


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists one clear line per bad key.

    ``partial`` (when the file could be parsed): the configuration with every refused value left
    at its default, and ``refused`` the ``section.key`` names of those values, so that a check
    of its own (``gateway check-config`` on the key file) runs on the keys that are valid.
    """

    def __init__(
        self,
        problems: list[str],
        source: str = "config",
        *,
        partial: Config | None = None,
        refused: frozenset[str] = frozenset(),
    ) -> None:
        self.problems = problems
        self.source = source
        self.partial = partial
        self.refused = refused
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    management_port: int = 0  # 0: management API shares the ingest listener
    management_host: str = ""  # empty: same as host
    public_url: str = ""  # empty: http://{host}:{port}
    workers: int = 1
    max_body_bytes: int = 1_048_576
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout: float = 15.0
    # Seconds between the stop signal and closing the listeners, /readyz answering 503 meanwhile.
    drain_delay: float = 0.0
    access_log: bool = False
    body_timeout: float = 30.0  # a request's body must arrive within this, else 408
    keepalive_timeout: float = 75.0  # idle connections, and requests whose headers never end

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    # Empty: start the embedded PostgreSQL in data_dir. Never in a repr: a password can sit
    # anywhere in it (see config_dsn.check_dsn), so it is not masked but left out.
    dsn: str = field(default="", repr=False)
    data_dir: str = "var/pgdata"
    pool_min_size: int = 2
    pool_max_size: int = 10
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    embedded: bool = True  # false: an empty dsn is an error, never a private embedded server


# The longest password the gateway takes (the API's limit; `gateway user` and the first admin's
# too): auth.password_min_length above it would refuse every password.
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class AuthConfig:
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 2_592_000
    password_min_length: int = 8
    # Failed-login throttling (gateway.security.login_throttle), per worker process.
    login_failure_window: int = 900
    login_failures_per_address: int = 20
    login_failures_per_account: int = 50
    # Live (neither revoked nor expired) personal tokens per user; 0: no limit.
    max_personal_tokens: int = 50


@dataclass(frozen=True, slots=True)
class HooksConfig:
    secret_grace_period: int = 86_400  # seconds the previous secret keeps working after rotation
    timestamp_tolerance: int = 300  # Standard Webhooks timestamp window, seconds
    store_bodies: str = "all"  # all | failures | none
    cache_ttl: float = 60.0  # hook cache safety-net TTL; LISTEN/NOTIFY invalidates sooner


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_size: int = 256
    max_wait_ms: float = 2.0
    max_queue: int = 10_000
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # json | console


# Outgoing hooks (dispatcher) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutgoingConfig:
    allow_private_targets: bool = False  # SSRF guard off: allow loopback/private/link-local
    timeout: float = 10.0  # seconds per request (a hook's settings.timeout may lower it)
    dns_timeout: float = 5.0  # seconds per lookup of a target's name
    concurrency: int = 64  # requests in flight per dispatcher process
    per_target_concurrency: int = 4  # requests in flight per scheme://host:port
    per_environment_concurrency: int = 32  # requests in flight per environment; 0: no limit
    retry_schedule: tuple[float, ...] = (10.0, 30.0, 120.0, 600.0, 1800.0)  # seconds
    retry_jitter: float = 1.0  # 1: full jitter (uniform 0..delay); 0: exact schedule
    retry_after_max: float = 3600.0  # cap on a target's Retry-After, seconds
    disable_after_failures: int = 10  # consecutive failed deliveries; 0: never
    dispatcher_in_serve: bool = True  # run the dispatcher inside `gateway serve`
    poll_interval: float = 5.0  # seconds between checks when no notification arrives
    response_excerpt_bytes: int = 1024  # response body kept per attempt
    dispatch_host: str = "127.0.0.1"  # `gateway dispatch`: probes and metrics listener ...
    dispatch_port: int = 0  # ... on this port (0: none)


# End of outgoing hooks -----------------------------------------------------------------------


# Operations (issue 8): rate limits and secrets at rest ---------------------------------------
@dataclass(frozen=True, slots=True)
class LimitsConfig:
    default_rate_per_second: float = 0.0  # per hook and worker process; 0: unlimited
    default_burst: int = 0  # 0: derived from the rate (ceil(rate), at least 1)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    # "key_id:base64 of 32 bytes" entries, the first encrypts (gateway.security.secret_keys).
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    # Used when secret_keys is empty: read, or created on first start; "" disables encryption.
    key_file: str = "var/secret-keys"
    # False: a missing key_file (with no secret_keys) stops start-up instead of a new key.
    create_key_file: bool = True


# End of operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    outgoing: OutgoingConfig = field(default_factory=OutgoingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # operations (issue 8)
    security: SecurityConfig = field(default_factory=SecurityConfig)  # operations (issue 8)
    source: str = ""  # the file it came from, for messages


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("json", "console"),
    ("hooks", "store_bodies"): ("all", "failures", "none"),
}

_MINIMUMS: dict[tuple[str, str], float] = {
    ("server", "port"): 1,
    ("server", "management_port"): 0,
    ("outgoing", "dispatch_port"): 0,
    ("server", "workers"): 1,
    ("server", "max_body_bytes"): 1,
    ("server", "shutdown_timeout"): 0,
    ("server", "drain_delay"): 0,
    ("server", "body_timeout"): 0.1,
    ("server", "keepalive_timeout"): 0.1,
    ("database", "pool_min_size"): 1,
    ("database", "pool_max_size"): 1,
    ("database", "connect_timeout"): 0.1,
    ("database", "command_timeout"): 0.1,
    ("auth", "access_token_ttl"): 60,
    ("auth", "refresh_token_ttl"): 60,
    ("auth", "password_min_length"): 1,
    ("auth", "login_failure_window"): 1,
    ("auth", "login_failures_per_address"): 0,
    ("auth", "login_failures_per_account"): 0,
    ("auth", "max_personal_tokens"): 0,
    ("hooks", "secret_grace_period"): 0,
    ("hooks", "timestamp_tolerance"): 1,
    ("hooks", "cache_ttl"): 0,
    ("batch", "max_size"): 1,
    ("batch", "max_wait_ms"): 0,
    ("batch", "max_queue"): 1,
    ("batch", "retry_after"): 1,
    # outgoing hooks
    ("outgoing", "timeout"): 0.1,
    ("outgoing", "dns_timeout"): 0.1,
    ("outgoing", "concurrency"): 1,
    ("outgoing", "per_target_concurrency"): 1,
    ("outgoing", "per_environment_concurrency"): 0,
    ("outgoing", "retry_jitter"): 0,
    ("outgoing", "retry_after_max"): 0,
    ("outgoing", "disable_after_failures"): 0,
    ("outgoing", "poll_interval"): 0.05,
    ("outgoing", "response_excerpt_bytes"): 0,
    # operations (issue 8)
    ("limits", "default_rate_per_second"): 0,
    ("limits", "default_burst"): 0,
}

_YEAR, _WEEK = 31_536_000, 604_800
# PostgreSQL's statement_timeout is an int of milliseconds: past this many seconds the server
# refuses it, and with it every connection (database.command_timeout) or `gateway migrate
# --timeout`'s schema run.
MAX_STATEMENT_SECONDS = 2_147_483
_MAXIMUMS: dict[tuple[str, str], float] = {
    ("server", "port"): 65535,
    ("server", "management_port"): 65535,
    ("outgoing", "dispatch_port"): 65535,
    ("server", "workers"): 256,
    ("database", "command_timeout"): MAX_STATEMENT_SECONDS,
    # Durations the database turns into timestamps: past these, rotating a secret, logging in
    # or scheduling a retry would fail at request time (an int32 of seconds, a timestamp range).
    ("auth", "access_token_ttl"): _YEAR,
    ("auth", "refresh_token_ttl"): _YEAR,
    ("auth", "password_min_length"): MAX_PASSWORD_LENGTH,
    ("auth", "login_failure_window"): 86_400,
    ("auth", "login_failures_per_address"): 1_000_000,
    ("auth", "login_failures_per_account"): 1_000_000,
    ("auth", "max_personal_tokens"): 10_000,  # GET /users/me/tokens reads them all at once
    ("hooks", "secret_grace_period"): _YEAR,
    ("outgoing", "retry_schedule"): _WEEK,  # each entry
    ("outgoing", "retry_after_max"): _WEEK,
    # outgoing hooks (timeout bounds the delivery lease, see gateway.dispatcher.dispatcher)
    ("outgoing", "timeout"): 60,
    ("outgoing", "dns_timeout"): 60,
    ("outgoing", "retry_jitter"): 1,
    ("outgoing", "response_excerpt_bytes"): 65536,
    # operations (issue 8)
    ("limits", "default_rate_per_second"): 1_000_000,
    ("limits", "default_burst"): 1_000_000,
}

# Keys whose values never appear in a message (operations, issue 8): key material, and the
# DSN, which may carry a password.
_MASKED: frozenset[tuple[str, str]] = frozenset({("security", "secret_keys"), ("database", "dsn")})


def resolve_path(path: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to read: the argument, else ``$GATEWAY_CONFIG``, else ./config.toml."""
    env = os.environ if env is None else env
    return Path(path or env.get(ENV_CONFIG_PATH) or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    if not path and ENV_CONFIG_PATH in env and not env[ENV_CONFIG_PATH].strip():
        # A variable meant to name the file, left empty: not ./config.toml by surprise.
        empty = "is set but empty: name the file, or unset it to use ./config.toml"
        raise ConfigError([f"{ENV_CONFIG_PATH} {empty}"], "")
    file_path = resolve_path(str(path) if path else None, env)
    raw: dict[str, Any] = {}
    if file_path.exists():
        try:
            raw = read_toml(file_path)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"not valid TOML: {exc}"], str(file_path)) from exc
        except OSError as exc:
            raise ConfigError([f"cannot read the file: {exc.strerror}"], str(file_path)) from exc
    elif path is not None or ENV_CONFIG_PATH in env:
        raise ConfigError([f"file not found: {file_path}"], str(file_path))
    return build_config(raw, env, source=str(file_path))


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``, parsed; a UTF-8 byte order mark first (Windows Notepad writes
    one) is skipped, not a syntax error at line 1, column 1."""
    return tomllib.loads(path.read_text(encoding="utf-8-sig"))


def build_config(raw: Mapping[str, Any], env: Mapping[str, str], source: str = "config") -> Config:
    """Validate a parsed TOML mapping plus environment overrides into a Config."""
    problems: list[str] = []
    # "section.key" of every value refused (or unknown: a section that is not a table): the
    # checks across keys skip those, instead of judging a default the operator did not give.
    refused: set[str] = set()
    sections: dict[str, Any] = {}
    section_types = {f.name: f.type for f in fields(Config) if f.name != "source"}
    hints = get_type_hints(Config)
    for name in raw:
        if name not in section_types:
            problems.append(f"unknown section [{name}]; allowed: {', '.join(section_types)}")
    config_env.check_env_names(_section_classes(), env, problems, refused)
    for name in section_types:
        cls = hints[name]
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(f"[{name}] must be a table, got {type(table).__name__}")
            # Its keys are unknown (only an override gives one): left at their defaults.
            unknown = (f.name for f in fields(cls) if env_name(name, f.name) not in env)
            refused.update(f"{name}.{key}" for key in unknown)
            table = {}
        sections[name] = _build_section(name, cls, table, env, problems, refused)
    _check_cross_field(sections, problems, refused)
    if problems:
        partial = Config(**sections, source=source)
        raise ConfigError(problems, source, partial=partial, refused=frozenset(refused))
    return Config(**sections, source=source)


def _build_section(
    name: str,
    cls: type,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    problems: list[str],
    refused: set[str],
) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            problems.append(
                f"unknown key '{name}.{key}'; allowed keys in [{name}]: {', '.join(sorted(known))}"
            )
    values: dict[str, Any] = {}
    for f in fields(cls):
        env_key = env_name(name, f.name)
        if env_key in env:
            value: Any = config_env.from_env(env[env_key], hints[f.name])
            where = f"{env_key}"
        elif f.name in table:
            value = table[f.name]
            where = f"{name}.{f.name}"
        else:
            continue
        checked = _check_value(name, f.name, where, value, hints[f.name], problems)
        if checked is _INVALID:
            refused.add(f"{name}.{f.name}")
        else:
            values[f.name] = checked
    instance: Any = cls()
    assert is_dataclass(instance)
    return replace(instance, **values)  # type: ignore[type-var]


_INVALID = object()


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``: GATEWAY_SECTION_KEY."""
    return config_env.env_name(section, key)


def override_names() -> frozenset[str]:
    """Every ``GATEWAY_<SECTION>_<KEY>`` override the configuration reads."""
    return frozenset(config_env.override_keys(_section_classes()))


def _section_classes() -> dict[str, type]:
    """Each section's name -> its dataclass (``[server]`` -> ServerConfig ...)."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if f.name != "source"}


def _type_name(kind: Any) -> str:
    if get_origin(kind) is tuple:
        if get_args(kind)[0] is float:
            return "a list of non-negative numbers"
        return f"a list of {get_args(kind)[0].__name__}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def _is_item(value: Any, item: Any) -> bool:
    if item is float:  # list of numbers (outgoing.retry_schedule)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and 0 <= value < float("inf")
    return isinstance(value, item)


def _check_value(
    section: str, key: str, where: str, value: Any, kind: Any, problems: list[str]
) -> Any:
    shown = "'***'" if (section, key) in _MASKED else repr(value)
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            # nan fails every bounds check below (all comparisons are false), inf passes any
            # minimum: a timeout that never ends, a TTL that never caches (env overrides too).
            problems.append(f"{where} = {shown} is invalid: must be a finite number")
            return _INVALID
    elif kind is str:
        ok = isinstance(value, str)
    elif get_origin(kind) is tuple:
        item = get_args(kind)[0]
        ok = isinstance(value, list | tuple) and all(_is_item(v, item) for v in value)
        value = tuple(float(v) if item is float else v for v in value) if ok else value
    if not ok:
        problems.append(f"{where} = {shown} is invalid: must be {_type_name(kind)}")
        return _INVALID
    choices = _CHOICES.get((section, key))
    if choices and value.lower() in choices:
        value = value.lower()  # GATEWAY_LOG_LEVEL=INFO, as other programs spell levels
    if choices and value not in choices:
        problems.append(f"{where} = {shown} is invalid: must be one of {', '.join(choices)}")
        return _INVALID
    low, high = _MINIMUMS.get((section, key)), _MAXIMUMS.get((section, key))
    if isinstance(value, tuple):
        if high is not None and any(item > high for item in value):
            problems.append(f"{where} = {shown} is invalid: every entry must be <= {high:g}")
            return _INVALID
    elif (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        problems.append(f"{where} = {shown} is invalid: must be {bounds}")
        return _INVALID
    return value


def _check_cross_field(sections: dict[str, Any], problems: list[str], refused: set[str]) -> None:
    """The checks that need more than one key (and single-key ones on a value's form); each
    runs only when every key it reads was accepted (``refused`` holds those that were not)."""

    def valid(*keys: str) -> bool:
        return refused.isdisjoint(keys)

    server: ServerConfig = sections["server"]
    database: DatabaseConfig = sections["database"]
    pool_sizes = valid("database.pool_min_size", "database.pool_max_size")
    if pool_sizes and database.pool_min_size > database.pool_max_size:
        problems.append(
            f"database.pool_min_size = {database.pool_min_size} is invalid: must be <= "
            f"database.pool_max_size ({database.pool_max_size})"
        )
    ports = valid("server.management_port", "server.port")
    if ports and server.management_port and server.management_port == server.port:
        problems.append(
            f"server.management_port = {server.management_port} is invalid: must differ from "
            "server.port (use 0 to share the ingest listener)"
        )
    management = valid("server.management_host", "server.management_port")
    if management and server.management_host.strip() and not server.management_port:
        # Likely meant to keep the management API on an internal interface: silently serving it
        # on the (maybe public) ingest listener instead would be the opposite.
        problems.append(
            f"server.management_host = {server.management_host!r} is invalid while "
            "server.management_port = 0 (the management API is then served on the ingest "
            "listener): set server.management_port too, or leave management_host empty"
        )
    public_url = server.public_url if valid("server.public_url") else ""
    if public_url and not public_url.startswith(("http://", "https://")):
        problems.append(
            f"server.public_url = {public_url!r} is invalid: must start with http:// or https://"
        )
    for cidr in server.trusted_proxies if valid("server.trusted_proxies") else ():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(
                f"server.trusted_proxies contains {cidr!r}: not an IP address or CIDR network"
            )
    _check_database_target(database, problems, valid)
    if valid("server.host") and not server.host.strip():
        problems.append(
            "server.host = '' is invalid: must be an address, e.g. 127.0.0.1 or 0.0.0.0"
        )
    dispatch_host = sections["outgoing"].dispatch_host
    if valid("outgoing.dispatch_host") and not dispatch_host.strip():  # "" binds everywhere
        problems.append(
            "outgoing.dispatch_host = '' is invalid: must be an address, e.g. 127.0.0.1"
        )
    # Operations (issue 8): key lines are checked here so that check-config and a SIGHUP
    # reload reject them (messages never echo key material).
    from gateway.security.secret_keys import key_line_problems

    if valid("security.secret_keys"):
        key_problems = key_line_problems(sections["security"].secret_keys, "security.secret_keys")
        if key_problems:  # not to be judged again by check-config's key-file check
            refused.add("security.secret_keys")
        problems.extend(key_problems)


def _check_database_target(
    database: DatabaseConfig, problems: list[str], valid: Callable[..., bool]
) -> None:
    """The DSN, or (without one) the embedded fallback: allowed, and with a data directory."""
    if not valid("database.dsn"):
        return
    if database.dsn:
        check_dsn(database.dsn, problems)
    elif not valid("database.embedded"):
        return
    elif not database.embedded:
        problems.append(
            "database.dsn is empty and database.embedded = false: set database.dsn "
            "(GATEWAY_DATABASE_DSN) to the database this gateway must use"
        )
    elif valid("database.data_dir") and not database.data_dir.strip():
        problems.append(
            "database.data_dir = '' is invalid: must be a directory path when database.dsn is "
            "empty (the embedded PostgreSQL keeps its data there)"
        )
