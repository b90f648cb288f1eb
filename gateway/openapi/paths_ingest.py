"""Paths served without bearer authentication: the trigger endpoint (senders authenticate with
a signature), the probes, the Prometheus metrics and this document."""

from __future__ import annotations

from gateway.openapi.common import (
    JSON,
    RETRY_AFTER_HEADER,
    STRING,
    UUID,
    Schema,
    error,
    json_body,
    obj,
    path_uuid,
)

NULL: Schema = {"type": "null"}
RUN_ID_HEADER: dict[str, Schema] = {
    "X-Run-Id": {"description": "The run of this delivery.", "required": True, "schema": UUID}
}
ACCEPTED = obj({"message": STRING, "run_id": UUID, "errors": NULL})
SKIPPED = obj(
    {
        "message": STRING,
        "run_id": NULL,
        "skipped": {"const": True},
        "reason": {"type": "string", "description": "Which trigger condition did not match."},
        "errors": NULL,
    }
)
DUPLICATE = obj({"message": STRING, "run_id": UUID, "duplicate": {"const": True}, "errors": NULL})

# Optional request headers senders use; which one carries the signature is the hook's
# ``secret_header_name`` (any header name may be configured).
_SIGNATURE_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Hub-Signature-256", "GitHub-style HMAC of the raw body: ``sha256=<hex>`` (the default)."),
    ("X-Gitlab-Token", "GitLab's shared token, compared in constant time."),
    ("webhook-id", "Standard Webhooks message id (signed, and a delivery id)."),
    ("webhook-timestamp", "Standard Webhooks timestamp (seconds), within the tolerance."),
    ("webhook-signature", "Standard Webhooks signatures: ``v1,<base64>`` separated by spaces."),
    ("X-GitHub-Delivery", "Delivery id: a repeated one answers 200 without a second run."),
    ("Idempotency-Key", "Delivery id used when the hook names no other header."),
    ("X-Request-Id", "Echoed in the response when sane (1-128 of A-Z a-z 0-9 . _ : -)."),
)


def _trigger() -> Schema:
    parameters = [path_uuid("hook_id", "incoming hook")] + [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": {"type": "string"},
        }
        for name, description in _SIGNATURE_HEADERS
    ]
    responses: dict[str, Schema] = {
        "200": json_body(DUPLICATE, "A repeated delivery id: the original run.", RUN_ID_HEADER),
        "202": json_body(
            {"oneOf": [ACCEPTED, SKIPPED]},
            "Committed: a run was queued (with X-Run-Id), or the trigger conditions did not "
            "match and the request was recorded as skipped.",
            {"X-Run-Id": {**RUN_ID_HEADER["X-Run-Id"], "required": False}},  # not when skipped
        ),
        "400": error(400, "The body is empty or not JSON, or the form has no payload field."),
        "401": error(401, "The signature is missing, malformed, stale or does not match."),
        "403": error(403, "The hook is inactive, or the client address is not allowed."),
        "404": error(404, "No such incoming hook."),
        "408": error(408, "The body did not arrive within server.body_timeout (recorded)."),
        "413": error(413, "The body is larger than server.max_body_bytes."),
        "415": error(415, "Neither JSON nor a form with a payload field."),
        "417": error(417, "An Expect header other than 100-continue (not recorded)."),
        "422": error(422, "The payload does not provide valid variables."),
        "429": error(429, "The hook's rate limit is exceeded."),
        "500": error(500, "The hook's stored definition is invalid; an operator must fix it."),
        "503": error(503, "Not stored (database unavailable or queue full); retry later."),
    }
    return {
        "post": {
            "operationId": "triggerIncomingHook",
            "summary": "Deliver a webhook: verified, evaluated and durably queued as a run",
            "description": "A 2xx is sent only after the request (and its run) is committed. "
            "Senders should retry 429 and 503 with the same delivery id.",
            "tags": ["ingest"],
            "security": [],
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": {"description": "Any JSON document."}},
                    "application/x-www-form-urlencoded": {
                        "schema": obj({"payload": {"type": "string"}}),
                    },
                },
            },
            "responses": responses,
        }
    }


def _probe(operation_id: str, summary: str, body: Schema, extra: dict[str, Schema]) -> Schema:
    responses = {"200": {"description": "OK.", "content": {JSON: {"schema": body}}}, **extra}
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["operations"],
            "security": [],
            "responses": responses,
        }
    }


def paths() -> dict[str, Schema]:
    """The trigger endpoint, probes, metrics and /openapi.json."""
    not_ready = {
        "description": "The database is unreachable.",
        "headers": {"Retry-After": RETRY_AFTER_HEADER},
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    metrics = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics, summed over the worker processes",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    document = _probe("openapi", "This document (OpenAPI 3.1)", {"type": "object"}, {})
    return {
        "/hooks/incoming/{hook_id}": _trigger(),
        "/healthz": _probe(
            "healthz", "Liveness: the process serves", obj({"status": {"const": "ok"}}), {}
        ),
        "/readyz": _probe(
            "readyz",
            "Readiness: the database answers",
            obj({"status": {"const": "ready"}, "database": {"const": "ok"}}),
            {"503": not_ready},
        ),
        "/metrics": metrics,
        "/openapi.json": document,
    }
