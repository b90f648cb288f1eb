"""A delivery whose preparation fails unexpectedly (a bug: rendering raised something other
than a RenderError) is given back for later, its attempt not used up, instead of being claimed
again on every round of the loop, each time with a traceback in the log. Real PostgreSQL, a
real loopback target; the bug is injected into the dispatcher's request building."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dispatcher import dispatcher as dispatcher_module
from gateway.dispatcher.dispatcher import PREPARE_RETRY, Dispatcher
from gateway.storage.database import Database
from tests.integration.outgoing_helpers import (
    Receiver,
    complete_run,
    create_hook,
    deliveries,
    eventually,
    hook_body,
    outgoing_config,
)


async def test_a_delivery_that_cannot_be_prepared_is_retried_later_not_at_once(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, base = receiver
    broken = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/broken", name="broken")
    )
    working = await create_hook(
        client, admin_headers, pipeline["id"], hook_body(base + "/working", name="working")
    )
    failures: list[str] = []
    build_request = dispatcher_module.build_request

    def build_or_fail(hook: Any, context: Any, delivery_id: str) -> Any:
        if context["hook"]["id"] == broken["id"]:
            failures.append(delivery_id)
            raise RuntimeError("a bug while rendering")
        return build_request(hook, context, delivery_id)

    monkeypatch.setattr(dispatcher_module, "build_request", build_or_fail)
    await complete_run(db, pipeline["id"])  # one delivery for each hook
    running = Dispatcher(db, outgoing_config(database_dsn, poll_interval=0.2))
    await running.start()
    try:
        await eventually(lambda: target.successes == 1 and len(failures) == 1)
        # A second run, written after the failure: once the working hook's delivery of it is
        # sent, the loop has gone round again, and must not have claimed the first broken
        # delivery meanwhile (the second broken one fails once too).
        await complete_run(db, pipeline["id"])
        await eventually(lambda: target.successes == 2 and len(failures) == 2)
    finally:
        await running.stop(5)
    rows = await deliveries(db, broken["id"])
    assert sorted(failures) == sorted(str(row["id"]) for row in rows), failures  # once each
    for row in rows:
        assert (row["status"], row["attempt"], row["locked_until"]) == ("pending", 0, None)
        waits = await db.pool.fetchval(
            "SELECT extract(epoch FROM next_attempt_at - now())::float8"
            " FROM outgoing_deliveries WHERE id = $1",
            row["id"],
        )
        assert PREPARE_RETRY - 30 < waits <= PREPARE_RETRY, waits
    assert [d["status"] for d in await deliveries(db, working["id"])] == ["succeeded"] * 2
