"""Where each asyncpg connection of a test run was opened, for the warning about one left open.

asyncpg's ``unclosed connection`` ResourceWarning (an error in this suite) names the code that
opened the connection only when the event loop runs in debug mode, and it is raised wherever the
garbage collector happens to find the connection: often a later test's teardown, which then
fails with nothing pointing at the culprit. Recording the opener's frames for every connection
(asyncpg's own ``_source_traceback``, which its warning prints) costs a stack walk per connection
and changes nothing else.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import asyncpg

FRAMES_SHOWN = 12
_ROOT = Path(__file__).resolve().parents[1]
# The repository's own code: not all of ROOT, which holds the virtual environment (.venv/) too.
OURS = tuple(str(_ROOT / part) + os.sep for part in ("gateway", "tests"))


def record_connection_origins() -> None:
    """Fill every new asyncpg Connection's ``_source_traceback`` with its opener's frames
    (the innermost ``FRAMES_SHOWN`` in this repository), debug mode or not."""
    opened = asyncpg.Connection.__init__
    if getattr(opened, "records_origin", False):
        return

    def __init__(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> None:
        opened(self, *args, **kwargs)
        if not self._source_traceback:
            # The gateway's and the tests' frames: the event loop's, pytest's and asyncpg's
            # own say nothing about which code opened it. Source lines are read for those only.
            frames = traceback.walk_stack(sys._getframe(1))
            stack = traceback.StackSummary.extract(frames, lookup_lines=False)
            ours = [frame for frame in reversed(stack) if frame.filename.startswith(OURS)]
            self._source_traceback = "".join(traceback.format_list(ours[-FRAMES_SHOWN:]))

    __init__.records_origin = True  # type: ignore[attr-defined]
    asyncpg.Connection.__init__ = __init__  # type: ignore[method-assign]
