"""The run state machine and the bounds on what a run stores (pure: no I/O).

    queued ──claim──▶ in-progress ──▶ completed | failed | cancelled
       │                  │
       │                  └──release / lease expired──▶ queued   (claimed again later)
       └──▶ cancelled | skipped

Finished states are final. ``in-progress`` is entered only by claiming, never by a status call.
"""

from __future__ import annotations

import re

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
# Outgoing-hook events (queries.sql outgoing_enqueue_run_events maps statuses to them); a hook
# subscribed to STATUS_CHANGED_EVENT gets every change, cancelled and skipped included.
STATUS_CHANGED_EVENT = "run.status_changed"
EVENTS = ("run.queued", "run.started", "run.completed", "run.failed", STATUS_CHANGED_EVENT)

# Transitions a status call may make (claiming and the concurrency sweeps make the others).
_ALLOWED: dict[str, frozenset[str]] = {
    QUEUED: frozenset({CANCELLED}),
    IN_PROGRESS: frozenset({COMPLETED, FAILED, CANCELLED, QUEUED}),
}

OUTPUT_LIMIT_BYTES = 64 * 1024
# A run's lease in seconds, as a claim or heartbeat may ask for it (the API and `gateway
# executor --lease-seconds`): renewed every third of it, a shorter one would have runs change
# executors at any pause of a second or two.
MIN_LEASE_SECONDS = 5
MAX_LEASE_SECONDS = 3600
MESSAGE_LIMIT_CHARS = 2000


def check_transition(current: str, new: str) -> None:
    """Raise Conflict naming both states unless a status call may move ``current`` to ``new``."""
    if new in _ALLOWED.get(current, ()):
        return
    if current == QUEUED and new == IN_PROGRESS:
        raise Conflict(
            "cannot move run from queued to in-progress: a run starts only by being claimed"
        )
    if current == QUEUED and new == QUEUED:  # a release repeated (a retry after a lost answer)
        raise Conflict(
            "cannot move run from queued to queued: it is queued already, and its lease ended "
            "with the release (a release cannot be repeated)"
        )
    raise Conflict(f"cannot move run from {current} to {new}")


_TRUNCATED = re.compile(r"\[output truncated: first (\d{1,18}) bytes dropped\]\n")


def with_truncation_note(dropped: int, text: str) -> str:
    """``text`` after the line saying how many bytes before it were dropped (none: as is); the
    one form of that line, which :func:`bound_output` also reads back (``_TRUNCATED``)."""
    return f"[output truncated: first {dropped} bytes dropped]\n{text}" if dropped else text


def bound_output(text: str, limit: int = OUTPUT_LIMIT_BYTES) -> str:
    """The last ``limit`` bytes of ``text`` (UTF-8), NULs removed (PostgreSQL text has none),
    after one ``[output truncated: first N bytes dropped]`` line when anything was dropped. A
    text already starting with that line (an executor's own tail, e.g. ``gateway executor``'s)
    keeps one line counting both cuts."""
    text = text.replace("\x00", "")
    earlier = 0
    if note := _TRUNCATED.match(text):
        earlier, text = int(note.group(1)), text[note.end() :]
    data = text.encode("utf-8", errors="replace")
    if len(data) > limit:
        # Cutting may split a multi-byte character at the start; drop the broken prefix.
        text = data[-limit:].decode("utf-8", errors="ignore")
        earlier += len(data) - len(text.encode("utf-8"))
    return with_truncation_note(earlier, text)


def bound_message(text: str, limit: int = MESSAGE_LIMIT_CHARS) -> str:
    """A status message cut to ``limit`` characters, NULs removed."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"
