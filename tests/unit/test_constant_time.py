"""Audit: no secret, token, signature, digest or password is compared with ``==``/``!=``.

Python's ``==`` on str/bytes stops at the first differing byte, so comparing a secret with it
leaks, through timing, how much of a guess was right. Secrets must be compared with
``hmac.compare_digest`` (or verified by argon2, or looked up by the hash of a random token).
This test parses every module under gateway/ and fails, listing ``file:line``, for any
equality comparison whose operand source text names such a value. A comparison that is not
about a secret value (a header *name*, a scheme, a length) goes into ALLOWED with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

GATEWAY = ROOT / "gateway"
SENSITIVE = re.compile(
    r"secret|token|signature|digest|password|passwd|hash|hmac|api_?key|credential", re.I
)

# (path relative to the repository, the comparison as ast.unparse writes it) -> why it is fine.
ALLOWED: dict[tuple[str, str], str] = {
    ("gateway/ingest/signatures.py", "name == 'webhook-signature'"): (
        "compares a header name (public configuration) to pick the scheme"
    ),
    ("gateway/ingest/signatures.py", "name == 'x-gitlab-token'"): (
        "compares a header name (public configuration) to pick the scheme"
    ),
    ("gateway/ingest/signatures.py", "self.scheme == TOKEN"): (
        "compares the scheme name, not a token value"
    ),
    ("gateway/cli.py", "args.user_command == 'set-password'"): (
        "compares the name of a command-line subcommand"
    ),
    ("gateway/executor/command.py", "k not in _EXECUTOR_CREDENTIALS"): (
        "environment variable names (which ones a command must not inherit), not their values"
    ),
    ("gateway/logs.py", "'apikey' in pairs"): ("a log field name, not a value"),
    ("gateway/management/outgoing_hook_input.py", "signature_header.lower() in reserved"): (
        "a header name a hook configures (public), checked against the names the gateway sets"
    ),
    ("gateway/management/outgoing_hook_input.py", "'requires_secret' in body"): (
        "whether a request body has a member of that name"
    ),
    ("gateway/storage/runs.py", "row['lease_token'] == lease_token"): (
        "the same fencing token as below: recognising the lease holder's repeated report"
    ),
    ("gateway/storage/runs.py", "row['lease_token'] != lease_token"): (
        "a lease token is a fencing token (which claim is current), not a credential: the "
        "executor is already authenticated by its bearer token, the UPDATE matched the lease "
        "in SQL, and this only explains why that UPDATE changed nothing"
    ),
}


def _is_public_shape(node: ast.expr) -> bool:
    """Operands that are never secret whatever their name: lengths and None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
        return True
    return isinstance(node, ast.Constant) and node.value is None


def equality_on_sensitive_values(path: Path) -> list[tuple[int, str]]:
    """(line, comparison source) of every ``==``/``!=``/``in``/``not in`` touching a
    sensitive-looking operand (membership compares with ``==`` too, element by element)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(_is_public_shape(o) for o in operands):
            continue
        if any(SENSITIVE.search(ast.unparse(o)) for o in operands):
            found.append((node.lineno, ast.unparse(node)))
    return found


def all_findings() -> list[tuple[str, int, str]]:
    findings = []
    for path in sorted(GATEWAY.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for line, source in equality_on_sensitive_values(path):
            findings.append((relative, line, source))
    return findings


def test_no_secret_is_compared_with_equality() -> None:
    offending = [
        f"{path}:{line}: {source}"
        for path, line, source in all_findings()
        if (path, source) not in ALLOWED
    ]
    assert not offending, (
        "secret-looking values compared with ==/!=/in (use hmac.compare_digest, or add the "
        "comparison to ALLOWED with the reason it is not a secret):\n  " + "\n  ".join(offending)
    )


def test_every_allowed_entry_still_exists() -> None:
    present = {(path, source) for path, _, source in all_findings()}
    stale = [f"{path}: {source}" for path, source in ALLOWED if (path, source) not in present]
    assert not stale, "remove stale ALLOWED entries:\n  " + "\n  ".join(stale)


def test_the_audit_catches_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(given, expected_signature, row, token, algorithm):\n"
        "    if given == expected_signature: pass\n"
        "    if row['secret'] != given: pass\n"
        "    if token.encode() == b'x': pass\n"
        "    if compute_digest(given) == given: pass\n"
        "    if len(token) == 32: pass\n"
        "    if token == None: pass\n"
        "    if algorithm == 'sha256': pass\n"
        "    if given not in self_keys_of(token): pass\n"
        "    if token in allowed: pass\n"
        "    if 'x' in algorithm: pass\n"
    )
    assert [line for line, _ in equality_on_sensitive_values(sample)] == [2, 3, 4, 5, 9, 10]
