"""Page results of list queries.

List queries select ``count(*)`` in a subquery LEFT JOINed to the page, so they return one row
even when the page is empty (``total`` set, every other column NULL): the total for the Link
header comes in the same round trip as the rows.
"""

from __future__ import annotations

from gateway.storage.database import Record


def split_page(rows: list[Record], key: str = "id") -> tuple[list[Record], int]:
    """(items, total) from a list query shaped as described above; ``key`` is a column that
    is never NULL in a real row."""
    total = int(rows[0]["total"]) if rows else 0
    return [r for r in rows if r[key] is not None], total
