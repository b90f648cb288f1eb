"""What a user may do in an environment, read from teams, roles and links."""

from __future__ import annotations

from gateway.storage.database import Database


async def permissions_in_environment(
    db: Database, environment_id: int, user_id: int
) -> frozenset[str] | None:
    """The user's permissions there, or None when no team of theirs is linked to it."""
    row = await db.fetchrow("permissions_in_environment", environment_id, user_id)
    if row is None or not row["linked"]:
        return None
    return frozenset(row["permissions"] or ())


async def visible_environment_ids(db: Database, user_id: int) -> set[int]:
    """Ids of environments some team of the user is linked to."""
    return {r["environment_id"] for r in await db.fetch("visible_environment_ids", user_id)}
