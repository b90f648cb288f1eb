"""Entry point of the ``gateway`` console script and of ``python -m gateway``.

A long-running command (``serve``, ``dispatch``, a supervisor's ``--worker``) makes SIGHUP
harmless (:func:`gateway.sighup.remember`) before anything else is imported: importing the CLI
and its libraries takes a few hundred milliseconds, and a ``systemctl reload`` in that time
would otherwise end the process. Other commands keep SIGHUP's default action. (A word such as
``serve`` anywhere in the arguments counts; at worst a short command then ignores a SIGHUP.)
"""

from __future__ import annotations

import sys

from gateway import sighup

LONG_RUNNING = frozenset({"serve", "dispatch", "--worker"})


def main() -> int:
    """Run the ``gateway`` command line."""
    if LONG_RUNNING.intersection(sys.argv[1:]):
        sighup.remember()
    from gateway.cli import main as cli_main

    return cli_main()
