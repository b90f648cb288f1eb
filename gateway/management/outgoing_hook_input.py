"""Validating an outgoing hook's create/update body into stored values (422 names each field).

Body: ``name`` (<= 60), ``target_url`` (template, http/https), ``active`` (default true),
``requires_secret`` (default true), ``trigger_when`` ``{events: [...] (at least one),
conditions: [{path, accepted_values}]}`` and ``settings`` ``{request_headers: [{name, value}],
request_body: string | object | array | null, method: POST|PUT|PATCH, timeout: seconds | null,
signature_header: header name | null, signature_algorithm: sha1|sha256|sha384|sha512}``.

An update (PUT) may send any subset of the top-level fields; each one sent replaces the stored
one as a whole (``settings`` too). A request header value equal to the mask ``********`` keeps
the stored value of the header of the same name, so a read-modify-write round trip of a hook
whose credentials are masked in responses does not erase them. Not when the update moves the
hook to another origin (scheme, host or port): a credential the API never shows would be sent
to the new target, which could echo it back into the request history. The value of each
sensitive header must then be sent again (or the header dropped).

A value sent is always plaintext: the value of a credential header
(security.sensitive_headers.is_sensitive_header) cannot start with ``enc:``, and no header value can
start with ``enc:v1:``, the form in which credentials are stored. The dispatcher decrypts
stored credential values before sending them, so a stored value accepted from a client (copied
from a database dump) would be decrypted and sent to a target of the client's choice. Only the
mask writes a stored value back: it comes out of parsing as a
:class:`~gateway.security.secret_box.StoredSecret`, which storage does not encrypt again.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from gateway import run_states
from gateway.dispatcher.templates import (
    TemplateError,
    TextTemplate,
    check_path,
    compile_body,
    compile_url,
)
from gateway.ingest.conditions import condition_paths, parse_trigger_when
from gateway.ingest.paths import regular_expression_errors
from gateway.ingest.signatures import SUPPORTED_ALGORITHMS
from gateway.management.bodies import Fields
from gateway.security.secret_box import PREFIX, VERSION_PREFIX, StoredSecret, is_encrypted
from gateway.security.sensitive_headers import is_sensitive_header

MASK = "********"
EVENTS = run_states.EVENTS
METHODS = ("POST", "PUT", "PATCH")
MAX_NAME = 60
MAX_URL = 2048
MAX_HEADERS = 50
MAX_HEADER_VALUE = 4096
MAX_TIMEOUT = 60.0
_TOP_LEVEL = ("name", "target_url", "active", "requires_secret", "trigger_when", "settings")
_SETTINGS = (
    "request_headers",
    "request_body",
    "method",
    "timeout",
    "signature_header",
    "signature_algorithm",
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# C0 controls but the tab (allowed in a field value, RFC 9110 §5.5), and DEL.
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Set by the dispatcher itself; a hook may not override them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def _template_errors(fields: Fields, key: str, compile_: Any, value: Any) -> None:
    try:
        compile_(value)
    except TemplateError as exc:
        for problem in exc.problems:
            fields.add(key, problem)


def _trigger_when(raw: Any, fields: Fields) -> tuple[list[str], dict[str, Any]]:
    if not isinstance(raw, dict):
        fields.add("trigger_when", "must be an object with at least one event in 'events'")
        return [], {}
    events = raw.get("events")
    chosen: list[str] = []
    if not isinstance(events, list) or not events:
        fields.add("trigger_when.events", f"must be a non-empty list of: {', '.join(EVENTS)}")
    else:
        for i, event in enumerate(events):
            if event not in EVENTS:
                fields.add(f"trigger_when.events.{i}", f"must be one of: {', '.join(EVENTS)}")
            elif event not in chosen:
                chosen.append(event)
    conditions, errors = parse_trigger_when(raw, extra_keys=("events",))
    fields.merge(errors)
    fields.merge(regular_expression_errors(condition_paths(raw)))
    for i, condition in enumerate(conditions.conditions):
        source = condition.path.source
        if source.startswith("$"):
            continue  # JSONPath: evaluated as written against the event context
        try:
            check_path(source)
        except TemplateError as exc:
            fields.add(
                f"trigger_when.conditions.{i}.path", exc.problems[0].replace("placeholder", "path")
            )
    return chosen, {"events": chosen, **conditions.to_json()}


def _headers(
    raw: Any,
    fields: Fields,
    current: list[dict[str, str]],
    reserved: set[str],
    kept: set[str],
) -> list[dict[str, str]]:
    key = "request_headers"  # fields carries the "settings." prefix
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_HEADERS:
        fields.add(key, f"must be a list of at most {MAX_HEADERS} {{name, value}} objects")
        return []
    stored = {h["name"].lower(): h["value"] for h in current}
    seen: set[str] = set()
    result = []
    for i, item in enumerate(raw):
        where = f"{key}.{i}"
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            fields.add(where, "must be an object with exactly 'name' and 'value'")
            continue
        name, value = item["name"], item["value"]
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            fields.add(f"{where}.name", "must be a valid HTTP header name of at most 64 characters")
            continue
        lowered = name.lower()
        if lowered in reserved:
            fields.add(f"{where}.name", f"{name!r} is set by the gateway and cannot be overridden")
        elif lowered in seen:
            fields.add(f"{where}.name", f"duplicates header {name!r} (names are case-insensitive)")
        seen.add(lowered)
        if value == MASK:
            if lowered not in stored:  # a renamed header, or a create: nothing to keep
                fields.add(
                    f"{where}.value",
                    f"{MASK!r} keeps the stored value of the same header, and {name!r} has "
                    "none: send the real value",
                )
                continue
            # Kept as stored (sealed, so longer than the value): checked when it was written.
            result.append({"name": name, "value": stored[lowered]})
            kept.add(lowered)
            continue
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            fields.add(
                f"{where}.value", f"must be a string of at most {MAX_HEADER_VALUE} characters"
            )
            continue
        if _CONTROL_IN_VALUE.search(value):
            # The dispatcher would send them as spaces: what is stored and shown would not be
            # what goes out. (Placeholders' values are made safe when rendered.)
            fields.add(
                f"{where}.value",
                "must not contain control characters (line breaks, NUL); a header value is "
                "one line",
            )
            continue
        sealed = _sealed_form_problem(name, value)
        if sealed is not None:
            fields.add(f"{where}.value", sealed)
            continue
        _template_errors(fields, f"{where}.value", TextTemplate.compile, value)
        result.append({"name": name, "value": value})
    return result


def _sealed_form_problem(name: str, value: str) -> str | None:
    """Why a header value sent by a client looks like a stored (encrypted) one, or None."""
    if is_sensitive_header(name):
        if is_encrypted(value):
            return (
                f"must be the plaintext secret, not a stored (encrypted) value: {name!r} is a "
                f"credential header, and its value cannot start with {PREFIX!r}"
            )
    elif value.startswith(VERSION_PREFIX):
        # Not a credential by its name today; should the rule widen, the dispatcher would
        # decrypt the value stored as written.
        return (
            "must be plaintext, not a stored (encrypted) value: a header value cannot start "
            f"with {VERSION_PREFIX!r}"
        )
    return None


def _settings(
    raw: Any, fields: Fields, current: dict[str, Any], requires_secret: bool, kept: set[str]
) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fields.add("settings", "must be an object")
        return {}
    sub = Fields(raw, _SETTINGS, prefix="settings.")
    method = sub.string("method", required=False, default="POST", choices=METHODS, max_length=8)
    algorithm = sub.string(
        "signature_algorithm",
        required=False,
        default="sha256",
        choices=sorted(SUPPORTED_ALGORITHMS),
    )
    signature_header = sub.string("signature_header", required=False, max_length=64)
    reserved = set(RESERVED_HEADERS)
    if signature_header is not None:
        if not _HEADER_NAME.fullmatch(signature_header) or signature_header.lower() in reserved:
            sub.add("signature_header", "must be a valid HTTP header name the gateway does not set")
        elif not requires_secret:
            sub.add(
                "signature_header", "needs requires_secret = true (it is keyed with the secret)"
            )
        reserved.add(signature_header.lower())
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        sub.add(
            "timeout", f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, or null"
        )
        timeout = None
    headers = _headers(
        raw.get("request_headers"), sub, current.get("request_headers", []), reserved, kept
    )
    body = raw.get("request_body")
    _template_errors(sub, "request_body", compile_body, body)
    fields.merge(sub.errors, sub.more)
    return {
        "request_headers": headers,
        "request_body": body,
        "method": method,
        "timeout": timeout,
        "signature_header": signature_header,
        "signature_algorithm": algorithm,
    }


def parse_outgoing_hook(
    body: dict[str, Any], current: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Validate a create body (``current`` None) or an update over ``current`` stored values.

    Returns {name, target_url, active, requires_secret, events, trigger_when, settings}, where
    the value of a sensitive header kept as stored (the mask sent back, or ``settings`` not
    sent) is a StoredSecret and every other value a ``str``; raises ValidationFailed naming
    every bad field.
    """
    fields = Fields(body, _TOP_LEVEL)
    partial = current is not None
    base = current or {}

    def present(key: str) -> bool:
        return not partial or key in body

    values: dict[str, Any] = dict(base)
    if present("name"):
        values["name"] = fields.name("name", max_length=MAX_NAME)
    if present("target_url"):
        values["target_url"] = url = fields.string("target_url", max_length=MAX_URL)
        if isinstance(url, str) and "target_url" not in fields.errors:
            _template_errors(fields, "target_url", compile_url, url)
    if present("active"):
        values["active"] = fields.boolean("active", default=base.get("active", True))
    if present("requires_secret"):
        values["requires_secret"] = fields.boolean(
            "requires_secret", default=base.get("requires_secret", True)
        )
    if present("trigger_when"):
        values["events"], values["trigger_when"] = _trigger_when(body.get("trigger_when"), fields)
    stored_headers = (base.get("settings") or {}).get("request_headers", [])
    if "settings" in body or not partial:
        kept: set[str] = set()  # header names whose stored value a mask keeps
        values["settings"] = _settings(
            body.get("settings"),
            fields,
            base.get("settings", {}),
            bool(values.get("requires_secret")),
            kept,
        )
    else:  # settings not sent: every stored value stays
        kept = {h["name"].lower() for h in stored_headers}
        if "requires_secret" in body:  # checked again, every header value kept as stored
            stored_settings = base.get("settings") or {}
            masked = [{"name": h["name"], "value": MASK} for h in stored_headers]
            values["settings"] = _settings(
                {**stored_settings, "request_headers": masked},
                fields,
                base.get("settings", {}),
                bool(values.get("requires_secret")),
                set(),
            )
    if partial and "target_url" in body and isinstance(values.get("target_url"), str):
        _check_kept_credentials(fields, base.get("target_url"), values, kept)
    fields.check()
    values["settings"] = _marked_as_stored(values["settings"], kept)
    return values


