"""Named SQL statements, loaded once from ``queries.sql``.

Each block starts with ``-- name: <query_name>`` followed by a one-line ``--`` description; the
SQL runs until the next block. Callers use ``QUERIES["claim_runs"]``: no SQL strings elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

QUERIES_PATH = Path(__file__).with_name("queries.sql")
_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")
# Anything that looks like a header but is not a valid one: an error, not a silent comment
# (it would otherwise glue its SQL onto the previous query).
_HEADER_LIKE = re.compile(r"^--\s*name\s*:", re.IGNORECASE)


class QueryFileError(ValueError):
    """queries.sql is malformed (duplicate, empty block or malformed header)."""


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}; comments before the SQL are dropped."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def finish() -> None:
        if name is None:
            return
        sql = "\n".join(line for line in lines if not line.lstrip().startswith("--")).strip()
        if not sql:
            raise QueryFileError(f"query {name!r} has no SQL")
        if name in queries:
            raise QueryFileError(f"query {name!r} is defined twice")
        queries[name] = sql.rstrip(";")

    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line.strip())
        if match:
            finish()
            name, lines = match.group(1), []
        elif _HEADER_LIKE.match(line.strip()):
            raise QueryFileError(
                f"line {number}: malformed header {line.strip()!r}; "
                "expected '-- name: lower_snake_case'"
            )
        elif name is not None:
            lines.append(line)
    finish()
    return queries


def load_queries(path: Path = QUERIES_PATH) -> dict[str, str]:
    """Parse the queries file at ``path``."""
    return parse_queries(path.read_text(encoding="utf-8"))


QUERIES: dict[str, str] = load_queries()
