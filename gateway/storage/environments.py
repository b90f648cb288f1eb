"""Environments in the database."""

from __future__ import annotations

from collections.abc import Collection

from gateway.exceptions import AlreadyExists
from gateway.storage.database import Database, Record
from gateway.storage.paging import split_page


class EnvironmentNameTaken(AlreadyExists):
    """An environment with this name already exists."""


async def insert_environment(db: Database, name: str, description: str) -> Record:
    """Create an environment; raise EnvironmentNameTaken when the name is in use."""
    try:
        row = await db.fetchrow("environment_insert", name, description)
    except AlreadyExists as exc:
        raise EnvironmentNameTaken(f"an environment named {name!r} already exists") from exc
    assert row is not None
    return row


async def environment_by_id(db: Database, environment_id: int) -> Record | None:
    """The environment, or None."""
    return await db.fetchrow("environment_by_id", environment_id)


async def list_environments(
    db: Database, only: Collection[int] | None, limit: int, offset: int
) -> tuple[list[Record], int]:
    """A page of environments (all of them when ``only`` is None) and the total count."""
    ids = None if only is None else sorted(only)
    return split_page(await db.fetch("environment_list", ids, limit, offset))
