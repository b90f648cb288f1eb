"""The pure ingest decision (DESIGN.md §3, steps 1 and 3-7), shared by the live endpoint and replay.

:class:`CompiledHook` is built once per hook definition (verifier with the decrypted secrets,
compiled variable paths, conditions, delivery-id header names, request limits); :func:`evaluate`
is the per-request work on the raw body: signature first (over the exact bytes, before any
parsing), then content type, JSON, conditions, variables and the delivery id. No I/O here:
whether a delivery id is a duplicate is decided by the database when the run is inserted (see
gateway.ingest.batcher).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.config import Config
from gateway.http import is_json_media_type, media_type
from gateway.ingest import lazy_json
from gateway.ingest.conditions import ConditionSet, parse_trigger_when
from gateway.ingest.limits import IpAllowlist, parse_limits_settings
from gateway.ingest.signatures import (
    STANDARD_WEBHOOKS,
    SignatureError,
    SignatureVerifier,
    scheme_for_header,
)
from gateway.ingest.variables import (
    VariableExtractionError,
    VariableExtractor,
    parse_variable_specs,
)
from gateway.security.secret_box import PLAINTEXT_BOX, SecretBox, SecretBoxError
from gateway.security.sensitive_headers import is_sensitive_header

ACCEPTED, SKIPPED, REJECTED = "accepted", "skipped", "rejected"

# Tried in this order when the hook does not name its own delivery-id header (lower case).
# Not X-Gitlab-Event-UUID: GitLab's recursion-detection id, shared by every event one GitLab
# request or job sends to a hook (the branches of one push), so distinct events would be taken
# for repeats and dropped. GitLab's per-delivery id, the same on retries, is Idempotency-Key.
DEFAULT_DELIVERY_ID_HEADERS: tuple[str, ...] = (
    "x-github-delivery",
    "webhook-id",
    "idempotency-key",  # GitLab (17.4+), IETF draft
    "x-request-uuid",  # Bitbucket
)
# Longest delivery id kept: it is part of a unique index, and no provider sends more.
MAX_DELIVERY_ID_LENGTH = 200
# The one delivery-id header of a Standard Webhooks hook: the only one its signature covers.
SIGNED_DELIVERY_ID_HEADER = "webhook-id"


def delivery_id_header_problem(
    header: str | None, *, requires_secret: bool, secret_header_name: str
) -> str | None:
    """Why ``settings.delivery_id_header`` cannot be ``header`` for a hook with these signature
    settings, or None.

    A header that carries the secret, a signature or another credential (the hook's own
    header, or any the history redacts: gateway.security.sensitive_headers) would have its
    value stored, logged and shown as the delivery id (the history redacts it only as a
    header). On a Standard Webhooks hook, any header but the signed ``webhook-id`` would let a
    captured delivery be replayed as a new one within the timestamp tolerance, by adding a
    fresh value of that header.
    """
    if not header:
        return None
    header = header.strip().lower()
    scheme_header = secret_header_name.strip().lower()  # a header name, not a secret
    if header == scheme_header or is_sensitive_header(header):
        return (
            f"must not be a header that carries the secret or a signature ({header!r}): its "
            "value would be stored and shown as the delivery id"
        )
    signed = requires_secret and scheme_for_header(scheme_header) == STANDARD_WEBHOOKS
    if signed and header != SIGNED_DELIVERY_ID_HEADER:
        return (
            f"must be {SIGNED_DELIVERY_ID_HEADER!r} (or null) on a Standard Webhooks hook: only "
            "webhook-id is signed, so another header would let a captured delivery be sent "
            "again as a new one"
        )
    return None


_JSON, _FORM = 1, 2
_FORM_TYPE = "application/x-www-form-urlencoded"
_MAX_FORM_FIELDS = 1000
_NUL = "\x00"


@dataclass(frozen=True, slots=True)
class CompiledHook:
    """One incoming hook, compiled for the hot path; immutable and shared by all requests."""

    id: uuid.UUID
    pipeline_id: int
    name: str
    active: bool
    requires_secret: bool
    verifier: SignatureVerifier | None
    extractor: VariableExtractor
    conditions: ConditionSet
    delivery_id_headers: tuple[str, ...]
    # The hook's own secret-bearing headers (its secret_header_name, its scheme's signature
    # headers), redacted in the history besides those of gateway.security.sensitive_headers.
    redacted_headers: frozenset[str]
    # Seconds until the previous secret stops working, by the database's clock when the row
    # was read (None: no grace period running). The cache recompiles the definition by then.
    previous_secret_expires_in: float | None = None
    # Set when the stored definition cannot be compiled (every request is answered with 500).
    definition_error: str | None = None
    # Request limits (gateway.ingest.limits), resolved once with the [limits] defaults:
    # requests per second (0: unlimited) and bucket size, and the allowed client networks.
    rate: float = 0.0
    burst: int = 0
    allowlist: IpAllowlist | None = None

    @classmethod
    def from_row(
        cls,
        row: Mapping[str, Any],
        config: Config,
        *,
        box: SecretBox = PLAINTEXT_BOX,
    ) -> CompiledHook:
        """Compile an ``incoming_hooks`` row, opening its sealed secrets with ``box``; never
        raises for a bad stored definition (or a secret that cannot be decrypted)."""
        problems: list[str] = []
        settings = row["settings"] if isinstance(row["settings"], dict) else {}
        limits, limit_errors = parse_limits_settings(settings)
        problems.extend(f"{field}: {', '.join(msgs)}" for field, msgs in limit_errors.items())
        rate, burst = limits.rate_and_burst(config.limits)

        specs, errors = parse_variable_specs(settings.get("variables") or [])
        problems.extend(f"{field}: {', '.join(msgs)}" for field, msgs in errors.items())
        conditions, errors = parse_trigger_when(row["trigger_when"] or None)
        problems.extend(f"{field}: {', '.join(msgs)}" for field, msgs in errors.items())

        header = settings.get("delivery_id_header")
        delivery_headers = (
            (header.strip().lower(),)
            if isinstance(header, str) and header.strip()
            else DEFAULT_DELIVERY_ID_HEADERS
        )
        header_name = (row["secret_header_name"] or "").strip().lower()
        redacted = frozenset({header_name} if header_name else ())
        verifier, previous_secret_expires_in = None, None
        if row["requires_secret"]:
            secrets: list[str] = []
            # By the database's clock, which also started the grace period (see the query).
            seconds_left: float | None = row["previous_secret_seconds_left"]
            try:
                if row["secret"]:
                    secrets.append(box.decrypt(row["secret"]))
                if row["previous_secret"] and seconds_left is not None and seconds_left > 0:
                    secrets.append(box.decrypt(row["previous_secret"]))
                    previous_secret_expires_in = seconds_left
            except SecretBoxError as exc:
                problems.append(f"secret: {exc}")
            try:
                verifier = SignatureVerifier.create(
                    algorithm=row["secret_algorithm"],
                    header_name=header_name,
                    secrets=secrets,
                    tolerance_seconds=config.hooks.timestamp_tolerance,
                )
                redacted |= verifier.signature_headers
            except ValueError as exc:
                problems.append(f"signature settings: {exc}")
        if verifier is not None and verifier.scheme == STANDARD_WEBHOOKS:
            delivery_headers = (SIGNED_DELIVERY_ID_HEADER,)  # the one its signature covers
        # Never a header that carries the secret, a signature or a credential (a definition
        # stored before the API refused them): its value would become the stored and logged
        # delivery id.
        delivery_headers = tuple(
            h for h in delivery_headers if h not in redacted and not is_sensitive_header(h)
        )

        return cls(
            id=row["id"],
            pipeline_id=row["pipeline_id"],
            name=row["name"],
            active=row["active"],
            requires_secret=row["requires_secret"],
            verifier=verifier,
            extractor=VariableExtractor(specs if not problems else ()),
            conditions=conditions,
            delivery_id_headers=delivery_headers,
            redacted_headers=redacted,
            previous_secret_expires_in=previous_secret_expires_in,
            definition_error="; ".join(problems) or None,
            rate=rate,
            burst=burst,
            allowlist=None if limit_errors else limits.allowlist(),
        )


@dataclass(slots=True)
class Evaluation:
    """What to do with one request; ``status`` is the HTTP answer unless storage says otherwise.

    ``outcome`` is ``accepted`` (enqueue a run with ``variables``), ``skipped`` (record only) or
    ``rejected``. ``reason`` is a short code for logs (rejections) or, when skipped, why.
    ``payload`` is the parsed body as Python objects when the hook's paths needed the whole
    tree (JSONPath expressions), else None (its values were read from the validated body
    directly, see gateway.ingest.lazy_json).
    """

    status: int
    outcome: str
    message: str
    variables: dict[str, Any] | None = None
    delivery_id: str | None = None
    payload: Any = None
    errors: dict[str, list[str]] | None = None
    reason: str | None = None

    def history_message(self) -> str:
        """The message to record in ``hook_requests``: with the skip reason or variable errors."""
        if self.outcome == SKIPPED:
            return f"{self.message}: {self.reason}"
        if self.errors:
            details = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
            return f"{self.message} ({details})"
        return self.message


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup by lower-case name: aiohttp's CIMultiDict, or a stored dict of any casing."""
    value = headers.get(name)
    if value is None and not hasattr(headers, "getall"):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def delivery_id_of(hook: CompiledHook, headers: Mapping[str, str]) -> str | None:
    """The first non-empty delivery-id header the hook looks at (stripped), or None."""
    for name in hook.delivery_id_headers:
        value = _header(headers, name)
        if value and (value := value.strip()):
            # Undecodable header bytes arrive as surrogates, which cannot be stored as text.
            return value if value.isascii() else storable_text(value)
    return None