def _marked_as_stored(settings: dict[str, Any], kept: set[str]) -> dict[str, Any]:
    """``settings`` with the value of each sensitive header in ``kept`` (the stored one) as a
    StoredSecret, so storage writes it back as it is and encrypts every other one."""
    headers = settings.get("request_headers")
    if not headers:
        return settings
    marked = [
        {**h, "value": StoredSecret(h["value"])}
        if h["name"].lower() in kept and is_sensitive_header(h["name"])
        else h
        for h in headers
    ]
    return {**settings, "request_headers": marked}


def _origin(url: Any) -> tuple[str, str, int | None] | str:
    """(scheme, host, port) of a target URL; the URL itself when it has no parsable origin (a
    template in its host part)."""
    if not isinstance(url, str):
        return ""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        return (parts.scheme.lower(), (parts.hostname or "").lower(), port)
    except ValueError:
        return url


def _check_kept_credentials(
    fields: Fields, old_url: Any, values: dict[str, Any], kept: set[str]
) -> None:
    """A stored sensitive header value may not follow the hook to another origin."""
    if _origin(old_url) == _origin(values["target_url"]):
        return
    for i, header in enumerate((values.get("settings") or {}).get("request_headers", [])):
        name = header["name"]
        if name.lower() in kept and is_sensitive_header(name):
            fields.add(
                f"settings.request_headers.{i}.value",
                f"target_url moves to another origin: send the value of {name!r} again (or "
                "drop the header); a stored credential is not sent to a new target",
            )
