"""What the database quotes of a row never leaves the storage layer.

PostgreSQL's DETAIL of an integrity error (class 23) quotes the data of the row or key at
fault: ``Failing row contains (3, 1, personal, \\x9f2c..., ...)`` for a not-null or check
violation, ``Key (token_hash)=(\\x9f2c...) already exists`` for a unique one. asyncpg puts the
DETAIL into the exception's text, and that text reaches the log (a traceback, an ``error``
field) — with a token hash, a password hash or a hook secret in it. The first line of the
message (which constraint, column and table) is what an operator needs, and it is kept.
"""

from __future__ import annotations

import asyncpg

WITHHELD = "(the values of the row are not shown: they may hold secrets)"


def withhold_row_values(exc: BaseException) -> None:
    """Replace the DETAIL of an integrity error from the server (which quotes row values) in
    place, so that no text of ``exc`` (and of an exception raised from it) quotes them."""
    if not isinstance(exc, asyncpg.PostgresError):
        return
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("23") and getattr(exc, "detail", None):
        exc.detail = WITHHELD
