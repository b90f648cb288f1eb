"""The seed document's example hook (shared/seed, "Step 2: Create the webhook"): its create body
verbatim, from tests/fixtures/seed/create_incoming_hook.json, and its variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEED_FILE = Path(__file__).resolve().parent / "fixtures" / "seed" / "create_incoming_hook.json"
SEED_CREATE_BODY: str = SEED_FILE.read_text().strip()
# settings.variables of that body, as sent (five variables; four read the payload).
SEED_VARIABLES: list[dict[str, Any]] = json.loads(SEED_CREATE_BODY)["settings"]["variables"]
