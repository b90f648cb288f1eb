"""The run state machine and the bounds on what a run stores (pure: no I/O).

    queued ──claim──▶ in-progress ──▶ completed | failed | cancelled
       │                  │
       │                  └──release / lease expired──▶ queued   (claimed again later)
       └──▶ cancelled | skipped

Finished states are final. ``in-progress`` is entered only by claiming, never by a status call.
"""

from __future__ import annotations

from gateway.exceptions import Conflict

QUEUED = "queued"
IN_PROGRESS = "in-progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
SKIPPED = "skipped"

STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, SKIPPED, CANCELLED)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED, SKIPPED})
POLICIES = ("queue", "skip-if-running", "cancel-in-progress")

# Transitions a status call may make (claiming and the concurrency sweeps make the others).
_ALLOWED: dict[str, frozenset[str]] = {
    QUEUED: frozenset({CANCELLED}),
    IN_PROGRESS: frozenset({COMPLETED, FAILED, CANCELLED, QUEUED}),
}

OUTPUT_LIMIT_BYTES = 64 * 1024
MESSAGE_LIMIT_CHARS = 2000


def check_transition(current: str, new: str) -> None:
    """Raise Conflict naming both states unless a status call may move ``current`` to ``new``."""
    if new in _ALLOWED.get(current, ()):
        return
    if current == QUEUED and new == IN_PROGRESS:
        raise Conflict(
            "cannot move run from queued to in-progress: a run starts only by being claimed"
        )
    raise Conflict(f"cannot move run from {current} to {new}")


def bound_output(text: str, limit: int = OUTPUT_LIMIT_BYTES) -> str:
    """The last ``limit`` bytes of ``text`` (UTF-8), NULs removed (PostgreSQL text has none)."""
    text = text.replace("\x00", "")
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    # Cutting may split a multi-byte character at the start; drop the broken prefix.
    tail = data[-limit:].decode("utf-8", errors="ignore")
    dropped = len(data) - len(tail.encode("utf-8"))
    return f"[output truncated: first {dropped} bytes dropped]\n{tail}"


def bound_message(text: str, limit: int = MESSAGE_LIMIT_CHARS) -> str:
    """A status message cut to ``limit`` characters, NULs removed."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"
