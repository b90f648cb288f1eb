"""Targeted JSON reads for the ingest hot path (issue 7).

Building a Python object tree for a whole webhook body (``orjson.loads`` of a 28 KB GitHub
payload, then freeing it) was a quarter of the gateway's CPU, to read a handful of values. When
every path a hook reads (variables and conditions) is a singular path (a dot path or a simple
JSONPath, see :mod:`gateway.ingest.paths`), :func:`parse` validates the body with simdjson and
returns a :class:`LazyDocument` that walks simdjson's parsed tape to just those values; only a
value that is itself an object or an array becomes a Python tree. Hooks with other JSONPath
expressions get the full ``orjson`` tree as before.

Equivalence with ``orjson.loads`` (pinned by tests/unit/test_lazy_json.py): a body simdjson
refuses is handed to orjson, which decides (and words the 400), so numbers simdjson cannot
represent (integers beyond 64 bits, which orjson reads as floats) still work. One difference: with
a repeated member name in an object (``{"a": 1, "a": 2}``, which RFC 8259 leaves undefined), a
path through it reads the first occurrence where orjson keeps the last.

simdjson reuses one parser per process; a parser must not parse again while values from its
previous document are alive, so a :class:`LazyDocument` is only valid until :meth:`release` (or
until the next :func:`parse`, which then falls back to a fresh parser rather than fail).
"""

from __future__ import annotations

from typing import Any

import orjson
import simdjson

_Object = simdjson.Object
_Array = simdjson.Array
_parser = simdjson.Parser()
_BOM = b"\xef\xbb\xbf"


class LazyDocument:
    """A validated JSON document whose values are read on demand by compiled path steps."""

    __slots__ = ("_root",)

    def __init__(self, root: Any) -> None:
        self._root = root

    def walk(self, steps: tuple[tuple[str | None, int | None], ...], missing: Any) -> Any:
        """The value at ``steps`` (see ``paths._walk``: same rules), or ``missing``.

        Objects and arrays are returned as Python dicts and lists (a copy of that subtree).
        """
        current = self._root
        for key, index in steps:
            kind = type(current)
            if kind is _Object:
                if key is None:
                    return missing
                current = current.get(key, missing)
                if current is missing:
                    return missing
            elif index is not None and kind is _Array:
                try:
                    current = current[index]
                except (IndexError, OverflowError):  # past the array, or past a C index
                    return missing
            else:
                return missing
        kind = type(current)
        if kind is _Object:
            return current.as_dict()
        if kind is _Array:
            return current.as_list()
        return current

    def release(self) -> None:
        """Drop the parsed document so the parser can be reused."""
        self._root = None


def parse(text: bytes | str, *, lazy: bool) -> Any:
    """Validate ``text`` as JSON; a :class:`LazyDocument` when ``lazy``, else the orjson tree.

    Raises ``orjson.JSONDecodeError`` for invalid JSON, exactly as ``orjson.loads`` does.
    """
    if not lazy:
        return orjson.loads(text)
    if text.startswith(_BOM if type(text) is bytes else "\ufeff"):  # type: ignore[arg-type]
        # simdjson skips a byte order mark; orjson refuses it (400), and so do we.
        return orjson.loads(text)
    global _parser
    try:
        try:
            root = _parser.parse(text)
        except RuntimeError as exc:
            if "re-use a parser" not in str(exc):
                raise
            # A previous document is still referenced somewhere: leave that parser to it.
            _parser = simdjson.Parser()
            root = _parser.parse(text)
    except (ValueError, RuntimeError):  # UnicodeDecodeError is a ValueError
        # Let orjson decide: it rejects with its own message, or reads what simdjson cannot
        # represent (big integers) into the full tree.
        return orjson.loads(text)
    return LazyDocument(root)
