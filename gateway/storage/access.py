"""Roles, teams, team members and team↔environment links in the database."""

from __future__ import annotations

from typing import Any

from gateway.exceptions import AlreadyExists, Conflict, NotFound
from gateway.storage.database import Database, Record, Session
from gateway.storage.paging import split_page


class NameTaken(AlreadyExists):
    """A role or team with this name already exists."""


def _page(rows: list[Record], key: str = "id") -> tuple[list[dict[str, Any]], int]:
    items, total = split_page(rows, key)
    return [{k: v for k, v in r.items() if k != "total"} for r in items], total


# Roles ------------------------------------------------------------------------------------------


async def insert_role(db: Database, name: str, permissions: list[str]) -> dict[str, Any]:
    """Create a role; NameTaken when the name is in use."""
    try:
        row = await db.fetchrow("role_insert", name, permissions)
    except AlreadyExists as exc:
        raise NameTaken(f"a role named {name!r} already exists") from exc
    assert row is not None
    return dict(row)


async def list_roles(db: Database, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of roles and the total count."""
    return _page(await db.fetch("role_list", limit, offset))


async def role_by_id(db: Database, role_id: int) -> dict[str, Any] | None:
    """The role, or None."""
    row = await db.fetchrow("role_by_id", role_id)
    return None if row is None else dict(row)


async def update_role(
    db: Session, role_id: int, name: str, permissions: list[str]
) -> dict[str, Any] | None:
    """Replace a role's name and permissions; None when it does not exist."""
    try:
        row = await db.fetchrow("role_update", role_id, name, permissions)
    except AlreadyExists as exc:
        raise NameTaken(f"a role named {name!r} already exists") from exc
    return None if row is None else dict(row)


async def delete_role(db: Database, role_id: int) -> None:
    """Delete an unused role: NotFound when absent, Conflict naming the environments using it."""
    async with db.transaction() as session:
        # The row lock blocks a concurrent link to this role until we are done.
        if await session.fetchrow("role_lock", role_id) is None:
            raise NotFound(f"role {role_id} not found")
        in_use = [
            r["environment_id"] for r in await session.fetch("role_linked_environments", role_id)
        ]
        if in_use:
            raise Conflict(
                f"role {role_id} is in use by team links in environment(s) "
                f"{', '.join(map(str, in_use))}; unlink those teams or re-link them with "
                "another role first"
            )
        await session.execute("role_delete", role_id)


# Teams and members ------------------------------------------------------------------------------


async def insert_team(db: Database, name: str) -> dict[str, Any]:
    """Create a team; NameTaken when the name is in use."""
    try:
        row = await db.fetchrow("team_insert", name)
    except AlreadyExists as exc:
        raise NameTaken(f"a team named {name!r} already exists") from exc
    assert row is not None
    return dict(row)


async def list_teams(db: Database, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of teams (with member counts) and the total count."""
    return _page(await db.fetch("team_list", limit, offset))


async def team_by_id(db: Database, team_id: int) -> dict[str, Any] | None:
    """The team with its member count, or None."""
    row = await db.fetchrow("team_by_id", team_id)
    return None if row is None else dict(row)


async def delete_team(db: Database, team_id: int) -> bool:
    """Delete a team with its memberships and links; False when it did not exist."""
    return await db.fetchval("team_delete", team_id) is not None


async def add_member(db: Session, team_id: int, user_id: int) -> bool:
    """Add a user to a team; False when they already were a member.

    NotFound (from the foreign keys) when the team or the user does not exist.
    """
    return await db.fetchrow("team_member_add", team_id, user_id) is not None


async def list_members(
    db: Database, team_id: int, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of a team's members (user records) and the total count."""
    return _page(await db.fetch("team_member_list", team_id, limit, offset))


async def remove_member(db: Database, team_id: int, user_id: int) -> bool:
    """Remove a user from a team; False when they were not a member."""
    return await db.fetchval("team_member_remove", team_id, user_id) is not None


# Environment links ------------------------------------------------------------------------------


async def environment_exists(db: Database, environment_id: int) -> bool:
    """Whether the environment exists."""
    return bool(await db.fetchval("env_team_environment_exists", environment_id))


async def link_team(db: Session, environment_id: int, team_id: int, role_id: int) -> bool:
    """Link a team to an environment with a role (re-linking changes the role).

    True when the link is new. NotFound when the environment, team or role is gone.
    """
    row = await db.fetchrow("env_team_link", environment_id, team_id, role_id)
    assert row is not None
    return bool(row["created"])


async def unlink_team(db: Database, environment_id: int, team_id: int) -> bool:
    """Remove a team's link to an environment; False when there was none."""
    return await db.fetchval("env_team_unlink", environment_id, team_id) is not None


async def environment_link(
    db: Database, environment_id: int, team_id: int
) -> dict[str, Any] | None:
    """One link with its team and role, or None."""
    row = await db.fetchrow("env_team_one", environment_id, team_id)
    return None if row is None else dict(row)


async def environment_links(
    db: Database, environment_id: int, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of the teams linked to an environment (with their roles) and the total count."""
    return _page(await db.fetch("env_team_list", environment_id, limit, offset), "team_id")
