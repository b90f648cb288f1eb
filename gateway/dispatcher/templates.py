"""Placeholders in an outgoing hook's URL, header values and body; compiled once per hook.

Syntax: ``{{ path }}`` (spaces optional) where ``path`` is a dotted name into the event context:

* ``event`` — ``run.queued|run.started|run.completed|run.failed|run.status_changed``
* ``sequence`` — grows with each change of a run: the order of a run's events
* ``run.id|pipeline_id|status|previous_status|attempt|message|exit_code|queued_at|started_at|
  finished_at``, ``run.triggered_from.type|hook_id|request_id``, ``run.variables`` and
  ``run.variables.<name>[.<key or index>...]`` (variable names are free-form)
* ``pipeline.id|name|action_type|environment_id|resource_type|resource_id``
* ``hook.id|name``, ``delivery.id|attempt``
* an object itself (``run``, ``run.variables``, ``pipeline``...) renders that whole object.

There is no code execution, no filters and no escape: ``{{`` always opens a placeholder and a
placeholder without ``}}``, an empty one, or one naming something outside the list above is a
:class:`TemplateError` at create time. ``}}`` on its own is literal text.

Rendering never raises but for two reasons (a :class:`RenderError`: the delivery is skipped), a
dot-segment in a URL path and a rendering past its bound (both below); a value missing at send
time (an absent variable, ``run.exit_code`` before the run finished) renders as:

* **text** (string bodies, header values): ``""``; strings as-is, ``true``/``false``, numbers
  as in JSON, objects and arrays as compact JSON. Header values have CR, LF and other control
  characters replaced by spaces (no header injection).
* **URL**: the text form, percent-encoded with nothing left reserved (``/``, ``?``, ``&``,
  ``#`` ... are encoded), so a value always stays inside its path segment or query value.
  Placeholders may appear only after ``scheme://host[:port]`` — the target host is fixed.
  An exception to "never raises": a value in the path that is only dots (``.``, ``..``)
  would be a dot-segment that climbs out of its segment (``%2E%2E`` too, for WHATWG parsers),
  so :meth:`TextTemplate.render_url` raises :class:`RenderError` and the delivery is skipped.
* **JSON** (a ``request_body`` given as an object or array, or a string that parses as one): a
  string value that is exactly one placeholder (``"{{ run.variables.pull_request_id }}"``)
  becomes the JSON value itself — strings stay strings, numbers numbers, objects objects and a
  missing value ``null``; placeholders inside longer strings or object keys are rendered as
  text. The output is always valid JSON (serialised, so escaping is always correct).
  A string body that is JSON only once its placeholders are replaced (``{"n": {{ run.attempt
  }}}``) is rejected: quote the placeholder instead.

A template is at most ``MAX_TEMPLATE_LENGTH`` characters, but each placeholder may stand for a
large value (``{{ run.variables }}`` can be a whole ingested body), so what a template renders
is bounded too: a URL at most ``MAX_RENDERED_URL`` characters, a header value
``MAX_RENDERED_HEADER``, a body ``MAX_RENDERED_BODY`` bytes. Past its bound, rendering stops
with a :class:`RenderError` (the delivery is skipped with that reason) before the output is
built: 64 KiB of ``{{ run.variables }}`` over 1 MiB of variables rendered 4 GB.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from yarl import URL

MAX_TEMPLATE_LENGTH = 65_536
# What a template may render (see the module docstring). Far above what targets accept (URLs
# and header lines of 8 to 16 KiB), and above a body holding run.variables a few times over.
MAX_RENDERED_URL = 16_384
MAX_RENDERED_HEADER = 16_384
MAX_RENDERED_BODY = 4 * 1024 * 1024
_ANY = "*"  # marks a free-form subtree (variables carry whatever the payload had)
_LEAF: dict[str, Any] = {}
SCHEMA: dict[str, Any] = {
    "event": _LEAF,
    "sequence": _LEAF,
    "run": {
        **dict.fromkeys(
            "id pipeline_id status previous_status attempt message exit_code queued_at "
            "started_at finished_at".split(),
            _LEAF,
        ),
        "variables": _ANY,
        "triggered_from": dict.fromkeys(("type", "hook_id", "request_id"), _LEAF),
    },
    "pipeline": dict.fromkeys(
        ("id", "name", "action_type", "environment_id", "resource_type", "resource_id"), _LEAF
    ),
    "hook": dict.fromkeys(("id", "name"), _LEAF),
    "delivery": dict.fromkeys(("id", "attempt"), _LEAF),
}
_FREE_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_MISSING: Any = object()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Path = tuple[str, ...]


class TemplateError(ValueError):
    """A template that cannot be compiled; ``problems`` has one message per bad placeholder."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class RenderError(ValueError):
    """A value that cannot be placed where its placeholder stands, or a rendering larger than
    its bound (see the module docstring)."""


