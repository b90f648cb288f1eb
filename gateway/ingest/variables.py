"""Hook variables: validation of ``settings.variables``, type coercion and extraction.

A variable definition is ``{name, path?, type, required?, default_value?}``; ``path`` defaults to
``name`` (see :mod:`gateway.ingest.paths` for the path syntax). ``null`` for ``path``,
``required`` or ``default_value`` means "not given".

Coercion rules (payload value -> declared type; anything else is an error):

* ``string``: strings as is; booleans -> ``"true"``/``"false"``; integers -> decimal digits;
  finite floats -> Python's shortest repr (``2.0`` -> ``"2.0"``, ``1e16`` -> ``"1e+16"``);
  arrays and objects are errors.
* ``integer``: integers; floats with an integral value (``2.0`` -> ``2``); strings matching
  ``^[+-]?[0-9]+$`` after stripping whitespace (``" 42 "`` -> ``42``). The result must fit in a
  signed 64-bit integer (PostgreSQL ``bigint``, what executors read): ``1e30`` or a 30-digit
  string is an error. Booleans are errors.
* ``number``: integers and finite floats (kept as they are); strings: integer-looking -> int
  (outside -2**63 .. 2**64-1: float, as a JSON number that large is parsed), decimal/exponent
  notation (``"2.5"``, ``"1e3"``) -> float; NaN, infinities and booleans are errors.
* ``boolean``: booleans; integers ``0``/``1``; strings ``true/false/1/0/yes/no`` (any case,
  surrounding whitespace ignored). Floats are errors.
* ``array``: lists only. ``object``: objects only. Values are not copied.

Extraction: a value that is absent (path not found, or JSON ``null``) takes the default when
there is one; otherwise a required variable is an error, and an optional one is set to
``None`` so that downstream code sees every declared variable. A value present but impossible
to coerce is an error (the default is not used). Every error is collected before raising.
When a JSONPath can match several values (wildcards, filters, ``..``), an ``array`` variable
receives the list of all matches and other types take the first match; a dot path or simple
JSONPath always yields the value itself.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.unknown_fields import add_unknown_keys

from .paths import PathSyntaxError, compile_path

VARIABLE_TYPES: frozenset[str] = frozenset(
    {"string", "integer", "number", "boolean", "array", "object"}
)
MAX_VARIABLES = 100
MAX_NAME_LENGTH = 60

# Names become environment variables (HOOK_VAR_<NAME>), hence the identifier rule and the
# case-insensitive duplicate check.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALLOWED_KEYS = frozenset({"name", "path", "type", "required", "default_value"})
_TYPES_MESSAGE = "must be one of: " + ", ".join(sorted(VARIABLE_TYPES))
# ASCII only: int()/float() also accept other Unicode digits and "1_000", which we don't.
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1  # the largest integer a JSON body parses to (orjson); beyond: a float
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


class CoercionError(ValueError):
    """A value that cannot be converted to the declared variable type."""


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, int):
        return "an integer" if abs(value) > 10**40 else str(value)
    if isinstance(value, float):
        return repr(value)
    return type(value).__name__


def _fail(expected: str, value: Any) -> CoercionError:
    return CoercionError(f"expected {expected}, got {_describe(value)}")


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            raise _fail("a string", value) from None
    raise _fail("a string", value)


def _parse_int(text: str) -> int | None:
    if not _INT_RE.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return None


def _to_integer(value: Any) -> int:
    number: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _parse_int(value.strip())
    if number is None:
        raise _fail("an integer", value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise _fail("an integer that fits in 64 bits", value)
    return number


def _to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise _fail("a number", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        text = value.strip()
        integer = _parse_int(text)
        if integer is not None and INT64_MIN <= integer <= UINT64_MAX:
            return integer
        # isfinite: "1e999" parses as inf
        if _FLOAT_RE.fullmatch(text) and math.isfinite(number := float(text)):
            return number
    raise _fail("a number", value)


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _fail("a boolean", value)


def _exactly(kind: type, expected: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        raise _fail(expected, value)

    return check


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "array": _exactly(list, "an array"),
    "object": _exactly(dict, "an object"),
}


def coerce(value: Any, type_: str) -> Any:
    """Convert ``value`` to ``type_`` per the module rules; raise :class:`CoercionError`.

    ``None`` is not coercible: the extractor treats JSON null as "absent" before coercing.
    """
    coercer = _COERCERS.get(type_)
    if coercer is None:
        raise CoercionError(f"unknown type {type_!r}; {_TYPES_MESSAGE}")
    return coercer(value)


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """One validated variable definition (``default_value`` is already coerced)."""

    name: str
    path: str
    type: str
    required: bool = False
    default_value: Any = None
    has_default: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the normalized definition, as stored and shown by the API."""
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "required": self.required,
            "default_value": self.default_value if self.has_default else None,
        }


