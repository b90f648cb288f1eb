"""Paths of users and login, environments, pipelines, runs and the executor API."""

from __future__ import annotations

from gateway.openapi import inputs
from gateway.openapi.common import (
    PAGE_PARAMETERS,
    Schema,
    error,
    json_body,
    list_filter,
    no_content,
    operation,
    page,
    path_id,
    path_uuid,
    ref,
)
from gateway.run_states import STATUSES

ENVIRONMENT = path_id("environment_id", "environment")
PIPELINE = path_id("pipeline_id", "pipeline")
RUN = path_uuid("run_id", "run")
LOCATION = {
    "Location": {
        "description": "Path of the new resource.",
        "required": True,
        "schema": {"type": "string"},
    }
}


USER = path_id("user_id", "user")


def _users() -> dict[str, Schema]:
    return {
        "/users/login": {
            "post": operation(
                "login",
                "Exchange email and password for an access and a refresh token",
                "users",
                {
                    200: json_body(ref("TokenPair"), "A new token pair."),
                    401: json_body(ref("Error"), "Wrong email or password."),
                    429: error(
                        429,
                        "Too many failed logins from this client address or for this account "
                        "([auth] login_failures_per_address, login_failures_per_account); the "
                        "password was not checked. Retry after Retry-After seconds.",
                    ),
                    503: error(
                        503,
                        "Too many password checks in progress, or the database is unavailable.",
                    ),
                },
                errors=(422,),
                body=inputs.LOGIN,
                auth=False,
            )
        },
        "/users/refresh-token": {
            "post": operation(
                "refreshToken",
                "Exchange a refresh token for a new pair (the old refresh token stops working)",
                "users",
                {200: json_body(ref("TokenPair"), "A new token pair.")},
                errors=(401, 422),
                body=inputs.REFRESH,
                auth=False,
            )
        },
        "/users/me": {
            "get": operation(
                "getMe", "The authenticated user", "users", {200: json_body(ref("User"), "You.")}
            )
        },
        "/users/logout": {
            "post": operation(
                "logout",
                "End the session of the access token used (and of refresh_token when given)",
                "users",
                {204: no_content("The access token (and the refresh token) no longer work.")},
                errors=(409, 422),
                body=inputs.LOGOUT,
                body_required=False,
                example={"refresh_token": "hgr_..."},
            )
        },
        "/users/me/password": {
            "put": operation(
                "changeMyPassword",
                "Change your password; every session of yours (access and refresh tokens) ends, "
                "personal access tokens stay",
                "users",
                {
                    204: no_content("Changed; log in again with the new password."),
                    429: error(
                        429,
                        "Too many failed password checks (counted with failed logins); "
                        "retry after Retry-After seconds.",
                    ),
                },
                errors=(422,),
                body=inputs.PASSWORD_CHANGE,
                example={"current_password": "old passphrase", "new_password": "a new one"},
            )
        },
        "/users/{user_id}": {
            "get": operation(
                "getUser",
                "One user (administrators)",
                "users",
                {200: json_body(ref("User"), "The user.")},
                errors=(403, 404),
                parameters=[USER],
            ),
            "put": operation(
                "updateUser",
                "Rename, promote or demote, disable or re-enable a user, or set their password "
                "(administrators). Disabling ends all of the user's tokens, personal ones "
                "included; a new password ends their sessions",
                "users",
                {200: json_body(ref("User"), "The user as changed.")},
                errors=(403, 404, 409, 422),
                parameters=[USER],
                body=inputs.USER_CHANGE,
                example={"is_active": False},
            ),
        },
        "/users": {
            "post": operation(
                "createUser",
                "Create a user (administrators)",
                "users",
                {201: json_body(ref("User"), "The new user.")},
                errors=(403, 409, 422),
                body=inputs.NEW_USER,
                example={
                    "email": "dev@example.com",
                    "password": "a long passphrase",
                    "name": "Dev",
                },
            ),
            "get": operation(
                "listUsers",
                "All users (administrators)",
                "users",
                {200: page(ref("User"), "A page of users.")},
                errors=(403, 422),
                parameters=PAGE_PARAMETERS,
            ),
        },
    }


