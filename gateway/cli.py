"""The ``gateway`` command: serve, migrate, check-config, user create."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import launch, sighup
from gateway.config import (
    ENV_CONFIG_PATH,
    MAX_STATEMENT_SECONDS,
    Config,
    ConfigError,
    load_config,
    override_names,
)
from gateway.exceptions import DatabaseMisconfigured, GatewayError
from gateway.executor import commands as run_commands
from gateway.logs import configure_logging, get_logger
from gateway.security import key_commands
from gateway.supervisor import WORKER_CONFIG_ENV
from gateway.version import package_version

log = get_logger(__name__)


# How long `gateway migrate` lets schema.sql run: an index built on a large table may take long,
# and [database] command_timeout (what `serve` allows it at start) is meant for one request.
MIGRATE_TIMEOUT = 3600.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_STATEMENT_SECONDS:  # the server refuses more (and nan fails)
        raise argparse.ArgumentTypeError(
            f"not a number of seconds (0 to {MAX_STATEMENT_SECONDS}, 0: no limit): {text!r}"
        )
    return value


def _path(text: str) -> str:
    # --config "$CONFIG" with CONFIG unset must not fall back to ./config.toml unnoticed.
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name the config file")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="hookgate webhook gateway")
    parser.add_argument(
        "--config",
        type=_path,
        metavar="PATH",
        help="config file (default: $GATEWAY_CONFIG or ./config.toml)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway (ingest + management API)")
    # Internal: how the supervisor starts each of the [server] workers (see gateway/supervisor.py).
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    migrate = commands.add_parser("migrate", help="apply schema.sql to the configured database")
    migrate.add_argument(
        "--timeout",
        type=_seconds,
        default=MIGRATE_TIMEOUT,
        metavar="SECONDS",
        help=f"how long applying the file may take (default {MIGRATE_TIMEOUT:g}; 0: no limit)",
    )
    commands.add_parser("dispatch", help="deliver outgoing hooks (without the HTTP listeners)")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path", nargs="?", type=_path, help="file to check (default: --config)")
    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = user_commands.add_parser("create", help="create a user")
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--admin", action="store_true", help="make the user an administrator")
    create.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable (default: stdin)",
    )
    set_password = user_commands.add_parser(
        "set-password",
        help="set a user's password (recovery: no current password needed); their sessions end",
    )
    set_password.add_argument("--email", required=True)
    set_password.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable (default: stdin)",
    )
    run_commands.add_commands(commands)  # executor, prune (issue 5)
    key_commands.add_commands(commands)  # keys generate|status (issue 8)
    return parser


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(exc.source, exc.problems)
        raise SystemExit(2) from exc


def _print_problems(source: str, problems: list[str]) -> None:
    where = f"in {source}"
    if not source:  # about where the file is named, not about a file
        where = f"({ENV_CONFIG_PATH})"
    elif not Path(source).exists() and problems != [f"file not found: {source}"]:
        # The default path, absent: the problems are the GATEWAY_* overrides', not a file's.
        where = f"(no config file found at {source}; checked the GATEWAY_* overrides)"
    print(f"gateway: invalid configuration {where}:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def _check_config(path: str | None) -> int:
    """``gateway check-config``: every problem of the file and the overrides in one run, and
    what start-up would refuse about the files they name as far as the file system tells: the
    key file, and the certificate files of database.dsn (each checked as well when other keys
    are wrong, as long as the keys it reads are valid)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = list(exc.problems)
        if exc.partial is not None:
            problems += _file_problems(exc.partial, exc.refused)
        _print_problems(exc.source, problems)
        return 2
    problems = _file_problems(config, frozenset())
    for problem in problems:
        print(f"gateway: {problem}", file=sys.stderr)
    if problems:
        return 2
    if Path(config.source).is_file():
        print(f"{config.source}: OK")
    else:  # only the default path may be missing (a named file must exist)
        print(
            f"no config file found (looked for {config.source}): the built-in defaults "
            f"and the GATEWAY_* overrides are valid"
        )
    return 0


def _file_problems(config: Config, refused: frozenset[str]) -> list[str]:
    """What start-up would refuse about the files ``config`` names (found without creating
    any): the key file, unless a [security] key was refused; the files database.dsn names
    (serve refuses a missing certificate with status 2 before it connects), or without a DSN
    the embedded server's data_dir (a file in its place)."""
    from gateway.security.secret_box import check_key_settings
    from gateway.storage.database import unreadable_dsn_files
    from gateway.storage.embedded import unusable_data_dir

    problems = []
    if not any(key.startswith("security.") for key in refused):
        try:
            check_key_settings(config.security)
        except ValueError as key_problem:
            problems.append(str(key_problem))
    database = config.database
    if "database.dsn" not in refused and database.dsn:
        unreadable = unreadable_dsn_files(database.dsn)
        if unreadable:
            problems.append(unreadable)
    elif refused.isdisjoint({"database.dsn", "database.embedded", "database.data_dir"}):
        embedded = database.embedded and not database.dsn  # else data_dir is not used
        unusable = unusable_data_dir(database.data_dir) if embedded else None
        if unusable:
            problems.append(unusable)
    return problems


