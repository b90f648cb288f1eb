"""``trigger_when.conditions``: which payloads may start a run.

``trigger_when`` is optional: ``{"conditions": [{"path": ..., "accepted_values": [...]}]}``.
Every condition must match (AND); an absent or empty ``trigger_when`` always matches.

A condition matches when the value at ``path`` equals one of ``accepted_values``, compared
type-aware: strings equal strings, numbers equal numbers (``1 == 1.0``), booleans equal
booleans (``true`` never equals ``1``), ``null`` equals ``null``. A missing path never matches,
not even ``null``. Arrays and objects never match. When a JSONPath can match several values
(wildcards, filters), the condition matches if any of them is accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.unknown_fields import add_unknown_keys

from .paths import CompiledPath, PathSyntaxError, compile_path

MAX_CONDITIONS = 50
MAX_ACCEPTED_VALUES = 100
_CONDITION_KEYS = frozenset({"path", "accepted_values"})


def _match_key(value: Any) -> tuple[str, Any] | None:
    """Type-tagged key for set lookup, so that True and 1 (equal in Python) stay distinct.

    Numbers share one tag so 1 and 1.0 match (they hash equal); containers get None.
    """
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if value is None:
        return ("z", None)
    return None


def _render(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > 60:
        value = value[:60] + "..."
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return "a large integer"  # str() of a huge int can raise
    return json.dumps(value, ensure_ascii=False)


def _render_list(values: list[Any], limit: int = 10) -> str:
    shown = [_render(v) for v in values[:limit]]
    if len(values) > limit:
        shown.append(f"... {len(values) - limit} more")
    return "[" + ", ".join(shown) + "]"


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition: ``path`` and the tagged set of accepted values."""

    path: CompiledPath
    accepted_values: tuple[Any, ...]
    accepted_keys: frozenset[tuple[str, Any]]

    def failure(self, payload: Any) -> str | None:
        """Return None when the payload matches, else why not (without the index prefix)."""
        where = self.path.source
        if self.path.singular:
            found, value = self.path.first(payload)
            if not found:
                return f"value at '{where}' is missing"
            if _match_key(value) in self.accepted_keys:
                return None
            return f"value at '{where}' is {_render(value)}"
        values = self.path.find(payload)
        if not values:
            return f"value at '{where}' is missing"
        if any(_match_key(v) in self.accepted_keys for v in values):
            return None
        return f"values at '{where}' are {_render_list(values)}"


class ConditionSet:
    """All conditions of a hook; :meth:`evaluate` is the per-request check."""

    __slots__ = ("conditions", "needs_tree")

    def __init__(self, conditions: Iterable[Condition] = ()) -> None:
        """Wrap already compiled conditions; use :func:`parse_trigger_when` for API input."""
        self.conditions: tuple[Condition, ...] = tuple(conditions)
        # As VariableExtractor.needs_tree: only JSONPath expressions need the Python tree.
        self.needs_tree = any(not c.path.singular for c in self.conditions)

    def __len__(self) -> int:
        return len(self.conditions)

    def evaluate(self, payload: Any) -> str | None:
        """Return None when every condition matches, else the first failure's reason."""
        for i, condition in enumerate(self.conditions):
            problem = condition.failure(payload)
            if problem is not None:
                accepted = _render_list(list(condition.accepted_values))
                return f"condition {i}: {problem}, accepted: {accepted}"
        return None

    def to_json(self) -> dict[str, Any]:
        """Return the normalized ``trigger_when`` object for storage and API output."""
        return {
            "conditions": [
                {"path": c.path.source, "accepted_values": list(c.accepted_values)}
                for c in self.conditions
            ]
        }

    @classmethod
    def from_json(cls, raw: Any, extra_keys: Iterable[str] = ()) -> ConditionSet:
        """Rebuild from stored JSON; raise ValueError if it no longer validates."""
        conditions, errors = parse_trigger_when(raw, extra_keys=extra_keys)
        if errors:
            raise ValueError(f"invalid stored trigger_when: {errors}")
        return conditions


def condition_paths(trigger_when: Any) -> list[tuple[str, Any]]:
    """(field, path) of every condition in a ``trigger_when`` object as sent."""
    conditions = trigger_when.get("conditions") if isinstance(trigger_when, dict) else None
    if not isinstance(conditions, list):
        return []
    return [
        (f"trigger_when.conditions.{i}.path", item.get("path"))
        for i, item in enumerate(conditions)
        if isinstance(item, dict)
    ]


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # NaN would never match anything
    return value is None or isinstance(value, (str, int))  # bool is an int


def _parse_condition(item: Any, prefix: str, errors: dict[str, list[str]]) -> Condition | None:
    if not isinstance(item, dict):
        errors[prefix] = ["must be an object"]
        return None
    before = len(errors)
    add_unknown_keys(errors, item, _CONDITION_KEYS, prefix)
    path = None
    if item.get("path") is None:
        errors[f"{prefix}.path"] = ["is required"]
    else:
        try:
            path = compile_path(item["path"])
        except PathSyntaxError as exc:
            errors[f"{prefix}.path"] = [str(exc)]
    values = item.get("accepted_values")
    if not isinstance(values, list) or not values:
        errors[f"{prefix}.accepted_values"] = ["must be a non-empty list"]
    elif len(values) > MAX_ACCEPTED_VALUES:
        errors[f"{prefix}.accepted_values"] = [
            f"must not have more than {MAX_ACCEPTED_VALUES} items"
        ]
    else:
        for j, value in enumerate(values):
            if not _is_scalar(value):
                errors[f"{prefix}.accepted_values.{j}"] = [
                    "must be a string, a finite number, a boolean or null"
                ]
    if len(errors) > before or path is None or not isinstance(values, list):
        return None
    keys = frozenset(k for k in map(_match_key, values) if k is not None)
    return Condition(path, tuple(values), keys)


def parse_trigger_when(
    raw: Any, field: str = "trigger_when", extra_keys: Iterable[str] = ()
) -> tuple[ConditionSet, dict[str, list[str]]]:
    """Validate ``trigger_when`` and compile its conditions.

    Returns ``(conditions, errors)`` with error keys like ``"trigger_when.conditions.0.path"``.
    ``None``, ``{}`` and an empty ``conditions`` list give a set that always matches.
    ``extra_keys`` are other members the caller validates itself (outgoing hooks' ``events``).
    """
    errors: dict[str, list[str]] = {}
    if raw is None:
        return ConditionSet(), errors
    if not isinstance(raw, dict):
        return ConditionSet(), {field: ["must be an object"]}
    allowed = frozenset({"conditions", *extra_keys})
    add_unknown_keys(errors, raw, allowed, field)
    items = raw.get("conditions")
    if items is None:
        return ConditionSet(), errors
    if not isinstance(items, list):
        errors[f"{field}.conditions"] = ["must be a list"]
        return ConditionSet(), errors
    if len(items) > MAX_CONDITIONS:
        errors[f"{field}.conditions"] = [f"must not have more than {MAX_CONDITIONS} items"]
        return ConditionSet(), errors
    conditions = []
    for i, item in enumerate(items):
        condition = _parse_condition(item, f"{field}.conditions.{i}", errors)
        if condition is not None:
            conditions.append(condition)
    return ConditionSet(conditions), errors
