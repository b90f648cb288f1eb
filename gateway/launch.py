"""Entry point of the ``gateway`` console script and of ``python -m gateway``.

``serve``, ``dispatch`` and ``executor`` (a supervisor's workers too: ``serve --worker``) make
SIGHUP harmless (:func:`gateway.sighup.remember`) before anything else is imported: importing the
CLI and its libraries takes a few hundred milliseconds, and a ``systemctl reload`` in that time
would otherwise end the process. Other commands keep SIGHUP's default action.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway import sighup

RELOADABLE = frozenset({"serve", "dispatch", "executor"})


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is neither an option nor the value of
    ``--config`` (as argparse reads them; an unusual spelling just means "not recognised")."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if len(word) > 2 and "--config".startswith(word):  # --config PATH (or abbreviated)
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> int:
    """Run the ``gateway`` command line."""
    if command_of(sys.argv[1:]) in RELOADABLE:
        sighup.remember()
    from gateway.cli import main as cli_main

    return cli_main()
