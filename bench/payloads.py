"""The request bodies and hook variable sets the bench sends and defines.

The 28 KB body is the real GitHub ``pull_request.opened`` example payload (see README.md for its
origin and license), sent byte for byte. The 1 KB and 1 MB variants are built from it: the small
one keeps only the fields around the paths the variables read; the large one adds copies of the
payload's own ``repository`` object under ``bench_padding`` until it reaches ~1,000,000 bytes.
Every variant keeps every path the variable sets below read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

# The seed document's example hook (DESIGN §2): five variables, four read the payload; read from
# its verbatim create body in the test fixtures.
from tests.seed import SEED_VARIABLES

PAYLOAD_DIR = Path(__file__).resolve().parent / "payloads"
GITHUB_PR = PAYLOAD_DIR / "pull_request.opened.json"

SIZES = ("1k", "28k", "1m")
ONE_MB = 1_000_000

# The four payload fields every implementation extracts (adnanh/webhook passes them to /bin/true).
FOUR_FIELDS = (
    "pull_request.head.ref",
    "pull_request.number",
    "pull_request.title",
    "pull_request.head.sha",
)

_SEGMENT = re.compile(r"[A-Za-z_][\w-]*")


def hook_body(
    variables: list[dict[str, Any]], name: str = "Deploy `main` branch"
) -> dict[str, Any]:
    """The create-incoming-hook request body (the seed's, with the given variables)."""
    return {
        "name": name,
        "requires_secret": True,
        "secret_algorithm": "sha256",
        "secret_header_name": "x-hub-signature-256",
        "action_type": "deploy",
        "settings": {"variables": variables},
    }


def variable_set(count: int) -> list[dict[str, Any]]:
    """``count`` variables: 5 → the seed's; 1 → source_ref only; otherwise real payload leaves."""
    if count == len(SEED_VARIABLES):
        return [dict(v) for v in SEED_VARIABLES]
    if count == 1:
        return [dict(SEED_VARIABLES[1])]
    document = json.loads(GITHUB_PR.read_bytes())
    paths = list(FOUR_FIELDS) + [p for p in _leaf_paths(document) if p not in FOUR_FIELDS]
    if len(paths) < count:
        raise ValueError(f"the payload has only {len(paths)} usable leaves")
    chosen = []
    for i, (path, value) in enumerate((p, _lookup(document, p)) for p in paths[:count]):
        kind = (
            "boolean"
            if isinstance(value, bool)
            else "integer"
            if isinstance(value, int)
            else "string"
        )
        chosen.append({"name": f"var_{i + 1}", "path": path, "type": kind, "required": False})
    return chosen


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Dot paths of non-null scalar leaves (objects only; arrays are skipped), document order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if not _SEGMENT.fullmatch(key):
                continue
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                found += _leaf_paths(value, path)
            elif isinstance(value, str | int | bool) and value is not None:
                found.append(path)
    return found


def _lookup(document: Any, path: str) -> Any:
    for segment in path.split("."):
        document = document[segment]
    return document


def _trimmed(document: dict[str, Any]) -> dict[str, Any]:
    pr = document["pull_request"]
    keep_user = {k: pr["user"][k] for k in ("login", "id", "type")}
    return {
        "action": document["action"],
        "number": document["number"],
        "pull_request": {
            "url": pr["url"],
            "id": pr["id"],
            "number": pr["number"],
            "state": pr["state"],
            "title": pr["title"],
            "user": keep_user,
            "created_at": pr["created_at"],
            "head": {k: pr["head"][k] for k in ("label", "ref", "sha")},
            "base": {k: pr["base"][k] for k in ("label", "ref", "sha")},
            "draft": pr["draft"],
        },
        "repository": {
            k: document["repository"][k] for k in ("id", "name", "full_name", "private")
        },
        "sender": {"login": document["sender"]["login"], "id": document["sender"]["id"]},
    }


def payload(size: str) -> bytes:
    """The request body for ``size`` (``1k``, ``28k`` or ``1m``)."""
    raw = GITHUB_PR.read_bytes()
    if size == "28k":
        return raw
    document = json.loads(raw)
    if size == "1k":
        return json.dumps(_trimmed(document), indent=2).encode()
    if size == "1m":

        def build(copies: int) -> bytes:
            document["bench_padding"] = [document["repository"]] * copies
            return json.dumps(document, indent=2).encode()

        base, one = len(build(0)), len(build(1))
        copies = (ONE_MB - base) // (one - base)
        return build(copies)
    raise ValueError(f"unknown payload size {size!r}; choose from {', '.join(SIZES)}")


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