def _worker_config(snapshot: str) -> Config:
    from gateway.supervisor import config_from_snapshot

    try:
        return config_from_snapshot(snapshot)
    except ConfigError as exc:
        print(f"gateway: invalid configuration from the supervisor: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _read_password(var: str | None) -> str:
    if var:
        if var not in os.environ:
            raise SystemExit(f"gateway: environment variable {var} is not set")
        return os.environ[var]
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


async def _migrate(config: Config, statement_timeout: float) -> None:
    from gateway.server import database_for

    async with database_for(config) as db:
        version = await db.apply_schema(force=True, statement_timeout=statement_timeout)
        log.info("schema_applied", version=version)
        print(f"schema applied: version {version}")


async def _create_user(config: Config, email: str, name: str, admin: bool, password: str) -> None:
    from gateway import accounts
    from gateway.server import database_for

    accounts.check_new_user(config.auth, email, password)  # before a database is started
    async with database_for(config) as db:
        await db.apply_schema()
        user = await accounts.create_user(
            db, config.auth, email, password, name=name, is_admin=admin
        )
        print(f"created user {user.id} <{user.email}>{' (admin)' if admin else ''}")


async def _set_password(config: Config, email: str, password: str) -> None:
    from gateway import accounts
    from gateway.server import database_for

    accounts.check_password_length(config.auth, password)  # before a database is started
    async with database_for(config) as db:
        await db.apply_schema()
        user, ended = await accounts.set_password(db, config.auth, email, password)
        print(f"password set for user {user.id} <{user.email}>; {ended} session token(s) ended")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gateway`` command line (started through :mod:`gateway.launch`)."""
    args = _parser().parse_args(argv)
    if args.command in launch.RELOADABLE:  # long-running: SIGHUP reloads, never kills
        sighup.remember()
    if args.command == "check-config":
        return _check_config(args.path or args.config)
    if args.command == key_commands.COMMAND:  # issue 8; `keys generate` needs no config
        try:
            return key_commands.main(args, _load)
        except (ValueError, GatewayError) as exc:
            return _reported(exc)
    if getattr(args, "worker", False) and WORKER_CONFIG_ENV in os.environ:
        # A worker runs the configuration in force in its supervisor, not the file as it is
        # now (an edit waiting for a restart must not reach a replacement worker).
        config = _worker_config(os.environ[WORKER_CONFIG_ENV])
    else:
        config = _load(args.config)
    configure_logging(config.log.level, config.log.format)
    if args.command in ("serve", "dispatch", "executor") and not getattr(args, "worker", False):
        # Which file (or none) and which overrides this process runs with: the first thing
        # to know when it does not behave as the file says.
        log.info(
            "config_loaded",
            path=config.source,
            file_found=Path(config.source).is_file(),
            overrides=sorted(override_names() & os.environ.keys()),
        )
    from gateway.server import install_event_loop_policy

    install_event_loop_policy()
    try:
        if args.command == "serve":
            from gateway.server import serve

            code = asyncio.run(serve(config, worker=args.worker))
            sighup.remember()  # the closed loop's handlers are gone; exiting is not a reload
            if code:
                return code
        elif args.command == "dispatch":  # outgoing hooks (issue 6)
            from gateway.dispatcher.service import dispatch

            code = asyncio.run(dispatch(config))
            sighup.remember()
            if code:
                return code
        elif args.command == "migrate":
            asyncio.run(_migrate(config, args.timeout))
        elif args.command == "user" and args.user_command == "set-password":
            password = _read_password(args.password_env)
            asyncio.run(_set_password(config, args.email, password))
        elif args.command == "user":
            password = _read_password(args.password_env)
            asyncio.run(_create_user(config, args.email, args.name, args.admin, password))
        elif args.command in run_commands.COMMANDS:
            code = run_commands.main(config, args)
            if args.command in launch.RELOADABLE:
                sighup.remember()
            return code
    except KeyboardInterrupt:
        return 130
    except (ValueError, GatewayError) as exc:
        return _reported(exc)
    return 0


def _reported(exc: ValueError | GatewayError) -> int:
    """Print a command's failure on one line; its exit status: 2 for a configuration error
    (bad input, a database.dsn that cannot be used: retrying won't help), ListenError's own,
    1 for anything else the gateway reports (an outage)."""
    from gateway.server import ListenError

    print(f"gateway: {exc}", file=sys.stderr)
    if isinstance(exc, ListenError):
        return exc.exit_status
    return 2 if isinstance(exc, ValueError | DatabaseMisconfigured) else 1
