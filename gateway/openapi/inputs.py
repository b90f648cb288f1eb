"""Request body schemas, mirroring the validation in gateway/management (bodies.Fields and the
``*_input`` modules): unknown members are refused (422), optional members accept null as "not
given" where the view does, and limits are the views' own constants.

Some rules cannot be written as JSON Schema (a JSONPath that must compile, a CIDR without host
bits, a role closed under its implied permissions, a template that must parse); the views answer
422 for those, so every body these schemas reject is also refused by the server.
"""

from __future__ import annotations

from gateway import permissions_catalog, run_states
from gateway.config import MAX_PASSWORD_LENGTH
from gateway.ingest import conditions, limits, variables
from gateway.management import incoming_hook_input as incoming
from gateway.management import outgoing_hook_input, tokens
from gateway.management.bodies import MAX_GRACE_PERIOD
from gateway.openapi.common import ID, Schema, array, nullable, obj, text

BOOLEAN: Schema = {"type": "boolean"}
HEADER_NAME: Schema = {
    "type": "string",
    "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
    "maxLength": incoming.MAX_HEADER_NAME_LENGTH,
}
SLUG: Schema = {"type": "string", "pattern": r"^[a-z][a-z0-9_-]*$", "maxLength": 60}
SCALAR: Schema = {"type": ["string", "number", "boolean", "null"]}


def optional_int(minimum: int, maximum: int) -> Schema:
    """An optional integer member (null: the default)."""
    return nullable({"type": "integer", "minimum": minimum, "maximum": maximum})


CONDITION: Schema = obj(
    {
        "path": {"type": "string", "description": "Dot path or JSONPath into the payload."},
        "accepted_values": array(SCALAR, minItems=1, maxItems=conditions.MAX_ACCEPTED_VALUES),
    }
)
CONDITIONS: Schema = nullable(array(CONDITION, maxItems=conditions.MAX_CONDITIONS))
VARIABLE: Schema = obj(
    {
        "name": {
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "maxLength": variables.MAX_NAME_LENGTH,
        },
        "type": {"enum": sorted(variables.VARIABLE_TYPES)},
    },
    {
        "path": nullable({"type": "string", "description": "Defaults to the name."}),
        "required": nullable(BOOLEAN),
        "default_value": {"description": "Coerced to the type; null: no default."},
    },
)
RATE_LIMIT: Schema = obj(
    {"per_second": {"type": "number", "minimum": 0, "maximum": limits.MAX_RATE}},
    {"burst": optional_int(0, limits.MAX_BURST)},
)
INCOMING_SETTINGS: Schema = nullable(
    obj(
        {},
        {
            "variables": nullable(array(VARIABLE, maxItems=variables.MAX_VARIABLES)),
            "delivery_id_header": nullable(HEADER_NAME),
            "rate_limit": nullable(RATE_LIMIT),
            "allowed_ips": nullable(
                array(
                    {"type": "string", "description": "An IP address or CIDR network."},
                    minItems=1,
                    maxItems=limits.MAX_ALLOWED_IPS,
                )
            ),
        },
    )
)
INCOMING_TRIGGER_WHEN: Schema = nullable(obj({}, {"conditions": CONDITIONS}))
ALGORITHM: Schema = {"enum": list(incoming.ALGORITHMS)}


def incoming_hook(*, partial: bool) -> Schema:
    """Create (``partial=False``) or update body of an incoming hook."""
    name = text(incoming.MAX_NAME_LENGTH)
    action = text(60)
    members: dict[str, Schema] = {
        "active": BOOLEAN,
        "requires_secret": BOOLEAN,
        # Create: null means the default; update: null is refused ("must not be null").
        "secret_algorithm": ALGORITHM if partial else nullable(ALGORITHM),
        "secret_header_name": HEADER_NAME if partial else nullable(HEADER_NAME),
        "trigger_when": INCOMING_TRIGGER_WHEN,
        "settings": INCOMING_SETTINGS,
    }
    if partial:
        return obj({}, {"name": name, "action_type": action, **members})
    return obj({"name": name, "action_type": action}, members)


ROTATE_SECRET: Schema = obj({}, {"grace_period_seconds": optional_int(0, MAX_GRACE_PERIOD)})

