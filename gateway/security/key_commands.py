"""``gateway keys``: generate a key line, show which keys seal the stored secrets, rotate.

``keys generate`` needs no configuration and prints one ``key_id:base64`` line for
``[security] secret_keys``. ``keys status`` lists stored secrets per key id and fails when some
were sealed with a key this host does not have. ``keys rotate`` re-encrypts every stored
secret with the primary key (gateway.storage.secret_rotation), safe while gateways serve: they
open secrets with any configured key, and a re-encrypted row notifies their hook caches.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from gateway.config import Config
from gateway.executor.commands import positive

COMMAND = "keys"
MAX_BATCH_SIZE = 10_000
# Storage seals secrets on write and every reader opens them (issue 8), so rotation is safe.
ROTATE_AVAILABLE = True


def add_commands(commands: Any, *, rotate: bool | None = None) -> None:
    """Register ``keys generate|status`` (and ``rotate`` when available) on the subparsers."""
    keys = commands.add_parser(COMMAND, help="encryption keys of stored hook secrets")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate", help="print a new key line for [security] secret_keys"
    )
    generate.add_argument("--key-id", metavar="ID", help="default: today's date + random hex")
    actions.add_parser("status", help="stored secrets per key id; fails when a key is missing")
    if ROTATE_AVAILABLE if rotate is None else rotate:
        rotation = actions.add_parser(
            "rotate", help="re-encrypt every stored secret with the primary (first) key"
        )
        rotation.add_argument(
            "--batch-size",
            # A batch is one transaction, and its size a query argument: bounded (a huge one
            # was a driver traceback, "value out of int64 range").
            type=positive(int, maximum=MAX_BATCH_SIZE),
            default=200,
            metavar="N",
            help=f"rows re-encrypted per transaction (default 200, at most {MAX_BATCH_SIZE})",
        )


def main(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    """Run a parsed ``keys`` command; ``load`` reads the configuration (only when needed).
    ValueError and GatewayError reach the command line, which reports them as every command's."""
    from gateway.security.secret_keys import new_key_line

    if args.keys_command == "generate":
        print(new_key_line(args.key_id))
        return 0
    config = load(args.config)
    from gateway.logs import configure_logging

    configure_logging(config.log.level, config.log.format)
    if args.keys_command == "status":
        return asyncio.run(_status(config))
    return asyncio.run(_rotate(config, args.batch_size))


async def _status(config: Config) -> int:
    from gateway.executor.database import existing_database
    from gateway.security.secret_box import SecretBox
    from gateway.security.secret_keys import load_keys
    from gateway.storage.secret_rotation import key_usage, unsealed_sensitive_headers

    keys = load_keys(config.security.secret_keys, config.security.key_file, create_file=False)
    box = SecretBox.from_key_set(keys)
    primary = box.primary_key_id or "(none: secrets are stored in plaintext)"
    if not keys.keys and config.security.key_file.strip():
        # Not plaintext: the key file is elsewhere (a relative key_file read from another
        # working directory) or not given to this command.
        primary = f"(none: key_file {config.security.key_file!r} does not exist)"
    print(f"primary key: {primary}")
    where = {"config": "[security] secret_keys", "file": f"key_file {keys.path!r}"}
    source = where.get(keys.origin, keys.origin)
    if keys.origin == "config" and keys.path:  # an existing key file's keys open secrets too
        source += f" and key_file {keys.path!r}"
    listed = f"{', '.join(box.key_ids)} (from {source})"
    print(f"configured keys: {listed if box.key_ids else 'none'}")
    async with existing_database(config, start_embedded=True) as db:
        usage = await key_usage(db)
        unsealed = await unsealed_sensitive_headers(db)
    missing = 0
    for location, key_id, count in usage:
        known = not key_id or key_id in box.key_ids
        missing += 0 if known else count
        label = key_id or "plaintext"
        print(f"{location}: {count} sealed with {label}{'' if known else ' (KEY MISSING)'}")
    if unsealed:
        print(f"outgoing_hooks.settings.request_headers: {unsealed} sensitive, in plaintext")
    code = 0
    if missing:
        print(
            f"gateway: {missing} stored secrets use keys this host does not have", file=sys.stderr
        )
        code = 1
    if unsealed and box.enabled:
        print(
            f"gateway: {unsealed} sensitive outgoing header values are stored in plaintext "
            "(written by an earlier release): run `gateway keys rotate` to seal them",
            file=sys.stderr,
        )
        code = 1
    return code


async def _rotate(config: Config, batch_size: int) -> int:
    from gateway.executor.database import existing_database
    from gateway.progress import ProgressLog
    from gateway.security.secret_box import SecretBox
    from gateway.security.secret_keys import load_keys
    from gateway.storage.secret_rotation import rotate_secrets

    # Never a generated key: the servers would not have it, and the rows sealed with it would
    # be unreadable to them.
    security = config.security
    keys = load_keys(security.secret_keys, security.key_file, create_file=False)
    if not keys.keys:
        where = (
            f"key_file {security.key_file!r} does not exist"
            if security.key_file
            else ("key_file is empty")
        )
        raise ValueError(
            f"no encryption key on this host (security.secret_keys is empty and {where}): "
            "give this command the servers' keys (the same config, key file or "
            "GATEWAY_SECURITY_SECRET_KEYS)"
        )
    box = SecretBox.from_key_set(keys)
    async with existing_database(config, start_embedded=True) as db:
        results = await rotate_secrets(
            db, box, batch_size=batch_size, progress=ProgressLog("keys_rotate_progress")
        )
    code = 0
    for result in results:
        print(
            f"{result.table}: {result.reencrypted} re-encrypted with {box.primary_key_id}, "
            f"{result.conflicts} changed meanwhile, {result.unreadable} unreadable"
        )
        if result.conflicts:
            code = 1
            print(f"gateway: run `gateway keys rotate` again for {result.table}", file=sys.stderr)
        if result.unreadable:
            code = 1
            ids = ", ".join(str(i) for i in result.unreadable_ids)
            print(f"gateway: unreadable rows (missing key?): {ids}", file=sys.stderr)
    return code
