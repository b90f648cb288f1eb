"""Audit: no log call passes a field that the log's redaction would hide.

The log replaces the value of a field named like a credential (gateway/logs.py) whatever it
holds. A count or a flag so named was written as ``"[redacted]"``: ``user_updated``'s
``tokens_ended``, ``logged_out``'s ``refresh_token_ended`` and ``gateway prune``'s
``auth_tokens`` told an operator nothing. This test parses every module under gateway/ and
lists ``file:line field`` for each keyword of a ``log.<level>(...)`` call that would be hidden.
It sees keywords written out only: the keys of a ``**mapping`` (the prune line's counts, the
executor's ``**context``) are known only when the code runs, and are checked where they are logged
(tests/acceptance/test_prune_cli.py for ``pruned``).
"""

from __future__ import annotations

import ast

from gateway.logs import _is_secret_field
from tests.conftest import ROOT

GATEWAY = ROOT / "gateway"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _hidden_fields(tree: ast.AST) -> list[tuple[int, str]]:
    return [
        (node.lineno, keyword.arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LEVELS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "log"
        for keyword in node.keywords
        if keyword.arg is not None and _is_secret_field(keyword.arg)
    ]


def test_no_log_call_of_the_gateway_passes_a_field_the_log_hides() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in sorted(GATEWAY.rglob("*.py"))
        for line, name in _hidden_fields(ast.parse(path.read_text(), str(path)))
    ]
    assert found == [], "logged as [redacted]: rename the field: " + ", ".join(found)


def test_the_audit_finds_a_hidden_field() -> None:
    source = 'log.info("x", token_count=1, auth_tokens=2)\nlog.warning("y", secret=3)\n'
    assert _hidden_fields(ast.parse(source)) == [(1, "auth_tokens"), (2, "secret")]
