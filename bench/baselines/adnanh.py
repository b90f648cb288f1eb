"""Baseline (d): adnanh/webhook (Debian package ``webhook``), the tool people pick for this job.

One hook with a ``payload-hmac-sha256`` trigger rule on ``X-Hub-Signature-256`` (GitHub's
``sha256=<hex>``), passing the same four payload fields the gateway extracts as arguments to
``/bin/true``. GOMAXPROCS is set to the bench's worker count, so it gets the same CPU budget.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.payloads import FOUR_FIELDS

HOOK_ID = "github-pull-request"


def available() -> bool:
    """True when the ``webhook`` binary is installed."""
    return shutil.which("webhook") is not None


def hooks_json(secret: str) -> list[dict[str, object]]:
    """The hooks file: verify the HMAC, pass the four fields to /bin/true."""
    return [
        {
            "id": HOOK_ID,
            "execute-command": "/bin/true",
            "command-working-directory": "/tmp",
            "pass-arguments-to-command": [{"source": "payload", "name": f} for f in FOUR_FIELDS],
            "response-message": "accepted",
            "trigger-rule": {
                "match": {
                    "type": "payload-hmac-sha256",
                    "secret": secret,
                    "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                }
            },
        }
    ]


def command(hooks_file: Path, port: int) -> list[str]:
    """The command line that serves the hooks file on 127.0.0.1:port."""
    return ["webhook", "-hooks", str(hooks_file), "-ip", "127.0.0.1", "-port", str(port)]


def environment(workers: int) -> dict[str, str]:
    """The process environment: the same CPU budget as the other targets."""
    return {**os.environ, "GOMAXPROCS": str(workers)}


def write_hooks(path: Path, secret: str) -> Path:
    """Write the hooks file (it holds the secret: keep it under the run's var/ directory)."""
    path.write_text(json.dumps(hooks_json(secret), indent=2))
    return path
