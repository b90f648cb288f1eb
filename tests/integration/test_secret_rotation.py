"""`gateway keys rotate` on a real database: rows sealed with key A re-encrypted to primary B,
readable before, during and after; concurrent API rotations are never overwritten."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.security.secret_box import SecretBox, key_id_of
from gateway.storage import environments, hooks, outgoing, pipelines
from gateway.storage.database import Database
from gateway.storage.secret_rotation import (
    INCOMING,
    OUTGOING,
    TableRotation,
    key_usage,
    missing_key_ids,
    reencrypt_rows,
    rotate_batch,
    rotate_secrets,
)

KEY_A, KEY_B, KEY_C = bytes(32), bytes(range(32)), bytes(range(1, 33))
BOX_A = SecretBox({"a": KEY_A}, "a")
BOX_BA = SecretBox({"b": KEY_B, "a": KEY_A}, "b")  # B primary, A still readable
HOOK_VALUES = {
    "name": "h",
    "active": True,
    "action_type": "deploy",
    "requires_secret": True,
    "secret_algorithm": "sha256",
    "secret_header_name": "x-hub-signature-256",
    "trigger_when": {},
    "settings": {},
}


async def make_pipeline(db: Database) -> int:
    env = await environments.insert_environment(db, f"env-{uuid.uuid4().hex[:8]}", "")
    pipeline = await pipelines.insert_pipeline(db, env["id"], "p", "application", 1, "deploy")
    return int(pipeline["id"])


async def add_incoming(db: Database, pipeline_id: int, stored_secret: str) -> uuid.UUID:
    hook_id = uuid.uuid4()
    await hooks.insert_incoming_hook(db, hook_id, pipeline_id, HOOK_VALUES, stored_secret, None)
    return hook_id


async def add_outgoing(db: Database, pipeline_id: int, stored_secret: str | None) -> uuid.UUID:
    hook_id = uuid.uuid4()
    values = {
        "name": "o",
        "active": True,
        "target_url": "https://example.com/hook",
        "events": ["run.completed"],
        "trigger_when": {"events": ["run.completed"]},
        "settings": {},
        "requires_secret": stored_secret is not None,
    }
    await outgoing.insert_hook(db, hook_id, pipeline_id, values, stored_secret, None)
    return hook_id


async def incoming_plain(db: Database, box: SecretBox, hook_id: uuid.UUID) -> dict[str, Any]:
    row = await hooks.incoming_hook_with_secrets(db, hook_id)
    assert row is not None
    return box.open_row(row)


async def seed(db: Database) -> dict[str, Any]:
    """Incoming hooks sealed with A (two with a previous secret in its grace period), one
    plaintext legacy hook, and outgoing hooks (sealed, plaintext, and without secret)."""
    pipeline_id = await make_pipeline(db)
    plain: dict[uuid.UUID, tuple[str, str | None]] = {}
    for i in range(5):
        hook_id = await add_incoming(db, pipeline_id, BOX_A.encrypt(f"first-{i}"))
        plain[hook_id] = (f"first-{i}", None)
        if i < 2:
            await hooks.rotate_incoming_secret(db, hook_id, BOX_A.encrypt(f"second-{i}"), 3600)
            plain[hook_id] = (f"second-{i}", f"first-{i}")
    legacy = await add_incoming(db, pipeline_id, "legacy-plaintext")
    plain[legacy] = ("legacy-plaintext", None)
    out = {
        await add_outgoing(db, pipeline_id, BOX_A.encrypt("out-sealed")): "out-sealed",
        await add_outgoing(db, pipeline_id, "out-plain"): "out-plain",
        await add_outgoing(db, pipeline_id, None): None,
    }
    return {"pipeline_id": pipeline_id, "incoming": plain, "outgoing": out}


async def assert_all_readable(db: Database, box: SecretBox, world: dict[str, Any]) -> None:
    for hook_id, (secret, previous) in world["incoming"].items():
        row = await incoming_plain(db, box, hook_id)
        assert (row["secret"], row["previous_secret"]) == (secret, previous)
    for hook_id, secret in world["outgoing"].items():
        stored = await outgoing.hook_by_id(db, hook_id)
        assert stored is not None and box.decrypt_optional(stored["secret"]) == secret


async def test_rotation_from_a_to_b(db: Database) -> None:
    world = await seed(db)
    await assert_all_readable(db, BOX_A, world)
    assert {k for _, k, _ in await key_usage(db)} == {"a", ""}

    # Mid-rotation: one batch of two rows done, the rest still sealed with A; all readable.
    progress = await rotate_batch(db, BOX_BA, TableRotation(INCOMING), batch_size=2)
    assert not progress.done and progress.reencrypted == 2
    await assert_all_readable(db, BOX_BA, world)
    stored = [await hooks.incoming_hook_with_secrets(db, h) for h in world["incoming"]]
    sealed_with = [key_id_of(r["secret"]) for r in stored if r]
    assert sealed_with.count("b") == 2 and set(sealed_with) - {"b"} <= {"a", None}

    results = await rotate_secrets(db, BOX_BA, batch_size=2)
    assert [(r.table, r.reencrypted, r.conflicts, r.unreadable) for r in results] == [
        (INCOMING, 4, 0, 0),  # the 6 incoming rows minus the 2 of the first batch
        (OUTGOING, 2, 0, 0),
    ]
    await assert_all_readable(db, BOX_BA, world)
    await assert_all_readable(db, SecretBox({"b": KEY_B}, "b"), world)  # A no longer needed
    usage = await key_usage(db)
    assert {key_id for _, key_id, _ in usage} == {"b"}
    assert dict(((loc, n) for loc, _, n in usage)) == {
        "incoming_hooks.secret": 6,
        "incoming_hooks.previous_secret": 2,
        "outgoing_hooks.secret": 2,
    }
    again = await rotate_secrets(db, BOX_BA)
    assert [r.reencrypted for r in again] == [0, 0]


async def test_rotation_reports_progress_after_each_batch(db: Database) -> None:
    await seed(db)
    seen: list[tuple[str, int]] = []
    await rotate_secrets(db, BOX_BA, batch_size=4, progress=lambda t, n: seen.append((t, n)))
    assert seen[-1] == (OUTGOING, 2)
    assert [n for t, n in seen if t == INCOMING][:2] == [4, 6]


async def test_a_row_changed_meanwhile_is_not_overwritten(db: Database) -> None:
    pipeline_id = await make_pipeline(db)
    hook_id = await add_incoming(db, pipeline_id, BOX_A.encrypt("old"))
    rows = await db.fetch("secrets_incoming_page", uuid.UUID(int=0), "enc:v1:b:", 100)
    # The API rotates the secret between the read and the write (already with key B).
    await hooks.rotate_incoming_secret(db, hook_id, BOX_BA.encrypt("fresh"), 0)
    progress = TableRotation(INCOMING)
    await reencrypt_rows(db, BOX_BA, progress, rows)
    assert (progress.reencrypted, progress.conflicts) == (0, 1)
    assert (await incoming_plain(db, BOX_BA, hook_id))["secret"] == "fresh"


async def test_rows_with_an_unknown_key_are_reported_and_left(db: Database) -> None:
    pipeline_id = await make_pipeline(db)
    box_c = SecretBox({"c": KEY_C}, "c")
    foreign = await add_incoming(db, pipeline_id, box_c.encrypt("x"))
    ours = await add_incoming(db, pipeline_id, BOX_A.encrypt("y"))
    assert await missing_key_ids(db, BOX_BA) == {"c": 1}
    (incoming, _) = await rotate_secrets(db, BOX_BA)
    assert (incoming.reencrypted, incoming.unreadable, incoming.unreadable_ids) == (
        1,
        1,
        [foreign],
    )
    row = await hooks.incoming_hook_with_secrets(db, foreign)
    assert row is not None and key_id_of(row["secret"]) == "c"
    assert (await incoming_plain(db, BOX_BA, ours))["secret"] == "y"


async def test_rotation_needs_a_key(db: Database) -> None:
    with pytest.raises(ValueError, match="no encryption key is configured"):
        await rotate_secrets(db, SecretBox({}, None))


async def test_rotation_covers_the_previous_secret_of_outgoing_hooks(db: Database) -> None:
    pipeline_id = await make_pipeline(db)
    hook_id = await add_outgoing(db, pipeline_id, BOX_A.encrypt("out-old"))
    # An API rotation during the key rotation: the new secret sealed with B already, the one
    # still signing during the grace with A. Only the latter needs work.
    async with db.transaction() as session:
        assert await outgoing.rotate_secret(session, hook_id, BOX_BA.encrypt("out-new"), 3600)
    assert ("outgoing_hooks.previous_secret", "a", 1) in await key_usage(db)
    assert await missing_key_ids(db, SecretBox({"b": KEY_B}, "b")) == {"a": 1}

    [result] = await rotate_secrets(db, BOX_BA, tables=[OUTGOING])
    assert (result.reencrypted, result.conflicts, result.unreadable) == (1, 0, 0)
    stored = await outgoing.hook_by_id(db, hook_id)
    assert stored is not None
    assert (key_id_of(stored["secret"]), key_id_of(stored["previous_secret"])) == ("b", "b")
    opened = SecretBox({"b": KEY_B}, "b").open_row(stored)
    assert (opened["secret"], opened["previous_secret"]) == ("out-new", "out-old")
    assert {key_id for _, key_id, _ in await key_usage(db)} == {"b"}


async def test_an_outgoing_rotation_meanwhile_is_not_overwritten(db: Database) -> None:
    pipeline_id = await make_pipeline(db)
    hook_id = await add_outgoing(db, pipeline_id, BOX_A.encrypt("out-old"))
    async with db.transaction() as session:
        await outgoing.rotate_secret(session, hook_id, BOX_A.encrypt("out-new"), 3600)
    rows = await db.fetch("secrets_outgoing_page", uuid.UUID(int=0), "enc:v1:b:", 10)
    async with db.transaction() as session:  # the API rotates again after the read
        await outgoing.rotate_secret(session, hook_id, BOX_A.encrypt("out-newer"), 3600)
    progress = TableRotation(OUTGOING)
    await reencrypt_rows(db, BOX_BA, progress, rows)
    assert (progress.reencrypted, progress.conflicts) == (0, 1)
    stored = await outgoing.hook_by_id(db, hook_id)
    assert stored is not None
    opened = BOX_BA.open_row(stored)
    assert (opened["secret"], opened["previous_secret"]) == ("out-newer", "out-new")
