"""From a stored hook and a delivery's event snapshot to the exact HTTP request to send (pure).

Without a ``request_body`` the body is a Standard Webhooks style envelope:
``{"type": <event>, "timestamp": <event time>, "sequence": <n>, "data": {"run", "pipeline",
"hook"}}``; ``sequence`` grows with each change of a run (schema.sql, outgoing_event_sequence).
JSON bodies are sent as ``application/json``, text bodies as ``text/plain; charset=utf-8``,
unless the hook's request headers set ``Content-Type``. A hook's headers never replace the
signature headers (validation refuses those names).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from gateway.dispatcher.signing import signature_headers, with_sensitive_header_values
from gateway.dispatcher.templates import (
    MAX_RENDERED_BODY,
    BodyTemplate,
    JsonTemplate,
    RenderError,
    TextTemplate,
    compile_body,
    compile_url,
    dump_json,
)
from gateway.ingest.conditions import ConditionSet
from gateway.security.secret_box import PLAINTEXT_BOX, SecretBox, SecretBoxError
from gateway.version import package_version

USER_AGENT = f"hookgate-webhooks/{package_version()}"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class CompiledHook:
    """A hook's templates, conditions and signing settings, compiled once per definition.
    Its repr leaves out the headers (credential values, decrypted) and the secret."""

    url: TextTemplate
    headers: tuple[tuple[str, TextTemplate], ...] = field(repr=False)
    body: BodyTemplate | None
    method: str
    timeout: float | None
    conditions: ConditionSet
    secret: str | None = field(repr=False)
    signature_header: str | None
    signature_algorithm: str
    # The secret a rotation replaced, and until when (unix time, this host's clock) it signs too.
    previous_secret: str | None = field(default=None, repr=False)
    previous_secret_until: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], box: SecretBox = PLAINTEXT_BOX) -> CompiledHook:
        """Compile a claimed delivery row's hook columns, opening the sealed secret with
        ``box``; raises ValueError (TemplateError, or a secret that cannot be decrypted).

        The grace of a rotation's previous secret comes as the seconds it had left by the
        database's clock when the row was claimed, which set its end: this host's clock,
        ahead or behind, then neither cuts it short nor stretches it."""
        settings = row["settings"] or {}
        secret = previous = until = None
        left = row.get("previous_secret_seconds_left")
        try:
            if row["requires_secret"] and row["secret"]:
                secret = box.decrypt(row["secret"])
                if row.get("previous_secret") and left is not None:
                    previous, until = box.decrypt(row["previous_secret"]), time.time() + left
            # Sensitive header values are stored sealed (storage.outgoing.sealed_settings); the
            # others as written, even one that happens to start like a sealed value.
            opened = with_sensitive_header_values(settings, box.decrypt)
        except SecretBoxError as exc:
            raise ValueError(str(exc)) from None
        trigger_when = {k: v for k, v in (row["trigger_when"] or {}).items() if k != "events"}
        timeout = settings.get("timeout")
        return cls(
            url=compile_url(row["target_url"]),
            headers=tuple(
                (h["name"], TextTemplate.compile(h["value"]))
                for h in opened.get("request_headers") or ()
            ),
            body=compile_body(settings.get("request_body")),
            method=settings.get("method") or "POST",
            timeout=None if timeout is None else float(timeout),
            conditions=ConditionSet.from_json(trigger_when),
            secret=secret,
            signature_header=settings.get("signature_header"),
            signature_algorithm=settings.get("signature_algorithm") or "sha256",
            previous_secret=previous,
            previous_secret_until=until,
        )


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """One rendered, signed request; its repr leaves out the headers (credentials and
    signatures)."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes

    @property
    def origin(self) -> str:
        """``scheme://host:port``: the unit of per-target concurrency, so one spelling per
        target: the host in lower case and without a final dot (``CI.example.`` and
        ``ci.example`` are one target), the port explicit."""
        try:
            url = URL(self.url)
            scheme, host, port = url.scheme, url.raw_host or "", url.port or 0
        except ValueError:  # not expected: scheme://host[:port] is checked when a hook is saved
            split = urlsplit(self.url)
            scheme, host, port = split.scheme, split.netloc.lower(), 0
        host = host.rstrip(".")
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


def event_context(payload: Mapping[str, Any], delivery_id: str, attempt: int) -> dict[str, Any]:
    """What templates and conditions see: the event snapshot plus this delivery."""
    return {**payload, "delivery": {"id": delivery_id, "attempt": attempt}}


def default_body(context: Mapping[str, Any]) -> bytes:
    """The envelope sent when a hook has no ``request_body``."""
    data = {key: context.get(key) for key in ("run", "pipeline", "hook")}
    envelope = {key: context.get(key) for key in ("timestamp", "sequence")}
    return dump_json({"type": context.get("event"), **envelope, "data": data})


def build_request(
    hook: CompiledHook, context: Mapping[str, Any], delivery_id: str, now: float | None = None
) -> OutboundRequest:
    """Render URL, headers and body, then sign. Raises RenderError, its message naming the
    part, for a value that cannot stand where it would (templates.TextTemplate.render_url) and
    for a part rendered past its bound (templates.MAX_RENDERED_*); never anything else."""
    try:
        url = hook.url.render_url(context)
    except RenderError as exc:
        raise RenderError(f"target URL: {exc}") from None
    try:
        if hook.body is None:
            body, content_type = default_body(context), JSON_TYPE
        elif isinstance(hook.body, JsonTemplate):
            body, content_type = hook.body.render(context), JSON_TYPE
        else:
            text = hook.body.render(context, MAX_RENDERED_BODY)
            body, content_type = text.encode("utf-8", "replace"), TEXT_TYPE
            if len(body) > MAX_RENDERED_BODY:
                raise RenderError(
                    f"renders to more than {MAX_RENDERED_BODY} bytes, the most it may "
                    "(its placeholders' values are too large)"
                )
    except RenderError as exc:
        raise RenderError(f"request body: {exc}") from None
    headers = {"User-Agent": USER_AGENT, "Content-Type": content_type}
    chosen = {name.lower(): name for name in headers}
    for name, template in hook.headers:
        previous = chosen.pop(name.lower(), None)
        if previous is not None:
            del headers[previous]
        try:
            headers[name] = template.render_header(context)
        except RenderError as exc:
            raise RenderError(f"request header {name}: {exc}") from None
        chosen[name.lower()] = name
    now = time.time() if now is None else now
    until = hook.previous_secret_until
    headers.update(
        signature_headers(
            secret=hook.secret,
            delivery_id=delivery_id,
            timestamp=int(now),
            body=body,
            signature_header=hook.signature_header,
            signature_algorithm=hook.signature_algorithm,
            # During the grace only (checked per request: a compiled hook outlives the grace).
            previous_secret=hook.previous_secret if until is not None and now < until else None,
        )
    )
    return OutboundRequest(hook.method, url, headers, body)
