"""A SIGHUP that arrives while the process is starting: remembered, not fatal.

SIGHUP's default action ends a process, and a long-running gateway installs its reload handler
(:func:`gateway.reload.install_sighup`) only once its configuration, database and listeners are
up: an operator's ``systemctl reload`` in those seconds would kill it, and a supervisor
forwarding one would kill its new workers. :func:`remember` makes SIGHUP only set a flag from
the start of ``serve``/``dispatch`` and of a supervisor's workers, before anything else is
imported (:mod:`gateway.launch`); :func:`take_pending` tells the reload handler, once
installed, to reload once.

This module imports nothing but :mod:`signal`, so that it can run first.
"""

from __future__ import annotations

import signal
from typing import Any

_pending = [False]


def remember() -> None:
    """From now on, a SIGHUP sets the pending flag instead of ending the process."""
    signal.signal(signal.SIGHUP, note)


def note(*_args: Any) -> None:
    """Record a SIGHUP (a signal handler, or an event-loop signal callback)."""
    _pending[0] = True


def take_pending() -> bool:
    """Whether a SIGHUP arrived since :func:`remember`; clears the flag."""
    pending, _pending[0] = _pending[0], False
    return pending
