"""Paths of incoming and outgoing hooks, their request history and replay."""

from __future__ import annotations

from gateway.management.history import OUTCOMES
from gateway.management.outgoing_history import ATTEMPT_OUTCOMES, DELIVERY_STATUSES
from gateway.openapi import inputs
from gateway.openapi.common import (
    PAGE_PARAMETERS,
    STRING,
    UUID,
    Schema,
    array,
    json_body,
    list_filter,
    no_content,
    nullable,
    obj,
    operation,
    page,
    path_id,
    path_uuid,
    ref,
)

PIPELINE = path_id("pipeline_id", "pipeline")
HOOK = path_uuid("hook_id", "hook")
REQUEST = path_uuid("request_id", "recorded request")

# Replay answers like the trigger endpoint, plus the new history row and the replayed one.
REPLAY_IDS: dict[str, Schema] = {"request_id": UUID, "retry_of": UUID}
REPLAY_ACCEPTED = obj({"message": STRING, "run_id": UUID, "errors": {"type": "null"}, **REPLAY_IDS})
REPLAY_SKIPPED = obj(
    {
        "message": STRING,
        "run_id": {"type": "null"},
        "skipped": {"const": True},
        "reason": STRING,
        "errors": {"type": "null"},
        **REPLAY_IDS,
    }
)
REDELIVERY = obj(
    {"message": STRING, "delivery_id": UUID, "retry_of": UUID, "errors": {"type": "null"}}
)
REPLAY_REJECTED = obj(
    {
        "message": STRING,
        "errors": nullable({"type": "object", "additionalProperties": array(STRING)}),
        **REPLAY_IDS,
    }
)


def _replay_rejection(description: str) -> Schema:
    return json_body({"oneOf": [REPLAY_REJECTED, ref("Error")]}, description)


HOOK_CREATED: dict[str, Schema] = {
    "Location": {"description": "Path of the new hook.", "required": True, "schema": STRING}
}


def _incoming() -> dict[str, Schema]:
    return {
        "/pipelines/{pipeline_id}/hooks/incoming": {
            "post": operation(
                "createIncomingHook",
                "Create an incoming hook; the only response besides rotation that shows the "
                "secret (application:read + hook:create)",
                "incoming hooks",
                {
                    201: json_body(
                        ref("IncomingHook"), "The new hook with its secret.", HOOK_CREATED
                    )
                },
                errors=(403, 404, 422),
                parameters=[PIPELINE],
                body=inputs.incoming_hook(partial=False),
                example={
                    "name": "Deploy main",
                    "action_type": "deploy",
                    "trigger_when": {
                        "conditions": [{"path": "ref", "accepted_values": ["refs/heads/main"]}]
                    },
                    "settings": {
                        "variables": [{"name": "commit", "path": "after", "type": "string"}],
                        "delivery_id_header": "x-github-delivery",
                    },
                },
            )
        },
        "/hooks/incoming/{hook_id}": {
            "get": operation(
                "getIncomingHook",
                "One incoming hook, secret masked (hook:read)",
                "incoming hooks",
                {200: json_body(ref("IncomingHook"), "The hook.")},
                errors=(403, 404),
                parameters=[HOOK],
            ),
            "put": operation(
                "updateIncomingHook",
                "Change some or all fields; settings members given replace stored ones "
                "(hook:update)",
                "incoming hooks",
                {200: json_body(ref("IncomingHook"), "The updated hook.")},
                errors=(403, 404, 422),
                parameters=[HOOK],
                body=inputs.incoming_hook(partial=True),
            ),
            "delete": operation(
                "deleteIncomingHook",
                "Delete a hook; its URL stops working, its history remains (hook:delete)",
                "incoming hooks",
                {204: no_content("Deleted.")},
                errors=(403, 404),
                parameters=[HOOK],
            ),
        },
        "/hooks/incoming/{hook_id}/secret/rotate": {
            "post": operation(
                "rotateIncomingHookSecret",
                "Issue a new secret, shown once; the old one works for the grace period "
                "(hook:update)",
                "incoming hooks",
                {200: json_body(ref("IncomingHook"), "The hook with its new secret.")},
                errors=(403, 404, 422),
                parameters=[HOOK],
                body=inputs.ROTATE_SECRET,
                body_required=False,
            )
        },
        "/hooks/incoming/{hook_id}/requests": {
            "get": operation(
                "listIncomingHookRequests",
                "A hook's recorded requests, newest first (hook:read)",
                "history",
                {200: page(ref("HookRequestSummary"), "A page of recorded requests.")},
                errors=(403, 404, 422),
                parameters=[HOOK, *PAGE_PARAMETERS, list_filter("outcome", "requests", OUTCOMES)],
            )
        },
        "/hook-requests/{request_id}": {
            "get": operation(
                "getHookRequest",
                "One recorded request with redacted headers and decoded body (hook:read)",
                "history",
                {
                    200: json_body(
                        {"oneOf": [ref("HookRequest"), ref("OutgoingAttemptDetail")]},
                        "The recorded request: one to an incoming hook, or an outgoing attempt "
                        "(as in its hook's attempts list).",
                    )
                },
                errors=(403, 404),
                parameters=[REQUEST],
            )
        },
        "/hook-requests/{request_id}/replay": {
            "post": operation(
                "replayHookRequest",
                "Re-run a recorded request against the hook's current definition, or redeliver "
                "an outgoing attempt (hook:update)",
                "history",
                {
                    202: json_body(
                        {"oneOf": [REPLAY_ACCEPTED, REPLAY_SKIPPED, REDELIVERY]},
                        "Run queued, skipped by the trigger conditions, or redelivery queued.",
                    ),
                    415: _replay_rejection("The stored content type is not supported."),
                    422: _replay_rejection("The payload does not provide valid variables."),
                    400: _replay_rejection("The stored body is not valid JSON."),
                    500: _replay_rejection(
                        "The hook's stored definition is invalid, or the request could not be "
                        "stored."
                    ),
                },
                errors=(403, 404, 409),
                parameters=[REQUEST],
            )
        },
    }


