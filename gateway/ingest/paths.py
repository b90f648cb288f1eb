"""Compiled JSON paths for variable extraction and trigger conditions.

Two syntaxes are accepted, and both are compiled once (per hook) by :func:`compile_path`:

* **Dot paths** (anything not starting with ``$``): ``pull_request.head.ref``,
  ``commits.0.id``, ``source_type``. Segments are separated by ``.``; each segment is one or
  more letters, digits, ``_``, ``-`` or ``@`` (Unicode letters and digits included). They are
  validated by these rules (not by jsonpath-ng) and evaluated by a plain loop. A segment
  selects the member of that name in an object; a canonical non-negative integer segment
  (``0``, ``12``, not ``01``) additionally selects that element of an array. Keys with other
  characters, negative indexes, wildcards and filters need JSONPath.
* **JSONPath** (anything starting with ``$``): parsed once with ``jsonpath_ng.ext.parse``;
  results are exactly jsonpath-ng's (``[m.value for m in matches]``). When the parsed tree is
  only ``$`` followed by single names (``$.a``, ``$['a']``) and single indexes (``$[0]``,
  ``$[-1]``) it is evaluated by the same loop as dot paths, replicating jsonpath-ng's rules
  for those two nodes (a name selects only in objects, an index only in arrays). When it is
  built only of names, indexes, wildcards, slices and recursive descent (``$..labels[*].name``,
  ``$.commits[0:2].id``) it is evaluated by plain functions over the parsed values that
  replicate jsonpath-ng's ``find`` for those nodes, order of results included: jsonpath-ng
  wraps every value it visits in a context object, which made ``$..name`` on a 1 MB payload
  hold the event loop for seconds. Anything else (filters, unions, extensions) is jsonpath-ng's.

Evaluation never raises: a missing key, a wrong container type or an index out of range is
"not found", and an exception raised inside jsonpath-ng at evaluation time counts as no match.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonpath_ng import Child, Descendants, Fields, Index, JSONPath, Root, Slice
from jsonpath_ng.ext import parse as _jsonpath_parse
from jsonpath_ng.ext.filter import Expression as FilterExpression
from jsonpath_ng.ext.string import Sub
from jsonpath_ng.jsonpath import Wildcard

from .lazy_json import LazyDocument

__all__ = [
    "MAX_PATH_LENGTH",
    "CompiledPath",
    "PathSyntaxError",
    "compile_path",
    "regular_expression_errors",
]

#: Longest accepted path; a guard against pathological input to the PLY parser.
MAX_PATH_LENGTH = 1024

_SEGMENT_RE = re.compile(r"[\w@-]+")
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_MISSING: Any = object()

# One step of the fast path: (key for objects or None, index for arrays or None).
_Step = tuple[str | None, int | None]
# What one node of a structural JSONPath selects from one value, in jsonpath-ng's order.
_Select = Callable[[Any], list[Any]]
_CONTAINERS = (dict, list)


class PathSyntaxError(ValueError):
    """A path that cannot be compiled; the message names the path and the problem."""


@dataclass(frozen=True, slots=True)
class CompiledPath:
    """A path compiled once; ``find``/``first`` evaluate it against a parsed JSON document.

    ``steps`` is set for fast-path evaluation (a tuple of (key, index) steps); otherwise
    ``expression`` holds the parsed jsonpath-ng expression, and ``select`` its structural
    evaluation when it has one (see the module docstring). ``singular`` is true when the path
    can match at most one value (always the case for the fast path).
    """

    source: str
    steps: tuple[_Step, ...] | None = None
    expression: Any = field(default=None, compare=False, repr=False)
    select: _Select | None = field(default=None, compare=False, repr=False)

    @property
    def singular(self) -> bool:
        """True when the path selects at most one value (fast-path evaluation)."""
        return self.steps is not None

    def find(self, document: Any) -> list[Any]:
        """Return every value the path selects in ``document`` (possibly empty)."""
        if self.steps is not None:
            value = _walk(self.steps, document)
            return [] if value is _MISSING else [value]
        try:
            if self.select is not None:
                return self.select(document)
            return [match.value for match in self.expression.find(document)]
        except Exception:
            # jsonpath-ng extensions (filters, arithmetic) can raise on odd data; on the hot
            # path a bad payload must read as "no match", never as a 500.
            return []

    def first(self, document: Any) -> tuple[bool, Any]:
        """Return ``(True, value)`` for the first match, or ``(False, None)`` if none."""
        if self.steps is not None:
            value = _walk(self.steps, document)
            return (False, None) if value is _MISSING else (True, value)
        matches = self.find(document)
        return (True, matches[0]) if matches else (False, None)


def _walk(steps: tuple[_Step, ...], document: Any) -> Any:
    if type(document) is LazyDocument:  # a body validated but not built (singular paths only)
        return document.walk(steps, _MISSING)
    current = document
    for key, index in steps:
        if isinstance(current, dict):
            if key is None:
                return _MISSING
            current = current.get(key, _MISSING)
            if current is _MISSING:
                return _MISSING
        elif index is not None and isinstance(current, list):
            # Negative indexes only come from JSONPath `[-n]`; Python's indexing rules
            # (-len <= i < len) are exactly jsonpath-ng's.
            try:
                current = current[index]
            except IndexError:
                return _MISSING
        else:
            return _MISSING
    return current


def compile_path(path: str) -> CompiledPath:
    """Compile ``path`` (dot path or ``$`` JSONPath) or raise :class:`PathSyntaxError`.

    Results are cached by source text: compiled paths are immutable, and many hooks share the
    same few paths (``pull_request.number``), so the cache saves both parse time and memory.
    """
    if not isinstance(path, str):  # checked before the cache, which needs a hashable key
        raise PathSyntaxError(f"path must be a string, got {type(path).__name__}")
    return _compile_cached(path)


@lru_cache(maxsize=8192)
def _compile_cached(path: str) -> CompiledPath:
    if not path:
        raise PathSyntaxError("path is empty")
    if len(path) > MAX_PATH_LENGTH:
        raise PathSyntaxError(f"path {path[:40]!r}... is longer than {MAX_PATH_LENGTH} characters")
    if path.startswith("$"):
        return _compile_jsonpath(path)
    return CompiledPath(source=path, steps=_compile_dot_path(path))


def _compile_dot_path(path: str) -> tuple[_Step, ...]:
    steps: list[_Step] = []
    for position, segment in enumerate(path.split(".")):
        if not segment:
            raise PathSyntaxError(
                f"invalid path {path!r}: empty segment at position {position} "
                "(recursive descent needs JSONPath, e.g. '$..name')"
            )
        if not _SEGMENT_RE.fullmatch(segment):
            raise PathSyntaxError(
                f"invalid path {path!r}: segment {segment!r} may contain only letters, digits,"
                " '_', '-' and '@'; use JSONPath for other keys, e.g. $['a key']"
            )
        index = int(segment) if _INDEX_RE.fullmatch(segment) else None
        steps.append((segment, index))
    return tuple(steps)


def _compile_jsonpath(path: str) -> CompiledPath:
    try:
        with warnings.catch_warnings():
            # Deprecated-but-valid syntax (e.g. unquoted words in filters) warns at parse
            # time; it still works in the pinned jsonpath-ng, so accept it silently.
            warnings.simplefilter("ignore", DeprecationWarning)
            expression = _jsonpath_parse(path)
    except Exception as exc:  # jsonpath-ng raises lexer/parser errors and, rarely, others
        raise PathSyntaxError(f"invalid JSONPath {path!r}: {exc}") from exc
    steps = _simple_steps(expression)
    if steps is not None:
        return CompiledPath(source=path, steps=steps)
    return CompiledPath(source=path, expression=expression, select=_structural(expression, True))


def regular_expression_errors(paths: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    """For API input: ``{field: [message]}`` for each ``(field, path)`` whose JSONPath runs a
    regular expression on payload text, which new and updated hooks may not do.

    Python's re backtracks: '(a+)+$' against a few dozen characters of a payload holds the
    worker's event loop for seconds, and a payload is whatever a sender posts. Hooks stored
    before the rule keep working (compile_path accepts them); an operator should change them.
    """
    errors: dict[str, list[str]] = {}
    for field_name, path in paths:
        if not isinstance(path, str) or not path.startswith("$"):
            continue
        try:
            expression = compile_path(path).expression
        except PathSyntaxError:
            continue  # reported by the path's own validation
        regex = None if expression is None else _regular_expression_in(expression)
        if regex is not None:
            errors[field_name] = [
                f"invalid JSONPath {path!r}: {regex} is not supported (a regular expression "
                "can take exponential time on a crafted payload); compare with "
                "accepted_values instead"
            ]
    return errors


def _regular_expression_in(expression: Any) -> str | None:
    """What in a parsed JSONPath runs a regular expression on payload text, or None."""
    stack, seen = [expression], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, FilterExpression) and node.op == "=~":
            return "the regular-expression filter '=~'"
        if isinstance(node, Sub):
            return "sub(/regex/, ...)"
        if isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, JSONPath):
            stack.extend(getattr(node, "__dict__", {}).values())
    return None


def _simple_steps(node: Any) -> tuple[_Step, ...] | None:
    """Flatten ``$``/single-name/single-index trees into fast-path steps, else None."""
    reversed_steps: list[_Step] = []
    while type(node) is Child:
        right = node.right
        if type(right) is Fields and len(right.fields) == 1 and right.fields[0] != "*":
            reversed_steps.append((right.fields[0], None))
        elif type(right) is Index and len(right.indices) == 1:
            reversed_steps.append((None, right.indices[0]))
        else:
            return None
        node = node.left
    if type(node) is not Root:
        return None
    return tuple(reversed(reversed_steps))


def _structural(node: Any, leftmost: bool) -> _Select | None:
    """``node``'s selection as plain functions (see the module docstring), or None when it has
    a node they do not replicate. ``$`` is replicated only where it is the document itself:
    the leftmost node of the whole path (elsewhere jsonpath-ng climbs to the root)."""
    kind = type(node)
    if kind is Root:
        return _select_self if leftmost else None
    if kind is Child or kind is Descendants:
        left = _structural(node.left, leftmost)
        right = _structural(node.right, False)
        if left is None or right is None:
            return None
        if kind is Child:
            return _child(left, right)
        single = type(node.right) is Fields and len(node.right.fields) == 1
        return _descendants(left, right, node.right.fields[0] if single else None)
    if kind is Fields and not node._deprecated_wildcard_use:
        return _fields(tuple(node.fields))
    if kind is Index:
        return _indexes(tuple(node.indices))
    if kind is Wildcard:
        return _wildcard
    if kind is Slice and not node._deprecated_wildcard_use:
        return _slice(node.start, node.end, node.step)
    return None


def _select_self(value: Any) -> list[Any]:
    return [value]


def _child(left: _Select, right: _Select) -> _Select:
    def select(value: Any) -> list[Any]:
        return [found for selected in left(value) for found in right(selected)]

    return select


def _descendants(left: _Select, right: _Select, name: str | None) -> _Select:
    """jsonpath-ng's Descendants.find: ``right`` applied to each match of ``left`` and to every
    value under it, depth-first in pre-order, children in their natural order. Scalars are
    not visited: every selector here selects nothing from one. ``name``: ``right`` selects
    only that member (``$..name``, the common case), tested in place."""

    def select(value: Any) -> list[Any]:
        matches: list[Any] = []
        stack = [found for found in reversed(left(value)) if isinstance(found, _CONTAINERS)]
        pop, push = stack.pop, stack.extend
        while stack:
            current = pop()
            if isinstance(current, dict):
                if name is None:
                    matches.extend(right(current))
                elif name in current:
                    matches.append(current[name])
                push(
                    [
                        child
                        for child in reversed(current.values())
                        if isinstance(child, _CONTAINERS)
                    ]
                )
            else:
                if name is None:
                    matches.extend(right(current))
                push([child for child in reversed(current) if isinstance(child, _CONTAINERS)])
        return matches

    return select


def _fields(names: tuple[str, ...]) -> _Select:
    # Fields.find: each name, in order, that an object has (null values included).
    def select(value: Any) -> list[Any]:
        if not isinstance(value, dict):
            return []
        return [value[name] for name in names if name in value]

    return select


def _indexes(indexes: tuple[int, ...]) -> _Select:
    # Index.find: each index, in order, within -len <= i < len of an array.
    def select(value: Any) -> list[Any]:
        if not isinstance(value, list) or not value:
            return []
        size = len(value)
        return [value[i] for i in indexes if -size <= i < size]

    return select


def _wildcard(value: Any) -> list[Any]:
    # Wildcard.find: an array's elements, an object's member values; nothing of a scalar.
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return list(value.values())
    return []


def _slice(start: int | None, end: int | None, step: int | None) -> _Select:
    # Slice.find (parsed, so never the deprecated object wildcard): arrays only, step 0 none.
    def select(value: Any) -> list[Any]:
        if not isinstance(value, list) or step == 0:
            return []
        return value[start:end:step]

    return select
