"""``python -m gateway``."""

import sys

if "--worker" in sys.argv[1:]:
    # A worker (started by the supervisor): survive a forwarded SIGHUP from the first moment.
    from gateway import sighup

    sighup.remember()

from gateway.cli import main

raise SystemExit(main())
