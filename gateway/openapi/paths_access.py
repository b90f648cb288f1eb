"""Paths of access administration: permissions, roles, teams, members, environment links and
personal access tokens."""

from __future__ import annotations

from gateway.openapi import inputs
from gateway.openapi.common import (
    PAGE_PARAMETERS,
    Schema,
    json_body,
    no_content,
    operation,
    page,
    path_id,
    ref,
)

ROLE = path_id("role_id", "role")
TEAM = path_id("team_id", "team")
ENVIRONMENT = path_id("environment_id", "environment")


def _roles() -> dict[str, Schema]:
    return {
        "/permissions": {
            "get": operation(
                "listPermissions",
                "Every permission a role may grant, with the permissions each one requires",
                "access",
                {200: json_body({"type": "array", "items": ref("Permission")}, "The catalogue.")},
            )
        },
        "/roles": {
            "post": operation(
                "createRole",
                "Create a role; it must name every permission its permissions require "
                "(administrators)",
                "access",
                {201: json_body(ref("Role"), "The new role.")},
                errors=(403, 409, 422),
                body=inputs.ROLE,
                example={"name": "deployers", "permissions": ["environment:read", "run:read"]},
            ),
            "get": operation(
                "listRoles",
                "All roles (administrators)",
                "access",
                {200: page(ref("Role"), "A page of roles.")},
                errors=(403, 422),
                parameters=PAGE_PARAMETERS,
            ),
        },
        "/roles/{role_id}": {
            "get": operation(
                "getRole",
                "One role (administrators)",
                "access",
                {200: json_body(ref("Role"), "The role.")},
                errors=(403, 404),
                parameters=[ROLE],
            ),
            "put": operation(
                "updateRole",
                "Replace a role's name and permissions (administrators)",
                "access",
                {200: json_body(ref("Role"), "The updated role.")},
                errors=(403, 404, 409, 422),
                parameters=[ROLE],
                body=inputs.ROLE,
            ),
            "delete": operation(
                "deleteRole",
                "Delete a role; 409 while a team link uses it (administrators)",
                "access",
                {204: no_content("Deleted.")},
                errors=(403, 404, 409),
                parameters=[ROLE],
            ),
        },
    }


def _teams() -> dict[str, Schema]:
    return {
        "/teams": {
            "post": operation(
                "createTeam",
                "Create a team (administrators)",
                "access",
                {201: json_body(ref("Team"), "The new team.")},
                errors=(403, 409, 422),
                body=inputs.TEAM,
            ),
            "get": operation(
                "listTeams",
                "All teams (administrators)",
                "access",
                {200: page(ref("Team"), "A page of teams.")},
                errors=(403, 422),
                parameters=PAGE_PARAMETERS,
            ),
        },
        "/teams/{team_id}": {
            "get": operation(
                "getTeam",
                "One team (administrators)",
                "access",
                {200: json_body(ref("Team"), "The team.")},
                errors=(403, 404),
                parameters=[TEAM],
            ),
            "delete": operation(
                "deleteTeam",
                "Delete a team with its memberships and links (administrators)",
                "access",
                {204: no_content("Deleted.")},
                errors=(403, 404),
                parameters=[TEAM],
            ),
        },
        "/teams/{team_id}/members": {
            "post": operation(
                "addTeamMember",
                "Add a user to a team (administrators)",
                "access",
                {201: json_body(ref("User"), "The user added.")},
                errors=(403, 404, 409, 422),
                parameters=[TEAM],
                body=inputs.MEMBER,
            ),
            "get": operation(
                "listTeamMembers",
                "A team's members (administrators)",
                "access",
                {200: page(ref("User"), "A page of members.")},
                errors=(403, 404, 422),
                parameters=[TEAM, *PAGE_PARAMETERS],
            ),
        },
        "/teams/{team_id}/members/{user_id}": {
            "delete": operation(
                "removeTeamMember",
                "Remove a user from a team (administrators)",
                "access",
                {204: no_content("Removed.")},
                errors=(403, 404),
                parameters=[TEAM, path_id("user_id", "user")],
            )
        },
    }


def _links() -> dict[str, Schema]:
    link = "/environments/{environment_id}/teams/{team_id}/link"
    return {
        link: {
            "post": operation(
                "linkTeam",
                "Link a team to an environment with a role (administrators)",
                "access",
                {
                    200: json_body(ref("EnvironmentLink"), "The existing link, with its new role."),
                    201: json_body(ref("EnvironmentLink"), "The new link."),
                },
                errors=(403, 404, 422),
                parameters=[ENVIRONMENT, TEAM],
                body=inputs.LINK,
            ),
            "delete": operation(
                "unlinkTeam",
                "Remove a team's link to an environment (administrators)",
                "access",
                {204: no_content("Unlinked.")},
                errors=(403, 404),
                parameters=[ENVIRONMENT, TEAM],
            ),
        },
        "/environments/{environment_id}/teams": {
            "get": operation(
                "listEnvironmentTeams",
                "The teams linked to an environment, with their roles (administrators)",
                "access",
                {200: page(ref("EnvironmentLink"), "A page of links.")},
                errors=(403, 404, 422),
                parameters=[ENVIRONMENT, *PAGE_PARAMETERS],
            )
        },
    }


def _tokens() -> dict[str, Schema]:
    return {
        "/users/me/tokens": {
            "post": operation(
                "createPersonalToken",
                "Issue a personal access token; the response is its only copy. 409 when the "
                "caller already holds [auth] max_personal_tokens live ones",
                "users",
                {201: json_body(ref("CreatedPersonalToken"), "The token, shown once.")},
                errors=(409, 422),
                body=inputs.NEW_TOKEN,
            ),
            "get": operation(
                "listPersonalTokens",
                "The caller's personal tokens, revoked and expired ones included",
                "users",
                {200: page(ref("PersonalToken"), "A page of tokens (never the secret).")},
                errors=(422,),
                parameters=PAGE_PARAMETERS,
            ),
        },
        "/users/me/tokens/{token_id}": {
            "delete": operation(
                "revokePersonalToken",
                "Revoke one of the caller's personal tokens",
                "users",
                {204: no_content("Revoked.")},
                errors=(404,),
                parameters=[path_id("token_id", "token")],
            )
        },
    }


def paths() -> dict[str, Schema]:
    """Roles, teams, members, links and personal tokens."""
    return {**_roles(), **_teams(), **_links(), **_tokens()}
