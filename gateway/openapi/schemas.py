"""Component schemas of the responses: what each view's ``*_json`` function returns.

Objects are closed (``additionalProperties: false``) so that a field added to a view without
being documented here fails the schemathesis run in CI.
"""

from __future__ import annotations

from gateway.management.outgoing_history import DELIVERY_STATUSES
from gateway.openapi.common import (
    BOOLEAN,
    ID,
    INTEGER,
    STRING,
    TIMESTAMP,
    UUID,
    Schema,
    array,
    nullable,
    obj,
    ref,
)
from gateway.run_states import POLICIES, STATUSES

NULL: Schema = {"type": "null"}
ANY: Schema = {}
MESSAGES = {"type": "object", "additionalProperties": array(STRING)}

ERROR = obj(
    {
        "message": STRING,
        "errors": {
            "description": "Field name (dotted for nested fields) to messages; null when the "
            "error is not about particular fields.",
            "oneOf": [MESSAGES, NULL],
        },
    }
)

USER = obj(
    {
        "id": ID,
        "email": STRING,
        "name": STRING,
        "is_admin": BOOLEAN,
        "is_active": {
            "type": "boolean",
            "description": "False: disabled; the user can neither log in nor use any token.",
        },
        "created_at": TIMESTAMP,
    }
)
TOKEN_PAIR = obj(
    {
        "token_type": {"const": "Bearer"},
        "access_token": STRING,
        "expires_in": {"type": "integer", "description": "Seconds the access token lives."},
        "refresh_token": STRING,
    }
)
ENVIRONMENT = obj({"id": ID, "name": STRING, "description": STRING, "created_at": TIMESTAMP})
PIPELINE = obj(
    {
        "id": ID,
        "environment_id": ID,
        "name": STRING,
        "resource_type": STRING,
        "resource_id": ID,
        "action_type": STRING,
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)

SCALAR = {"type": ["string", "number", "boolean", "null"]}
CONDITION = obj({"path": STRING, "accepted_values": array(SCALAR, minItems=1)})
VARIABLE = obj(
    {
        "name": STRING,
        "path": STRING,
        "type": {"enum": ["array", "boolean", "integer", "number", "object", "string"]},
        "required": BOOLEAN,
        "default_value": ANY,
    }
)
RATE_LIMIT = obj({"per_second": {"type": "number"}, "burst": INTEGER})
INCOMING_SETTINGS = obj(
    {"variables": array(ref("Variable")), "delivery_id_header": nullable(STRING)},
    {"rate_limit": nullable(RATE_LIMIT), "allowed_ips": nullable(array(STRING))},
)
INCOMING_HOOK = obj(
    {
        "id": UUID,
        "type": {"const": "incoming"},
        "pipeline_id": ID,
        "environment_id": ID,
        "name": STRING,
        "active": BOOLEAN,
        "url": {"type": "string", "description": "Where senders POST deliveries."},
        "action_type": STRING,
        "requires_secret": BOOLEAN,
        "secret_algorithm": STRING,
        "secret_header_name": STRING,
        "secret": {
            "type": "string",
            "description": "``********`` except in the create and rotate responses.",
        },
        "previous_secret_expires_at": nullable(TIMESTAMP),
        "trigger_when": obj({"conditions": array(ref("Condition"))}),
        "settings": ref("IncomingHookSettings"),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)

OUTGOING_SETTINGS = obj(
    {
        "request_headers": array(obj({"name": STRING, "value": STRING})),
        "request_body": {"description": "A template: string, object, array or null."},
        "method": {"enum": ["POST", "PUT", "PATCH"]},
        "timeout": nullable({"type": "number"}),
        "signature_header": nullable(STRING),
        "signature_algorithm": STRING,
    }
)
OUTGOING_HOOK = obj(
    {
        "id": UUID,
        "type": {"const": "outgoing"},
        "pipeline_id": ID,
        "environment_id": ID,
        "name": STRING,
        "active": BOOLEAN,
        "target_url": STRING,
        "requires_secret": BOOLEAN,
        "secret": {
            "description": "``whsec_...`` once (create, rotate, or the update that turns "
            "requires_secret on), ``********`` afterwards, null without a secret.",
            "oneOf": [STRING, NULL],
        },
        "previous_secret_expires_at": {
            "description": "Until when deliveries also carry a webhook-signature by the "
            "secret the last rotation replaced; null: none.",
            **nullable(TIMESTAMP),
        },
        "trigger_when": obj({"events": array(STRING), "conditions": array(ref("Condition"))}),
        "settings": ref("OutgoingHookSettings"),
        "consecutive_failures": INTEGER,
        "disabled_reason": nullable(STRING),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)
ANY_HOOK = {
    "oneOf": [ref("IncomingHook"), ref("OutgoingHook")],
    "discriminator": {
        "propertyName": "type",
        "mapping": {
            "incoming": "#/components/schemas/IncomingHook",
            "outgoing": "#/components/schemas/OutgoingHook",
        },
    },
}

RUN_FIELDS: dict[str, Schema] = {
    "id": UUID,
    "pipeline_id": ID,
    "status": {"enum": list(STATUSES)},
    "variables": {"type": "object"},
    "attempt": INTEGER,
    "message": STRING,
    "exit_code": nullable(INTEGER),
    "triggered_from": nullable(
        obj({"type": {"const": "incoming_hook"}, "hook_id": UUID, "request_id": nullable(UUID)})
    ),
    "queued_at": TIMESTAMP,
    "started_at": nullable(TIMESTAMP),
    "finished_at": nullable(TIMESTAMP),
}
RUN = obj(RUN_FIELDS)
RUN_DETAIL = obj({**RUN_FIELDS, "output": STRING})
CLAIMED_RUN = obj({**RUN_FIELDS, "lease_token": UUID, "lease_expires_at": TIMESTAMP})
HEARTBEAT = obj({"id": UUID, "status": {"const": "in-progress"}, "lease_expires_at": TIMESTAMP})
CONCURRENCY_FIELDS: dict[str, Schema] = {
    "pipeline_id": ID,
    "policy": {"enum": list(POLICIES)},
    "key": nullable(STRING),
    "max_attempts": INTEGER,
}
CONCURRENCY = obj(CONCURRENCY_FIELDS)
CONCURRENCY_SET = obj({**CONCURRENCY_FIELDS, "rekeyed_runs": INTEGER})

SUMMARY_FIELDS: dict[str, Schema] = {
    "id": UUID,
    "hook_id": UUID,
    "hook_type": {"enum": ["incoming", "outgoing"]},
    "received_at": TIMESTAMP,
    "client_ip": nullable(STRING),
    "outcome": STRING,
    "status_code": INTEGER,
    "message": STRING,
    "run_id": nullable(UUID),
    "delivery_id": nullable(STRING),
    "latency_ms": nullable({"type": "number"}),
    "retry_of": nullable(UUID),
    "body_size": INTEGER,
    "body_stored": BOOLEAN,
}
HOOK_REQUEST_SUMMARY = obj(SUMMARY_FIELDS)
DETAIL_FIELDS: dict[str, Schema] = {
    "pipeline_id": nullable(ID),
    "environment_id": nullable(ID),
    "headers": {"type": "object", "additionalProperties": STRING},
    "body_format": {"enum": ["json", "text", "base64", None]},
    "body": {"description": "Parsed JSON, text, base64 text, or null when not stored."},
}
HOOK_REQUEST = obj({**SUMMARY_FIELDS, "hook_type": {"const": "incoming"}, **DETAIL_FIELDS})
OUTGOING_ATTEMPT_FIELDS: dict[str, Schema] = {
    "id": UUID,
    "hook_id": UUID,
    "hook_type": {"const": "outgoing"},
    "sent_at": TIMESTAMP,
    "attempt": nullable(INTEGER),
    "method": nullable(STRING),
    "target_url": nullable(STRING),
    "headers": {"type": "object", "additionalProperties": STRING},
    "body_size": INTEGER,
    "body_stored": BOOLEAN,
    "outcome": STRING,
    "status_code": INTEGER,
    "message": STRING,
    "response_excerpt": nullable(STRING),
    "latency_ms": nullable({"type": "number"}),
    "run_id": nullable(UUID),
    "delivery_id": nullable(STRING),
    "retry_of": nullable(UUID),
}
OUTGOING_ATTEMPT = obj(OUTGOING_ATTEMPT_FIELDS)
OUTGOING_ATTEMPT_DETAIL = obj({**OUTGOING_ATTEMPT_FIELDS, **DETAIL_FIELDS})
OUTGOING_DELIVERY = obj(
    {
        "id": UUID,
        "hook_id": UUID,
        "run_id": nullable(UUID),
        "event": STRING,
        "status": {"enum": list(DELIVERY_STATUSES)},
        "attempt": INTEGER,
        "next_attempt_at": TIMESTAMP,
        "last_status_code": nullable(INTEGER),
        "last_error": nullable(STRING),
        "retry_of": nullable(UUID),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)

PERMISSION = obj({"name": STRING, "requires": array(STRING)})
ROLE = obj({"id": ID, "name": STRING, "permissions": array(STRING), "created_at": TIMESTAMP})
TEAM = obj({"id": ID, "name": STRING, "member_count": INTEGER, "created_at": TIMESTAMP})
ENVIRONMENT_LINK = obj(
    {
        "environment_id": ID,
        "team": obj({"id": ID, "name": STRING}),
        "role": obj({"id": ID, "name": STRING, "permissions": array(STRING)}),
    }
)
TOKEN_FIELDS: dict[str, Schema] = {
    "id": ID,
    "name": STRING,
    "created_at": TIMESTAMP,
    "expires_at": nullable(TIMESTAMP),
    "revoked_at": nullable(TIMESTAMP),
    "last_used_at": nullable(TIMESTAMP),
    "active": BOOLEAN,
}
PERSONAL_TOKEN = obj(TOKEN_FIELDS)
CREATED_TOKEN = obj({**TOKEN_FIELDS, "token": {"type": "string", "description": "Shown once."}})

COMPONENT_SCHEMAS: dict[str, Schema] = {
    "Error": ERROR,
    "User": USER,
    "TokenPair": TOKEN_PAIR,
    "Environment": ENVIRONMENT,
    "Pipeline": PIPELINE,
    "Condition": CONDITION,
    "Variable": VARIABLE,
    "IncomingHookSettings": INCOMING_SETTINGS,
    "IncomingHook": INCOMING_HOOK,
    "OutgoingHookSettings": OUTGOING_SETTINGS,
    "OutgoingHook": OUTGOING_HOOK,
    "Hook": ANY_HOOK,
    "Run": RUN,
    "RunDetail": RUN_DETAIL,
    "ClaimedRun": CLAIMED_RUN,
    "Heartbeat": HEARTBEAT,
    "Concurrency": CONCURRENCY,
    "ConcurrencySet": CONCURRENCY_SET,
    "HookRequestSummary": HOOK_REQUEST_SUMMARY,
    "HookRequest": HOOK_REQUEST,
    "OutgoingAttempt": OUTGOING_ATTEMPT,
    "OutgoingAttemptDetail": OUTGOING_ATTEMPT_DETAIL,
    "OutgoingDelivery": OUTGOING_DELIVERY,
    "Permission": PERMISSION,
    "Role": ROLE,
    "Team": TEAM,
    "EnvironmentLink": ENVIRONMENT_LINK,
    "PersonalToken": PERSONAL_TOKEN,
    "CreatedPersonalToken": CREATED_TOKEN,
}