class _Budget:
    """Characters or bytes a rendering may still produce; :meth:`spend` raises RenderError
    once they are used up, so an oversized rendering ends before it is built."""

    def __init__(self, limit: int | None, unit: str = "characters") -> None:
        self.limit = limit
        self.unit = unit
        self.used = 0

    def spend(self, size: int) -> None:
        self.used += size
        self.check(self.used)

    def check(self, size: int) -> None:
        if self.limit is not None and size > self.limit:
            raise RenderError(
                f"renders to more than {self.limit} {self.unit}, the most it may "
                "(its placeholders' values are too large)"
            )


def check_path(expression: str) -> Path:
    """Validate a dotted context path; raise TemplateError naming what cannot exist."""
    shown = "{{ " + expression + " }}"
    if not expression:
        raise TemplateError(["empty placeholder '{{ }}'"])
    segments = tuple(expression.split("."))
    node: Any = SCHEMA
    for depth, segment in enumerate(segments):
        if node is _ANY:
            if not _FREE_SEGMENT.fullmatch(segment):
                raise TemplateError([f"invalid placeholder '{shown}': bad name {segment!r}"])
            continue
        if segment not in node:
            where = "the context" if depth == 0 else ".".join(segments[:depth])
            allowed = ", ".join(sorted(node)) or "nothing (it is a value)"
            raise TemplateError(
                [f"unknown placeholder '{shown}': {where} has no {segment!r} (allowed: {allowed})"]
            )
        node = node[segment]
    return segments


def _parse(source: str) -> tuple[str | Path, ...]:
    """Split ``source`` into literal strings and validated paths."""
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateError([f"template is longer than {MAX_TEMPLATE_LENGTH} characters"])
    parts: list[str | Path] = []
    problems: list[str] = []
    position = 0
    while True:
        start = source.find("{{", position)
        if start < 0:
            break
        end = source.find("}}", start + 2)
        if end < 0:
            problems.append(f"unclosed '{{{{' at position {start}: expected '}}}}'")
            break
        if start > position:
            parts.append(source[position:start])
        try:
            parts.append(check_path(source[start + 2 : end].strip()))
        except TemplateError as exc:
            problems.extend(exc.problems)
        position = end + 2
    if problems:
        raise TemplateError(problems)
    if position < len(source):
        parts.append(source[position:])
    return tuple(parts)


