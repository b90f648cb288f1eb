"""Audit: the gateway never waits with ``asyncio.wait_for``.

On Python 3.11 (the oldest supported, and the Docker image's), ``wait_for`` swallows a
cancellation that arrives in the same turn of the event loop as what it waits for finishes:
it returns as if not cancelled. A stop or a forced stop landing then was lost: a KeptListener
went on listening and its ``close()`` waited for ever (tests/integration/
test_listen_connections.py, tests/unit/test_close_quietly.py show that race). ``async with
asyncio.timeout(...)`` never loses a cancellation; from Python 3.12 ``wait_for`` is built on
it. This test parses every module under gateway/ and lists ``file:line`` for any call.
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

GATEWAY = ROOT / "gateway"


def _wait_for_calls(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "wait_for")
            or (isinstance(node.func, ast.Name) and node.func.id == "wait_for")
        )
    ]


def test_no_module_of_the_gateway_calls_wait_for() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(GATEWAY.rglob("*.py"))
        for line in _wait_for_calls(ast.parse(path.read_text(), str(path)))
    ]
    assert found == [], "use `async with asyncio.timeout(...)` instead of wait_for: " + ", ".join(
        found
    )


def test_the_audit_finds_a_call() -> None:
    # The audit itself can fail: both spellings of the call are found.
    source = "await asyncio.wait_for(x, 1)\nfrom asyncio import wait_for\nawait wait_for(y, 2)\n"
    assert _wait_for_calls(ast.parse(source)) == [1, 3]
