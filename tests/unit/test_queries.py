"""queries.sql: the parser, and that the code and the file agree on every query name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.storage.queries import QUERIES, QUERIES_PATH, QueryFileError, parse_queries

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"
QUERY_METHODS = frozenset({"fetch", "fetchrow", "fetchval", "execute", "executemany"})


def test_parser_splits_blocks_and_drops_comments() -> None:
    text = """-- preamble: ignored, there is no block yet
SELECT 'not a query';

-- name: first
-- The first query.
SELECT 1;

-- Section banner ------------------------------------------------
-- name: second_one
-- The second query,
-- described on two lines.
SELECT a, b  -- an inline comment stays
FROM t
WHERE a = $1;
"""
    assert parse_queries(text) == {
        "first": "SELECT 1",
        "second_one": "SELECT a, b  -- an inline comment stays\nFROM t\nWHERE a = $1",
    }


def test_header_spacing_is_flexible() -> None:
    assert parse_queries("--name:q\nSELECT 1\n") == {"q": "SELECT 1"}
    assert parse_queries("  --  name:  q  \nSELECT 1\n") == {"q": "SELECT 1"}


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(QueryFileError, match="'dup' is defined twice"):
        parse_queries("-- name: dup\nSELECT 1;\n-- name: dup\nSELECT 2;\n")


@pytest.mark.parametrize(
    "text",
    [
        "-- name: empty\n-- only a description\n\n-- name: next\nSELECT 1;\n",
        "-- name: last_is_empty\n",
        "-- name: just_comments\n-- a\n-- b\n",
    ],
)
def test_empty_blocks_are_rejected(text: str) -> None:
    with pytest.raises(QueryFileError, match="has no SQL"):
        parse_queries(text)


@pytest.mark.parametrize("header", ["-- name: Bad", "-- name: has-dash", "-- name:", "-- NAME: x"])
def test_malformed_headers_are_rejected(header: str) -> None:
    # Otherwise the line would read as a comment and its SQL would join the previous query.
    with pytest.raises(QueryFileError, match="line 3: malformed header"):
        parse_queries(f"-- name: ok\nSELECT 1;\n{header}\nSELECT 2;\n")


def test_every_query_in_the_file_has_a_description() -> None:
    lines = QUERIES_PATH.read_text().splitlines()
    undocumented = [
        line
        for number, line in enumerate(lines)
        if line.startswith("-- name:")
        and not (
            number + 1 < len(lines)
            and lines[number + 1].startswith("--")
            and not lines[number + 1].startswith("-- name:")
            and lines[number + 1].strip("- ")
        )
    ]
    assert not undocumented


def test_the_shipped_file_parses() -> None:
    assert QUERIES["ping"] == "SELECT 1"
    assert all(sql and not sql.endswith(";") for sql in QUERIES.values())


# --- code ↔ queries.sql -----------------------------------------------------------------------


def _gateway_sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in PACKAGE.rglob("*.py")]


def _referenced_names() -> dict[str, list[str]]:
    """Query names used literally: ``x.fetch("name", ...)`` (and the other methods) and
    ``QUERIES["name"]``. The AST, unlike a grep, ignores docstrings and comments."""
    found: dict[str, list[str]] = {}
    for path, tree in _gateway_sources():
        for node in ast.walk(tree):
            name = None
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in QUERY_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                name = node.args[0].value
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "QUERIES"
                and isinstance(node.slice, ast.Constant)
            ):
                name = node.slice.value
            if name is not None:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.setdefault(name, []).append(where)
    return found


def test_the_scan_sees_the_known_call_sites() -> None:
    # Guards the scanner itself: if it found nothing, the next test would pass vacuously.
    referenced = _referenced_names()
    assert "ping" in referenced and "user_insert" in referenced and "schema_lock" in referenced
    assert len(referenced) >= 10


def test_every_query_name_used_in_the_code_exists() -> None:
    missing = {name: places for name, places in _referenced_names().items() if name not in QUERIES}
    assert not missing, f"not in queries.sql: {missing}"


def test_every_query_in_the_file_is_used_somewhere() -> None:
    # Some callers pick the name from a table (``for query in ("a", "b")``): any string
    # constant in the package equal to the name counts as a use.
    strings = {
        node.value
        for _, tree in _gateway_sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    unused = sorted(set(QUERIES) - strings)
    assert not unused, f"queries.sql blocks nothing uses: {unused}"
