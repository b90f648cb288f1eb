"""``gateway keys rotate``: re-encrypt every stored hook secret with the primary key.

Works in batches, each in its own short transaction, walking each table in id order and
reading only rows that still need work (a secret not sealed with the primary key, plaintext
included), so a large table never holds locks for long and a rotation can be stopped and run
again at any time. Rows stay readable throughout: the box opens every configured key, so a
row is readable before, during and after its batch.

A row that changed since it was read (a secret rotated through the API meanwhile) is left
alone rather than overwritten with the older value, and counted as ``conflicts``; running the
command again picks it up. A row whose key is not configured is counted as ``unreadable`` and
left as it is.

Columns: ``secret`` and ``previous_secret`` of ``incoming_hooks`` and ``outgoing_hooks``, and
the sensitive header values in ``outgoing_hooks.settings``
(storage.outgoing.sealed_settings: plaintext ones written before they were sealed get sealed).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.dispatcher.signing import with_sensitive_header_values
from gateway.progress import Progress
from gateway.security.secret_box import VERSION_PREFIX, SecretBox, SecretBoxError, is_encrypted
from gateway.security.sensitive_headers import is_sensitive_header
from gateway.storage.database import Database, Record

INCOMING, OUTGOING = "incoming_hooks", "outgoing_hooks"
TABLES = (INCOMING, OUTGOING)
# table -> (query reading the rows that need work, query writing them back)
_QUERIES = {
    INCOMING: ("secrets_incoming_page", "secrets_incoming_update"),
    OUTGOING: ("secrets_outgoing_page", "secrets_outgoing_update"),
}
_FIRST_ID = uuid.UUID(int=0)
_MAX_UNREADABLE_IDS = 20


@dataclass
class TableRotation:
    """What one table's rotation did."""

    table: str
    reencrypted: int = 0
    conflicts: int = 0
    unreadable: int = 0
    unreadable_ids: list[uuid.UUID] = field(default_factory=list)  # the first few
    last_id: uuid.UUID = _FIRST_ID
    done: bool = False


def _prefix(box: SecretBox) -> str:
    if not box.enabled:
        raise ValueError(
            "no encryption key is configured ([security] secret_keys or key_file); "
            "there is nothing to rotate to"
        )
    return f"{VERSION_PREFIX}{box.primary_key_id}:"


async def rotate_batch(
    db: Database, box: SecretBox, progress: TableRotation, batch_size: int = 200
) -> TableRotation:
    """Re-encrypt the next batch of ``progress.table`` after ``progress.last_id``; updates and
    returns ``progress`` (``done`` once the table has no more rows to visit)."""
    if progress.table not in TABLES:
        raise ValueError(f"unknown table {progress.table!r}; expected one of {TABLES}")
    rows = await db.fetch(_QUERIES[progress.table][0], progress.last_id, _prefix(box), batch_size)
    if not rows:
        progress.done = True
        return progress
    progress.last_id = rows[-1]["id"]
    await reencrypt_rows(db, box, progress, rows)
    if len(rows) < batch_size:
        progress.done = True
    return progress


async def reencrypt_rows(
    db: Database, box: SecretBox, progress: TableRotation, rows: Sequence[Record]
) -> None:
    """Re-encrypt ``rows`` (as read from ``progress.table``) in one transaction, each row
    only if it still holds the values read; counts go into ``progress``."""
    outgoing = progress.table == OUTGOING
    columns = ("secret", "previous_secret")
    ids: list[uuid.UUID] = []
    new: list[list[Any]] = [[] for _ in columns]
    old: list[list[Any]] = [[] for _ in columns]
    new_settings: list[Any] = []
    old_settings: list[Any] = []
    for row in rows:
        try:
            values = [_reencrypted(box, row[c]) for c in columns]
            settings = _resealed_settings(box, row["settings"]) if outgoing else None
        except SecretBoxError:
            progress.unreadable += 1
            if len(progress.unreadable_ids) < _MAX_UNREADABLE_IDS:
                progress.unreadable_ids.append(row["id"])
            continue
        old_values = [row[c] for c in columns]
        if outgoing and values == old_values and settings == row["settings"]:
            continue  # listed for its headers, none of which needs work
        ids.append(row["id"])
        for i in range(len(columns)):
            new[i].append(values[i])
            old[i].append(old_values[i])
        if outgoing:
            new_settings.append(settings)
            old_settings.append(row["settings"])
    if not ids:
        return
    name = _QUERIES[progress.table][1]
    async with db.transaction() as session:
        if progress.table == INCOMING:
            updated = await session.fetch(name, ids, new[0], new[1], old[0], old[1])
        else:
            updated = await session.fetch(
                name, ids, new[0], new[1], old[0], old[1], new_settings, old_settings
            )
    progress.reencrypted += len(updated)
    progress.conflicts += len(ids) - len(updated)


def _reencrypted(box: SecretBox, value: str | None) -> str | None:
    if value is None or not box.needs_reencrypt(value):
        return value
    return box.reencrypt(value)


def _resealed_settings(box: SecretBox, settings: Any) -> Any:
    """Outgoing settings with every sensitive header value sealed with the primary key (those
    written before they were sealed included); the rest byte for byte."""
    if not isinstance(settings, dict):
        return settings

    def resealed(value: str) -> str:
        if not is_encrypted(value):
            return box.encrypt(value)
        return box.reencrypt(value) if box.needs_reencrypt(value) else value

    return with_sensitive_header_values(settings, resealed)


async def rotate_secrets(
    db: Database,
    box: SecretBox,
    *,
    batch_size: int = 200,
    tables: Sequence[str] = TABLES,
    progress: Progress | None = None,
) -> list[TableRotation]:
    """Re-encrypt every stored secret with the primary key; one result per table.
    ``progress(table, rows re-encrypted so far)`` is called after each batch."""
    _prefix(box)
    results = []
    for table in tables:
        done = TableRotation(table)
        while not done.done:
            await rotate_batch(db, box, done, batch_size)
            if progress is not None:
                progress(table, done.reencrypted)
        results.append(done)
    return results


async def key_usage(db: Database) -> list[tuple[str, str, int]]:
    """``(location, key_id, count)`` of stored secrets; key id ``""`` means plaintext."""
    rows = await db.fetch("secrets_key_usage")
    return [(row["location"], row["key_id"], row["secrets"]) for row in rows]


async def unsealed_sensitive_headers(db: Database) -> int:
    """How many sensitive outgoing request header values are stored in plaintext (written
    before the sensitive-header rule covered their names; `gateway keys rotate` seals them)."""
    rows = await db.fetch("outgoing_unsealed_header_names")
    return sum(1 for row in rows if is_sensitive_header(row["name"] or ""))


async def sealed_key_ids(db: Database) -> dict[str, int]:
    """The key ids of the sealed secrets stored, with their counts (plaintext ones left out)."""
    sealed: dict[str, int] = {}
    for _, key_id, count in await key_usage(db):
        if key_id:
            sealed[key_id] = sealed.get(key_id, 0) + count
    return sealed


async def missing_key_ids(db: Database, box: SecretBox) -> dict[str, int]:
    """Key ids found in stored secrets that ``box`` cannot open, with their counts (a start-up
    check: a host configured with the wrong keys must say so before serving)."""
    return {k: n for k, n in (await sealed_key_ids(db)).items() if k not in box.key_ids}
