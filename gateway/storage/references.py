"""A foreign key a write broke, in words: what it referred to, never the constraint's name.

Views check that what a create refers to exists (a pipeline, a team, a role) before they write;
a row deleted between that check and the insert's commit makes the insert break a foreign key
of schema.sql. That is the same "not found" the check would have answered a moment later, and
is translated at the storage boundary to :class:`MissingReference` naming what is missing.
Views that name ids in their 404s look again to answer exactly as after the delete.

The other side of a key, deleting a row still referenced, fails only on the one key that
restricts deletes (a role used by team links), and ``delete_role`` locks the role and checks
its links first. The server reports both sides with the same fields (the referring table and
the constraint), so they cannot be told apart here without reading its translated message.
"""

from __future__ import annotations

import asyncpg

from gateway.exceptions import MissingReference

# Every foreign key of schema.sql: (the table that refers, what it refers to). A test compares
# this with the database's constraints, so a new one cannot be left out.
FOREIGN_KEYS: dict[str, tuple[str, str]] = {
    "auth_tokens_user_id_fkey": ("auth_tokens", "user"),
    "environment_teams_environment_id_fkey": ("environment_teams", "environment"),
    "environment_teams_role_id_fkey": ("environment_teams", "role"),
    "environment_teams_team_id_fkey": ("environment_teams", "team"),
    "incoming_hooks_created_by_fkey": ("incoming_hooks", "user"),
    "incoming_hooks_pipeline_id_fkey": ("incoming_hooks", "pipeline"),
    "outgoing_deliveries_hook_id_fkey": ("outgoing_deliveries", "outgoing hook"),
    "outgoing_hooks_created_by_fkey": ("outgoing_hooks", "user"),
    "outgoing_hooks_pipeline_id_fkey": ("outgoing_hooks", "pipeline"),
    "pipelines_environment_id_fkey": ("pipelines", "environment"),
    "team_members_team_id_fkey": ("team_members", "team"),
    "team_members_user_id_fkey": ("team_members", "user"),
}


def broken_reference(exc: asyncpg.ForeignKeyViolationError) -> MissingReference:
    """MissingReference naming what the broken foreign key refers to."""
    return MissingReference(FOREIGN_KEYS.get(exc.constraint_name or "", ("", None))[1])