def lookup(context: Mapping[str, Any], path: Path) -> Any:
    """The value at ``path`` (digit segments also index arrays), or the missing marker."""
    value: Any = context
    for segment in path:
        if isinstance(value, Mapping):
            value = value.get(segment, _MISSING)
        elif (
            isinstance(value, list)
            and len(segment) <= 18  # int() refuses 4,300 digits and more (a ValueError)
            and segment.isascii()
            and segment.isdigit()
            and int(segment) < len(value)
        ):
            value = value[int(segment)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _json_safe(value: Any) -> Any:
    """A copy plain ``json`` can serialise: non-finite floats → null, unknown types → str."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if _int_text(value) else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        return ""


def dump_json(value: Any) -> bytes:
    """Serialise to compact JSON bytes; never raises for values built from JSON-like data."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses integers beyond 64 bits; the stdlib writes them exactly.
        # ensure_ascii: lone surrogates (not encodable as UTF-8) become \\u escapes.
        text = json.dumps(_json_safe(value), separators=(",", ":"), allow_nan=False)
        return text.encode("ascii")


def to_text(value: Any) -> str:
    """The text form of a context value (see the module docstring)."""
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int_text(value)
    if isinstance(value, float):
        return json.dumps(value) if math.isfinite(value) else ""
    return dump_json(value).decode()


@dataclass(frozen=True, slots=True)
class TextTemplate:
    """A string with placeholders, rendered as text, header value or URL."""

    source: str
    parts: tuple[str | Path, ...]

    @classmethod
    def compile(cls, source: str) -> TextTemplate:
        """Parse and validate ``source``; raise TemplateError."""
        return cls(source, _parse(source))

    @property
    def placeholders(self) -> tuple[Path, ...]:
        return tuple(p for p in self.parts if isinstance(p, tuple))

    def render(self, context: Mapping[str, Any], limit: int | None = None) -> str:
        """Text mode: missing values render as an empty string; RenderError past ``limit``
        characters (None: no bound)."""
        return self._render(context, _Budget(limit))

    def _render(self, context: Mapping[str, Any], budget: _Budget) -> str:
        rendered: list[str] = []
        for part in self.parts:
            text = part if isinstance(part, str) else to_text(lookup(context, part))
            budget.spend(len(text))
            rendered.append(text)
        return "".join(rendered)

    def render_header(
        self, context: Mapping[str, Any], limit: int | None = MAX_RENDERED_HEADER
    ) -> str:
        """Header value: text mode with control characters replaced by spaces; RenderError
        past ``limit`` characters."""
        return _CONTROL.sub(" ", self.render(context, limit)).strip()

    def render_url(self, context: Mapping[str, Any], limit: int | None = MAX_RENDERED_URL) -> str:
        """URL: every value percent-encoded so it cannot leave its path segment or query value;
        raise RenderError for a path value that is only dots (a dot-segment), and past
        ``limit`` characters."""
        budget = _Budget(limit)
        rendered: list[str] = []
        in_path = True
        for part in self.parts:
            if isinstance(part, str):
                in_path = in_path and not any(c in part for c in "?#")
                budget.spend(len(part))
                rendered.append(part)
                continue
            text = to_text(lookup(context, part))
            if in_path and text and not text.strip("."):
                raise RenderError(
                    f"{{{{ {'.'.join(part)} }}}} is {text!r} in the URL path: a dot-segment "
                    "would leave its path segment"
                )
            budget.spend(len(text))  # before encoding it (up to 9 characters each)
            encoded = quote(text, safe="")
            budget.spend(len(encoded) - len(text))
            rendered.append(encoded)
        return "".join(rendered)


def compile_url(source: str) -> TextTemplate:
    """Compile a target URL: http(s), a host, no credentials, placeholders only after the host."""
    template = TextTemplate.compile(source)
    literal = "".join(p for p in template.parts if isinstance(p, str))
    bad = next((c for c in literal if not "!" <= c <= "~"), None)
    if bad is not None:
        raise TemplateError(
            [
                f"contains {bad!r}: a URL is printable ASCII without spaces; percent-encode it "
                "(a space is %20) and write an international host name in punycode (xn--)"
            ]
        )
    first = next((i for i, p in enumerate(template.parts) if not isinstance(p, str)), None)
    prefix = "".join(p for p in template.parts[:first] if isinstance(p, str))
    scheme, sep, rest = prefix.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise TemplateError(["must be an absolute http:// or https:// URL"])
    if first is not None and not any(c in rest for c in "/?#"):
        raise TemplateError(["placeholders may only appear after scheme://host[:port]/"])
    sample = "".join(p if isinstance(p, str) else "x" for p in template.parts)
    try:
        url = URL(sample, encoded=True)
        split = urlsplit(sample)
        split.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise TemplateError([f"not a valid URL: {exc}"]) from exc
    if not url.raw_host or not split.hostname:
        raise TemplateError(["must name a host"])
    if url.user is not None or url.password is not None:
        raise TemplateError(["must not contain credentials; use settings.request_headers"])
    if split.hostname.replace(".", "").isdigit() and not _is_dotted_quad(split.hostname):
        # aiohttp connects to no legacy numeric form (2130706433, 127.1, 0177.0.0.1): every
        # delivery would fail.
        raise TemplateError(
            [
                f"host {split.hostname!r} is numeric but not a dotted-quad IPv4 address: write "
                "four decimal numbers 0-255 without leading zeros (e.g. 192.0.2.10)"
            ]
        )
    return template


def _is_dotted_quad(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


# JSON templates: a tree of constants, whole-value placeholders and text strings.
_Node = tuple[str, Any]


def _compile_json(value: Any, problems: list[str]) -> _Node:
    if isinstance(value, str):
        try:
            parts = _parse(value)
        except TemplateError as exc:
            problems.extend(exc.problems)
            return ("const", value)
        if len(parts) == 1 and isinstance(parts[0], tuple):  # the whole string
            return ("value", parts[0])
        if any(isinstance(p, tuple) for p in parts):
            return ("text", TextTemplate(value, parts))
        return ("const", value)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            items.append((_compile_json(str(key), problems), _compile_json(item, problems)))
        return ("object", tuple(items))
    if isinstance(value, list | tuple):
        return ("array", tuple(_compile_json(item, problems) for item in value))
    return ("const", value)


def _render_json(
    node: _Node, context: Mapping[str, Any], budget: _Budget, sizes: dict[Path, int]
) -> Any:
    """The node's value; ``budget`` is charged what each placeholder adds (a whole value by its
    JSON size, measured once per path in ``sizes``: the tree holds references, and only
    serialising it would build the copies)."""
    kind, data = node
    if kind == "const":
        return data
    if kind == "value":
        value = lookup(context, data)
        if value is _MISSING:
            return None
        if data not in sizes:
            sizes[data] = len(value) if isinstance(value, str) else len(dump_json(value))
        budget.spend(sizes[data])
        return value
    if kind == "text":
        return data._render(context, budget)
    if kind == "object":
        return {
            to_text(_render_json(k, context, budget, sizes)): _render_json(
                v, context, budget, sizes
            )
            for k, v in data
        }
    return [_render_json(item, context, budget, sizes) for item in data]


@dataclass(frozen=True, slots=True)
class JsonTemplate:
    """A JSON document whose string values may hold placeholders."""

    root: _Node

    @classmethod
    def compile(cls, document: Any) -> JsonTemplate:
        """Compile a parsed JSON document; raise TemplateError listing every bad placeholder."""
        problems: list[str] = []
        root = _compile_json(document, problems)
        if problems:
            raise TemplateError(problems)
        return cls(root)

    def render(self, context: Mapping[str, Any], limit: int | None = MAX_RENDERED_BODY) -> bytes:
        """Serialised JSON; always valid JSON. RenderError past ``limit`` bytes."""
        budget = _Budget(limit, "bytes")
        rendered = dump_json(_render_json(self.root, context, budget, {}))
        budget.check(len(rendered))  # with the escaping and the constants
        return rendered


BodyTemplate = TextTemplate | JsonTemplate


def compile_body(raw: Any) -> BodyTemplate | None:
    """``request_body``: None, an object/array (JSON), a string holding JSON, or plain text."""
    if raw is None:
        return None
    if isinstance(raw, dict | list):
        if len(dump_json(raw)) > MAX_TEMPLATE_LENGTH:
            raise TemplateError([f"template is longer than {MAX_TEMPLATE_LENGTH} characters"])
        return JsonTemplate.compile(raw)
    if not isinstance(raw, str):
        raise TemplateError(["must be a string, an object, an array or null"])
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict | list):
        if len(raw) > MAX_TEMPLATE_LENGTH:
            raise TemplateError([f"template is longer than {MAX_TEMPLATE_LENGTH} characters"])
        return JsonTemplate.compile(parsed)
    template = TextTemplate.compile(raw)
    if template.placeholders and raw.lstrip()[:1] in ("{", "["):
        filled = "".join(p if isinstance(p, str) else "0" for p in template.parts)
        try:
            orjson.loads(filled)
        except orjson.JSONDecodeError:
            return template
        raise TemplateError(
            [
                "looks like JSON with unquoted placeholders; write them as whole JSON strings "
                '(e.g. "{{ run.attempt }}"), which render as the JSON value itself'
            ]
        )
    return template