OUTGOING_HEADER: Schema = obj(
    {
        "name": {"type": "string", "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"},
        "value": {
            "type": "string",
            "maxLength": outgoing_hook_input.MAX_HEADER_VALUE,
            "description": "A template. ``********`` keeps the stored value of the same header. "
            "Always the plaintext: a credential header's value (Authorization, API keys, "
            "tokens) cannot start with ``enc:``, and no value can start with ``enc:v1:``, the "
            "stored (encrypted) form (422).",
        },
    }
)
OUTGOING_SETTINGS: Schema = nullable(
    obj(
        {},
        {
            "request_headers": nullable(
                array(OUTGOING_HEADER, maxItems=outgoing_hook_input.MAX_HEADERS)
            ),
            "request_body": {
                "type": ["string", "object", "array", "null"],
                "description": "A template: string, object, array or null.",
            },
            "method": nullable({"enum": list(outgoing_hook_input.METHODS)}),
            "timeout": nullable(
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": outgoing_hook_input.MAX_TIMEOUT,
                }
            ),
            "signature_header": nullable(HEADER_NAME),
            "signature_algorithm": nullable({"enum": list(incoming.ALGORITHMS)}),
        },
    )
)
OUTGOING_TRIGGER_WHEN: Schema = obj(
    {"events": array({"enum": list(outgoing_hook_input.EVENTS)}, minItems=1)},
    {"conditions": CONDITIONS},
)


def outgoing_hook(*, partial: bool) -> Schema:
    """Create (``partial=False``) or update body of an outgoing hook."""
    name = text(outgoing_hook_input.MAX_NAME)
    url = text(outgoing_hook_input.MAX_URL)
    members: dict[str, Schema] = {
        "active": BOOLEAN,
        "requires_secret": BOOLEAN,
        "settings": OUTGOING_SETTINGS,
    }
    if partial:
        return obj(
            {},
            {"name": name, "target_url": url, "trigger_when": OUTGOING_TRIGGER_WHEN, **members},
        )
    return obj({"name": name, "target_url": url, "trigger_when": OUTGOING_TRIGGER_WHEN}, members)


def pipeline(*, partial: bool) -> Schema:
    """Create (``partial=False``) or update body of a pipeline."""
    members = {
        "name": text(100),
        "resource_type": SLUG,
        "resource_id": ID,
        "action_type": SLUG,
    }
    return obj({}, members) if partial else obj(members)


ENVIRONMENT: Schema = obj(
    {"name": text(100)}, {"description": nullable({"type": "string", "maxLength": 1000})}
)
# Passwords are taken exactly as given, spaces included (management.users): no "\S" pattern.
PASSWORD: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_LENGTH}
LOGIN: Schema = obj({"email": text(254), "password": PASSWORD})
REFRESH: Schema = obj({"refresh_token": text(256)})
NEW_USER: Schema = obj(
    {"email": text(254), "password": PASSWORD},
    {"name": nullable({"type": "string", "maxLength": 120}), "is_admin": BOOLEAN},
)
LOGOUT: Schema = obj({}, {"refresh_token": nullable(text(256))})  # null: as if absent
PASSWORD_CHANGE: Schema = obj({"current_password": PASSWORD, "new_password": PASSWORD})
USER_CHANGE: Schema = obj(
    {},
    {
        "name": nullable({"type": "string", "maxLength": 120}),
        "is_admin": BOOLEAN,
        "is_active": BOOLEAN,
        "password": nullable(PASSWORD),  # null: unchanged
    },
)
ROLE: Schema = obj(
    {
        "name": text(100),
        "permissions": array(
            {"enum": list(permissions_catalog.PERMISSIONS)},
            maxItems=permissions_catalog.MAX_ROLE_ITEMS,
        ),
    }
)
TEAM: Schema = obj({"name": text(100)})
MEMBER: Schema = obj({"user_id": ID})
LINK: Schema = obj({"role_id": ID})
NEW_TOKEN: Schema = obj(
    {"name": text(100)}, {"expires_in_days": optional_int(1, tokens.MAX_EXPIRY_DAYS)}
)

LEASE_TOKEN: Schema = {
    "type": "string",
    "format": "uuid",
    "description": "The lease_token returned by POST /runs/claim.",
}
INT32 = 2**31 - 1
LEASE_SECONDS = optional_int(run_states.MIN_LEASE_SECONDS, run_states.MAX_LEASE_SECONDS)
CLAIM: Schema = obj(
    {},
    {
        "pipeline_id": nullable(ID),
        "limit": optional_int(1, 100),
        "lease_seconds": LEASE_SECONDS,
    },
)
RUN_STATUS: Schema = {
    **obj(
        {"status": {"enum": list(run_states.STATUSES)}},
        {
            "lease_token": LEASE_TOKEN,
            "message": nullable({"type": "string", "maxLength": 2000}),
            "output": nullable({"type": "string"}),
            "exit_code": optional_int(-INT32 - 1, INT32),
        },
    ),
    # Cancelling needs no lease (a queued run has none); every other move is the holder's.
    "if": {"properties": {"status": {"not": {"const": run_states.CANCELLED}}}},
    "then": {"required": ["lease_token"]},
}
HEARTBEAT: Schema = obj({"lease_token": LEASE_TOKEN}, {"lease_seconds": LEASE_SECONDS})
CONCURRENCY: Schema = obj(
    {"policy": {"enum": list(run_states.POLICIES)}},
    {
        "key": nullable({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 64}),
        "max_attempts": optional_int(1, 100),
    },
)