def _outgoing() -> dict[str, Schema]:
    hook = path_uuid("hook_id", "outgoing hook")
    return {
        "/pipelines/{pipeline_id}/hooks/outgoing": {
            "post": operation(
                "createOutgoingHook",
                "Create an outgoing hook; the response carries its secret once (hook:create)",
                "outgoing hooks",
                {201: json_body(ref("OutgoingHook"), "The new hook.", HOOK_CREATED)},
                errors=(403, 404, 422),
                parameters=[PIPELINE],
                body=inputs.outgoing_hook(partial=False),
                example={
                    "name": "notify chat",
                    "target_url": "https://chat.example.com/hooks/deploys",
                    "trigger_when": {"events": ["run.completed", "run.failed"]},
                },
            ),
            "get": operation(
                "listOutgoingHooks",
                "A pipeline's outgoing hooks, oldest first (hook:read)",
                "outgoing hooks",
                {200: page(ref("OutgoingHook"), "A page of outgoing hooks.")},
                errors=(403, 404, 422),
                parameters=[PIPELINE, *PAGE_PARAMETERS],
            ),
        },
        "/hooks/outgoing/{hook_id}": {
            "get": operation(
                "getOutgoingHook",
                "One outgoing hook (hook:read)",
                "outgoing hooks",
                {200: json_body(ref("OutgoingHook"), "The hook.")},
                errors=(403, 404),
                parameters=[hook],
            ),
            "put": operation(
                "updateOutgoingHook",
                "Change an outgoing hook; members sent replace stored ones (hook:update)",
                "outgoing hooks",
                {200: json_body(ref("OutgoingHook"), "The updated hook.")},
                errors=(403, 404, 422),
                parameters=[hook],
                body=inputs.outgoing_hook(partial=True),
            ),
            "delete": operation(
                "deleteOutgoingHook",
                "Delete an outgoing hook and its undelivered deliveries (hook:delete)",
                "outgoing hooks",
                {204: no_content("Deleted.")},
                errors=(403, 404),
                parameters=[hook],
            ),
        },
        "/hooks/outgoing/{hook_id}/secret/rotate": {
            "post": operation(
                "rotateOutgoingHookSecret",
                "Issue a new signing secret, shown once; deliveries are signed with the old "
                "one too for the grace period (hook:update)",
                "outgoing hooks",
                {200: json_body(ref("OutgoingHook"), "The hook with its new secret.")},
                errors=(403, 404, 409, 422),
                parameters=[hook],
                body=inputs.ROTATE_SECRET,
                body_required=False,
            )
        },
        "/hooks/outgoing/{hook_id}/requests": {
            "get": operation(
                "listOutgoingAttempts",
                "A hook's delivery attempts, newest first (hook:read)",
                "outgoing hooks",
                {200: page(ref("OutgoingAttempt"), "A page of attempts.")},
                errors=(403, 404, 422),
                parameters=[
                    hook,
                    *PAGE_PARAMETERS,
                    list_filter("outcome", "attempts", ATTEMPT_OUTCOMES),
                ],
            )
        },
        "/hooks/outgoing/{hook_id}/deliveries": {
            "get": operation(
                "listOutgoingDeliveries",
                "A hook's deliveries, newest first (hook:read)",
                "outgoing hooks",
                {200: page(ref("OutgoingDelivery"), "A page of deliveries.")},
                errors=(403, 404, 422),
                parameters=[
                    hook,
                    *PAGE_PARAMETERS,
                    list_filter("status", "deliveries", DELIVERY_STATUSES),
                ],
            )
        },
    }


def paths() -> dict[str, Schema]:
    """Incoming hooks, outgoing hooks, history and replay."""
    return {**_incoming(), **_outgoing()}
