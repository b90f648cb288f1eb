"""Validation of the incoming-hook body (the seed's create body, verbatim) for create and PUT.

Every problem is collected before answering, with field keys such as ``name``,
``settings.variables.1.type`` or ``trigger_when.conditions.0.path``. The result holds the column
values as stored: ``trigger_when`` normalised to ``{"conditions": [...]}`` and ``settings`` to
``{"variables": [...], "delivery_id_header": str | None}``, plus, when given, the request limits
``rate_limit: {"per_second", "burst"} | None`` and ``allowed_ips: [CIDR, ...] | None``
(gateway.ingest.limits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.ingest.conditions import condition_paths, parse_trigger_when
from gateway.ingest.evaluation import delivery_id_header_problem
from gateway.ingest.limits import parse_limits_settings
from gateway.ingest.paths import regular_expression_errors
from gateway.ingest.signatures import SUPPORTED_ALGORITHMS
from gateway.ingest.variables import parse_variable_specs
from gateway.management.bodies import Fields

HOOK_BODY_FIELDS = (
    "name",
    "active",
    "requires_secret",
    "secret_algorithm",
    "secret_header_name",
    "action_type",
    "trigger_when",
    "settings",
)
SETTINGS_FIELDS = ("variables", "delivery_id_header", "rate_limit", "allowed_ips")
LIMITS_FIELDS = ("rate_limit", "allowed_ips")
DEFAULT_ALGORITHM = "sha256"
DEFAULT_HEADER_NAME = "x-hub-signature-256"
MAX_NAME_LENGTH = 60
MAX_HEADER_NAME_LENGTH = 64
ALGORITHMS = tuple(sorted(SUPPORTED_ALGORITHMS))
# RFC 9110 token characters (the name is lower-cased first).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_HEADER_NAME_MESSAGE = "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
# Headers that HTTP, the gateway or a proxy in front of it own: a signature there could never
# arrive intact (a Content-Type of "sha256=..." is refused with 415, and the message would
# carry it), would be rewritten on the way, or echoed back (X-Request-Id).
HTTP_OWNED_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "x-request-id",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
# Keys whose JSON null means "reset to the default" rather than "missing".
_NULLABLE = frozenset({"trigger_when", "settings"})


def parse_incoming_hook(body: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """Column values from a create (``partial=False``: every column, defaults filled in) or an
    update body (``partial=True``: only the keys present; ``settings`` only the keys present
    in it, to be merged). Raise ValidationFailed (422) naming every bad field."""
    fields = Fields(body, HOOK_BODY_FIELDS)
    if partial:
        for key in HOOK_BODY_FIELDS:
            if key in body and body[key] is None and key not in _NULLABLE:
                fields.add(key, "must not be null")
    required = not partial
    values: dict[str, Any] = {
        "name": fields.name("name", required=required, max_length=MAX_NAME_LENGTH),
        "active": fields.boolean("active", default=True),
        "requires_secret": fields.boolean("requires_secret", default=True),
        "secret_algorithm": fields.string(
            "secret_algorithm", required=False, default=DEFAULT_ALGORITHM, choices=ALGORITHMS
        ),
        "secret_header_name": _secret_header_name(fields),
        "action_type": fields.string("action_type", required=required, max_length=60),
    }
    if not partial or "trigger_when" in body:
        conditions, errors = parse_trigger_when(body.get("trigger_when"))
        fields.merge(errors)
        values["trigger_when"] = conditions.to_json()
    if not partial or "settings" in body:
        values["settings"] = _settings(fields, body.get("settings"), partial=partial)
    fields.merge(regular_expression_errors(_paths(body)))
    if not partial:
        check_delivery_id_header(fields, values)
    fields.check()
    if partial:
        values = {k: v for k, v in values.items() if k in body}
    return values


def check_delivery_id_header(fields: Fields, hook: Mapping[str, Any]) -> None:
    """Add the error of ``settings.delivery_id_header`` for the hook as it will be stored
    (``hook``: a create's values, or a stored hook with an update's changes merged in)."""
    settings = hook.get("settings")
    header = settings.get("delivery_id_header") if isinstance(settings, dict) else None
    problem = delivery_id_header_problem(
        header if isinstance(header, str) else None,
        requires_secret=bool(hook.get("requires_secret")),
        secret_header_name=str(hook.get("secret_header_name") or ""),
    )
    if problem is not None:
        fields.add("settings.delivery_id_header", problem)


def merged_hook(stored: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The hook as an update would leave it: ``changes`` over ``stored``, ``settings`` keys
    merged (as the update query does)."""
    merged = {**stored, **changes}
    if "settings" in changes:
        merged["settings"] = {**(stored.get("settings") or {}), **changes["settings"]}
    return merged


def _paths(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(field, path) of every condition and variable path in a create or update body."""
    paths = condition_paths(body.get("trigger_when"))
    settings = body.get("settings")
    variables = settings.get("variables") if isinstance(settings, dict) else None
    if isinstance(variables, list):
        paths += [
            (f"settings.variables.{i}.path", item.get("path"))
            for i, item in enumerate(variables)
            if isinstance(item, dict)
        ]
    return paths


def _header_name(fields: Fields, key: str, default: str | None, *, nullable: bool) -> Any:
    """A header-name field: lower-cased, at most 64 characters, RFC 9110 token characters."""
    if nullable and fields.body.get(key) is None:
        return None
    value = fields.string(key, required=False, default=default, max_length=MAX_HEADER_NAME_LENGTH)
    if not isinstance(value, str):
        return value
    value = value.lower()
    if value and not _HEADER_NAME.fullmatch(value):
        fields.add(key, _HEADER_NAME_MESSAGE)
    return value


def _secret_header_name(fields: Fields) -> Any:
    value = _header_name(fields, "secret_header_name", DEFAULT_HEADER_NAME, nullable=False)
    if value in HTTP_OWNED_HEADERS:
        fields.add(
            "secret_header_name",
            f"must not be {value!r}: HTTP or a proxy owns that header; choose a header of "
            "your own, e.g. x-hub-signature-256",
        )
    return value


def _settings(fields: Fields, raw: Any, *, partial: bool) -> dict[str, Any]:
    """The ``settings`` object: ``variables``, ``delivery_id_header`` and the limits (only the
    keys given when ``partial``, so that an update merges them into the stored settings)."""
    if raw is None:  # absent, or null: the defaults (a PUT with null resets them)
        defaults: dict[str, Any] = {"variables": [], "delivery_id_header": None}
        return {**defaults, **dict.fromkeys(LIMITS_FIELDS)} if partial else defaults
    if not isinstance(raw, dict):
        fields.add("settings", "must be an object")
        return {}
    inner = Fields(raw, SETTINGS_FIELDS, prefix="settings.")
    settings: dict[str, Any] = {}
    if not partial or "variables" in raw:
        specs, errors = parse_variable_specs(
            raw.get("variables") if raw.get("variables") is not None else []
        )
        inner.merge(errors)
        settings["variables"] = [spec.to_json() for spec in specs]
    if not partial or "delivery_id_header" in raw:
        settings["delivery_id_header"] = _header_name(
            inner, "delivery_id_header", None, nullable=True
        )
    # Limits are stored only when given, and not as null (the same as none): hooks without them
    # keep the seed's settings shape. An update passes a null on, to remove the stored limit.
    limits, errors = parse_limits_settings(raw)
    inner.merge(errors)
    settings.update(
        (k, v) for k, v in limits.to_json().items() if k in raw and (partial or v is not None)
    )
    fields.merge(inner.errors, inner.more)
    return settings