def parse_variable_specs(
    raw: Any, field: str = "settings.variables"
) -> tuple[list[VariableSpec], dict[str, list[str]]]:
    """Validate the API list of variable definitions.

    Returns ``(specs, errors)``; ``errors`` maps field paths such as
    ``"settings.variables.2.type"`` to messages. ``specs`` holds the valid items only, so it
    is meaningful only when ``errors`` is empty. An empty list is valid.
    """
    if not isinstance(raw, list):
        return [], {field: ["must be a list"]}
    if len(raw) > MAX_VARIABLES:
        return [], {field: [f"must not have more than {MAX_VARIABLES} items"]}
    specs: list[VariableSpec] = []
    errors: dict[str, list[str]] = {}
    seen: dict[str, int] = {}  # upper-cased name -> index of its first definition
    for i, item in enumerate(raw):
        spec = _parse_item(item, f"{field}.{i}", field, i, seen, errors)
        if spec is not None:
            specs.append(spec)
    return specs, errors


def _name_error(name: Any, field: str, seen: dict[str, int]) -> str | None:
    if name is None:
        return "is required"
    if not isinstance(name, str):
        return "must be a string"
    if len(name) > MAX_NAME_LENGTH:
        return f"must not be longer than {MAX_NAME_LENGTH} characters"
    if not _NAME_RE.fullmatch(name):
        return "must start with a letter or '_' and contain only letters, digits and '_'"
    if name.upper() in seen:
        return f"duplicates the name of {field}.{seen[name.upper()]} (names are case-insensitive)"
    return None


def _parse_item(
    item: Any,
    prefix: str,
    field: str,
    index: int,
    seen: dict[str, int],
    errors: dict[str, list[str]],
) -> VariableSpec | None:
    if not isinstance(item, dict):
        errors[prefix] = ["must be an object"]
        return None
    before = len(errors)
    add_unknown_keys(errors, item, _ALLOWED_KEYS, prefix)

    name: Any = item.get("name")
    problem = _name_error(name, field, seen)
    if problem is not None:
        errors[f"{prefix}.name"] = [problem]
    else:
        seen[name.upper()] = index

    type_: Any = item.get("type")
    type_ok = isinstance(type_, str) and type_ in VARIABLE_TYPES
    if not type_ok:
        errors[f"{prefix}.type"] = ["is required" if type_ is None else _TYPES_MESSAGE]

    path: Any = item.get("path")
    if path is None:
        path = name  # the documented default; already reported above if the name is bad
    else:
        try:
            compile_path(path)
        except PathSyntaxError as exc:
            errors[f"{prefix}.path"] = [str(exc)]

    required = item.get("required")
    if required is None:
        required = False
    elif not isinstance(required, bool):
        errors[f"{prefix}.required"] = ["must be a boolean"]

    default = item.get("default_value")
    if default is not None and type_ok:
        try:
            default = coerce(default, type_)
        except CoercionError as exc:
            errors[f"{prefix}.default_value"] = [f"does not match type {type_}: {exc}"]

    if len(errors) > before:
        return None
    return VariableSpec(name, path, type_, required, default, default is not None)


class VariableExtractionError(Exception):
    """Raised by :meth:`VariableExtractor.extract`; ``errors`` maps variable names to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        details = "; ".join(f"{name}: {', '.join(msgs)}" for name, msgs in errors.items())
        super().__init__(f"{len(errors)} variable(s) could not be extracted: {details}")


class VariableExtractor:
    """Extracts and coerces a hook's variables; build once per hook, reuse per request."""

    __slots__ = ("_plan", "needs_tree")

    def __init__(self, specs: Sequence[VariableSpec]) -> None:
        """Compile every path once (raises PathSyntaxError if a spec was not validated)."""
        self._plan = tuple((spec, compile_path(spec.path), _COERCERS[spec.type]) for spec in specs)
        # A JSONPath expression needs the whole document as Python objects; singular paths can
        # read a lazily parsed one (gateway.ingest.lazy_json).
        self.needs_tree = any(not path.singular for _, path, _ in self._plan)

    def extract(self, payload: Any) -> dict[str, Any]:
        """Return ``{name: value}`` for every declared variable, or raise
        :class:`VariableExtractionError` listing every missing or uncoercible variable."""
        result: dict[str, Any] = {}
        errors: dict[str, list[str]] = {}
        for spec, path, coercer in self._plan:
            if path.singular or spec.type != "array":
                found, value = path.first(payload)
            else:
                value = path.find(payload)  # all matches of a wildcard/filter path
                found = bool(value)
            if not found or value is None:
                if spec.has_default:
                    default = spec.default_value
                    # Defaults are shared by all requests: hand out copies of containers.
                    if isinstance(default, (list, dict)):
                        default = copy.deepcopy(default)
                    result[spec.name] = default
                elif spec.required:
                    errors[spec.name] = [f"is required but missing at path '{path.source}'"]
                else:
                    result[spec.name] = None
                continue
            try:
                result[spec.name] = coercer(value)
            except CoercionError as exc:
                errors[spec.name] = [f"invalid value at path '{path.source}': {exc}"]
        if errors:
            raise VariableExtractionError(errors)
        return result
