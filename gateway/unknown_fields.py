"""Naming the unknown keys of a JSON object in a 422, boundedly (pure: no I/O)."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from typing import Any

# Unknown keys named per object; the rest are only counted. An object may hold a million of
# them (a 16 MiB status report): listing each made a 125 MB answer and held the worker for
# seconds. The count costs one lookup per allowed key, not one per key sent.
MAX_LISTED_UNKNOWN = 10


def unknown_keys(body: Mapping[str, Any], allowed: Collection[str]) -> tuple[list[str], int]:
    """The first :data:`MAX_LISTED_UNKNOWN` keys of ``body`` not in ``allowed`` (a set or
    frozenset) and how many more there are."""
    unknown = len(body) - sum(1 for key in allowed if key in body)
    if not unknown:
        return [], 0
    names = list(itertools.islice((k for k in body if k not in allowed), MAX_LISTED_UNKNOWN))
    return names, unknown - len(names)


def add_unknown_keys(
    errors: dict[str, list[str]],
    body: Mapping[str, Any],
    allowed: Collection[str],
    prefix: str,
    message: str = "unknown field",
) -> None:
    """Add ``{prefix}.{key}: [message]`` for the first unknown keys of ``body`` and, when there
    are more, ``{prefix}: ["... and N more unknown fields"]``."""
    names, more = unknown_keys(body, allowed)
    for key in names:
        errors[f"{prefix}.{key}"] = [message]
    if more:
        errors.setdefault(prefix, []).append(f"{more} more unknown fields not listed")