def _environments() -> dict[str, Schema]:
    return {
        "/environments": {
            "post": operation(
                "createEnvironment",
                "Create an environment (administrators)",
                "environments",
                {201: json_body(ref("Environment"), "The new environment.", LOCATION)},
                errors=(403, 409, 422),
                body=inputs.ENVIRONMENT,
            ),
            "get": operation(
                "listEnvironments",
                "The environments the caller can see",
                "environments",
                {200: page(ref("Environment"), "A page of environments.")},
                errors=(422,),
                parameters=PAGE_PARAMETERS,
            ),
        },
        "/environments/{environment_id}": {
            "get": operation(
                "getEnvironment",
                "One environment (environment:read)",
                "environments",
                {200: json_body(ref("Environment"), "The environment.")},
                errors=(403, 404),
                parameters=[ENVIRONMENT],
            )
        },
        "/environments/{environment_id}/pipelines": {
            "post": operation(
                "createPipeline",
                "Create a pipeline (pipeline:create)",
                "pipelines",
                {201: json_body(ref("Pipeline"), "The new pipeline.", LOCATION)},
                errors=(403, 404, 422),
                parameters=[ENVIRONMENT],
                body=inputs.pipeline(partial=False),
            ),
            "get": operation(
                "listPipelines",
                "An environment's pipelines (pipeline:read)",
                "pipelines",
                {200: page(ref("Pipeline"), "A page of pipelines.")},
                errors=(403, 404, 422),
                parameters=[ENVIRONMENT, *PAGE_PARAMETERS],
            ),
        },
    }


def _pipelines() -> dict[str, Schema]:
    return {
        "/pipelines/{pipeline_id}": {
            "get": operation(
                "getPipeline",
                "One pipeline (pipeline:read)",
                "pipelines",
                {200: json_body(ref("Pipeline"), "The pipeline.")},
                errors=(403, 404),
                parameters=[PIPELINE],
            ),
            "put": operation(
                "updatePipeline",
                "Change some or all of a pipeline's fields (pipeline:update)",
                "pipelines",
                {200: json_body(ref("Pipeline"), "The updated pipeline.")},
                errors=(403, 404, 422),
                parameters=[PIPELINE],
                body=inputs.pipeline(partial=True),
            ),
            "delete": operation(
                "deletePipeline",
                "Delete a pipeline and its hooks; runs and history remain (pipeline:delete)",
                "pipelines",
                {204: no_content("Deleted.")},
                errors=(403, 404),
                parameters=[PIPELINE],
            ),
        },
        "/pipelines/{pipeline_id}/hooks": {
            "get": operation(
                "listPipelineHooks",
                "Every hook of a pipeline, incoming first, secrets masked (hook:read)",
                "hooks",
                {200: page(ref("Hook"), "A page of hooks.")},
                errors=(403, 404, 422),
                parameters=[PIPELINE, *PAGE_PARAMETERS],
            )
        },
        "/pipelines/{pipeline_id}/concurrency": {
            "get": operation(
                "getConcurrency",
                "A pipeline's concurrency policy (pipeline:read)",
                "runs",
                {200: json_body(ref("Concurrency"), "The settings.")},
                errors=(403, 404),
                parameters=[PIPELINE],
            ),
            "put": operation(
                "setConcurrency",
                "Set the concurrency policy; queued and running runs are re-keyed "
                "(pipeline:update)",
                "runs",
                {200: json_body(ref("ConcurrencySet"), "The new settings.")},
                errors=(403, 404, 422),
                parameters=[PIPELINE],
                body=inputs.CONCURRENCY,
            ),
        },
    }


def _runs() -> dict[str, Schema]:
    return {
        "/pipelines/{pipeline_id}/runs": {
            "get": operation(
                "listRuns",
                "A pipeline's runs, newest first (pipeline:read)",
                "runs",
                {200: page(ref("Run"), "A page of runs.")},
                errors=(403, 404, 422),
                parameters=[PIPELINE, *PAGE_PARAMETERS, list_filter("status", "runs", STATUSES)],
            )
        },
        "/runs/{run_id}": {
            "get": operation(
                "getRun",
                "One run with the executor's output (pipeline:read)",
                "runs",
                {200: json_body(ref("RunDetail"), "The run.")},
                errors=(403, 404),
                parameters=[RUN],
            )
        },
        "/runs/claim": {
            "post": operation(
                "claimRuns",
                "Claim queued runs, oldest first, with a lease (run:execute)",
                "executors",
                {200: json_body({"type": "array", "items": ref("ClaimedRun")}, "Claimed runs.")},
                errors=(403, 404, 422),
                body=inputs.CLAIM,
                body_required=False,
            )
        },
        "/runs/{run_id}/status": {
            "post": operation(
                "reportRunStatus",
                "Finish, cancel or release a claimed run (run:execute)",
                "executors",
                {200: json_body(ref("Run"), "The run in its new status.")},
                errors=(403, 404, 409, 422),
                parameters=[RUN],
                body=inputs.RUN_STATUS,
            )
        },
        "/runs/{run_id}/heartbeat": {
            "post": operation(
                "heartbeatRun",
                "Extend a claimed run's lease (run:execute)",
                "executors",
                {200: json_body(ref("Heartbeat"), "The new lease expiry.")},
                errors=(403, 404, 409, 422),
                parameters=[RUN],
                body=inputs.HEARTBEAT,
            )
        },
    }


def paths() -> dict[str, Schema]:
    """Users, environments, pipelines, runs and executors."""
    return {**_users(), **_environments(), **_pipelines(), **_runs()}
