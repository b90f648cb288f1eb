"""``gateway prune`` removes tokens long dead: every login and refresh adds two rows, which
nothing removed (the table only grew). Not a revoked refresh token still unexpired: presented
again, it is the alarm of a copied token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.storage import users
from gateway.storage.database import Database

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
CUTOFF = NOW - 30 * DAY

# name: (kind, expires_at, revoked_at, pruned?)
TOKENS = {
    "access expired long ago": ("access", NOW - 40 * DAY, None, True),
    "access expired since the cutoff": ("access", NOW - DAY, None, False),
    "access live": ("access", NOW + DAY, None, False),
    "refresh spent long ago, still unexpired": ("refresh", NOW + 10 * DAY, NOW - 40 * DAY, False),
    "refresh spent long ago, expired long ago": ("refresh", NOW - 35 * DAY, NOW - 40 * DAY, True),
    "refresh spent long ago, expired since": ("refresh", NOW - DAY, NOW - 40 * DAY, True),
    "refresh live": ("refresh", NOW + 10 * DAY, None, False),
    "personal revoked long ago": ("personal", None, NOW - 40 * DAY, True),
    "personal revoked since the cutoff": ("personal", None, NOW - DAY, False),
    "personal without expiry": ("personal", None, None, False),
    "personal expired long ago": ("personal", NOW - 31 * DAY, None, True),
}


async def test_prune_removes_dead_tokens_and_keeps_the_copied_token_alarm(db: Database) -> None:
    async with db.transaction() as session:
        user = await users.insert_user(session, f"{uuid.uuid4()}@example.org", "T", "x", False)
    for name, (kind, expires, revoked, _) in TOKENS.items():
        await db.pool.execute(
            "INSERT INTO auth_tokens (user_id, kind, token_hash, name, expires_at, revoked_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            user.id,
            kind,
            uuid.uuid4().bytes,
            name,
            expires,
            revoked,
        )
    seen: list[int] = []

    removed = await users.prune_tokens(
        db, CUTOFF, batch=2, progress=lambda table, rows: seen.append(rows)
    )

    left = {
        r["name"]
        for r in await db.pool.fetch("SELECT name FROM auth_tokens WHERE user_id = $1", user.id)
    }
    assert left == {name for name, (*_, pruned) in TOKENS.items() if not pruned}
    assert removed == sum(pruned for *_, pruned in TOKENS.values())
    assert seen[-1] == removed and len(seen) > 1  # in batches, progress after each