def storable_text(value: str) -> str:
    """``value`` storable as text: undecodable header bytes (which arrive as lone surrogates)
    written as ``\\xNN`` escapes. Lossless, so two delivery ids that differ only in such bytes
    stay two deliveries (replacing each byte with U+FFFD made them one, and dropped the second
    event as a duplicate)."""
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the bytes as they were sent
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _body_kind(content_type: str | None) -> int | None:
    # The exact common value first: no parsing on the hot path.
    if content_type is None or content_type == "application/json":
        return _JSON
    if is_json_media_type(content_type):
        return _JSON
    return _FORM if media_type(content_type) == _FORM_TYPE else None


def _form_payload(body: bytes) -> str:
    """The ``payload`` field of a form body (GitHub's form mode); ValueError names the problem."""
    try:
        fields = parse_qs(
            body.decode("ascii"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as exc:  # non-ASCII bytes, bad UTF-8 escapes, too many fields
        raise ValueError(f"form body is not valid URL-encoded UTF-8 text: {exc}") from exc
    values = fields.get("payload")
    if not values:
        raise ValueError("form body has no 'payload' field; GitHub's form mode sends JSON in it")
    return values[0]


# Deepest nesting of an object or array variable. orjson (storing the run, rendering outgoing
# bodies that embed run.variables) stops at 255 levels, and Python's recursion sooner; no
# webhook payload comes near this.
MAX_VARIABLE_DEPTH = 64


def _storage_problem(value: Any) -> str | None:
    """Why a variable's value cannot be stored, or None. Iterative: a hostile payload may nest
    deeper than Python's recursion limit."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _NUL in item:  # PostgreSQL text and jsonb cannot hold U+0000
                return "contains a NUL character (\\u0000), which cannot be stored"
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_VARIABLE_DEPTH:
            return f"is nested more than {MAX_VARIABLE_DEPTH} levels deep, which cannot be stored"
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
        if isinstance(item, dict):  # its keys are strings: on top, so checked next
            stack.extend((key, depth) for key in item)
    return None


def _reject(status: int, message: str, reason: str, delivery_id: str | None) -> Evaluation:
    return Evaluation(status, REJECTED, message, delivery_id=delivery_id, reason=reason)


def evaluate(
    hook: CompiledHook,
    headers: Mapping[str, str],
    body: bytes,
    *,
    verify_signature: bool = True,
    now: float | None = None,
) -> Evaluation:
    """Decide one request to ``hook`` from its headers and exact raw body (see module doc).

    Order: 403 inactive, 500 broken definition, 401 signature, 415 content type, 400 body,
    400 delivery id too long, 202 skipped (conditions), 422 variables, 202 accepted.
    """
    delivery_id = delivery_id_of(hook, headers)
    if not hook.active:
        return _reject(403, "incoming hook is inactive", "inactive", delivery_id)
    if hook.definition_error is not None:
        return _reject(
            500,
            "the incoming hook's stored definition is invalid; an operator must fix it",
            "invalid_definition",
            delivery_id,
        )
    if verify_signature and hook.requires_secret:
        assert hook.verifier is not None  # a missing verifier is a definition error
        try:
            hook.verifier.verify(headers, body, now=now)
        except SignatureError as exc:
            return _reject(401, f"invalid signature: {exc}", f"signature_{exc.reason}", delivery_id)

    content_type = _header(headers, "content-type")
    kind = _body_kind(content_type)
    if kind is None:
        return _reject(
            415,
            f"unsupported content type {(content_type or '')[:100]!r}: expected "
            f"application/json or {_FORM_TYPE} with a 'payload' field",
            "unsupported_media_type",
            delivery_id,
        )
    if kind == _JSON:
        text: bytes | str = body
        what = "request body"
    else:
        what = "form field 'payload'"
        try:
            text = _form_payload(body)
        except ValueError as exc:
            return _reject(400, str(exc), "bad_form", delivery_id)
    if not text:
        return _reject(400, f"{what} is empty; expected JSON", "empty_body", delivery_id)
    needs_tree = hook.extractor.needs_tree or hook.conditions.needs_tree
    try:
        payload = lazy_json.parse(text, lazy=not needs_tree)
    except orjson.JSONDecodeError as exc:
        problem = _json_problem(text, exc)
        return _reject(400, f"{what} is not valid JSON: {problem}", "bad_json", delivery_id)
    try:
        return _decide(hook, payload, delivery_id)
    finally:
        if type(payload) is lazy_json.LazyDocument:
            payload.release()  # the parser is reused by the next request


def _json_problem(text: bytes | str, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body orjson refused: its own words, except for bytes that are not
    UTF-8, of which it says "str is not valid UTF-8: surrogates not allowed" at char 0, whatever
    the bytes and wherever they are (a sender who sent Latin-1 could not tell)."""
    if type(text) is bytes and str(exc).startswith("str is not valid UTF-8"):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"it is not UTF-8 text: byte 0x{text[error.start]:02x} at offset {error.start}"
    return str(exc)


def _decide(hook: CompiledHook, payload: Any, delivery_id: str | None) -> Evaluation:
    """Steps 5-7 on the parsed body: delivery id length, conditions, variables."""
    # Evaluation.payload carries the document only when it is a Python tree.
    tree = None if type(payload) is lazy_json.LazyDocument else payload

    if delivery_id is not None and len(delivery_id) > MAX_DELIVERY_ID_LENGTH:
        return _reject(
            400,
            f"delivery id header is longer than {MAX_DELIVERY_ID_LENGTH} characters",
            "delivery_id_too_long",
            delivery_id[:MAX_DELIVERY_ID_LENGTH],
        )

    skip_reason = hook.conditions.evaluate(payload) if len(hook.conditions) else None
    if skip_reason is not None:
        return Evaluation(
            202,
            SKIPPED,
            "Hook call skipped: trigger conditions not met",
            delivery_id=delivery_id,
            payload=tree,
            reason=skip_reason,
        )

    try:
        variables = hook.extractor.extract(payload)
    except VariableExtractionError as exc:
        return Evaluation(
            422,
            REJECTED,
            "the payload does not provide valid variables: " + ", ".join(exc.errors),
            delivery_id=delivery_id,
            payload=tree,
            errors=exc.errors,
            reason="invalid_variables",
        )
    problems = {
        name: [problem]
        for name, value in variables.items()
        if (problem := _storage_problem(value)) is not None
    }
    if problems:
        return Evaluation(
            422,
            REJECTED,
            "the payload does not provide valid variables: " + ", ".join(problems),
            delivery_id=delivery_id,
            payload=tree,
            errors=problems,
            reason="invalid_variables",
        )
    return Evaluation(202, ACCEPTED, "Hook accepted: run queued", variables, delivery_id, tree)
