"""``python -m gateway`` (see :mod:`gateway.launch`)."""

from gateway.launch import main

raise SystemExit(main())
