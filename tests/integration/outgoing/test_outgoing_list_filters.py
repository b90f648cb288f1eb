"""The outgoing hook's lists filter like the incoming history and the runs list: attempts by
``?outcome=``, deliveries by ``?status=``; a value they cannot hold is a 422 naming the
parameter, and the Link header and X-Total-Count follow the filter. Real deliveries: a
dispatcher sends to a receiver on loopback (one refused by the SSRF guard)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.management.outgoing_history import ATTEMPT_OUTCOMES, DELIVERY_STATUSES
from gateway.storage.database import Database
from tests.integration.management_helpers import parse_links
from tests.integration.outgoing_helpers import (
    Receiver,
    complete_run,
    create_hook,
    dispatch_until,
    hook_body,
    outgoing_config,
)


@pytest.fixture
async def hook(
    client: Any,
    admin_headers: dict[str, str],
    pipeline: dict[str, Any],
    db: Database,
    database_dsn: str,
    receiver: tuple[Receiver, str],
) -> dict[str, Any]:
    """A hook with attempts succeeded, failed twice, refused, and deliveries pending (two),
    succeeded, failed (refused)."""
    target, base = receiver
    target.plan("/t", 500, 500, 200)
    hook = await create_hook(client, admin_headers, pipeline["id"], hook_body(base + "/t"))
    refusing = outgoing_config(database_dsn, allow_private_targets=False)
    await complete_run(db, pipeline["id"])
    await dispatch_until(db, refusing, hook["id"], ["failed"])
    await complete_run(db, pipeline["id"])
    await dispatch_until(db, outgoing_config(database_dsn), hook["id"], ["failed", "succeeded"])
    await complete_run(db, pipeline["id"])  # no dispatcher runs from here: they stay pending
    await complete_run(db, pipeline["id"])
    return hook


async def _list(client: Any, headers: dict[str, str], path: str) -> tuple[list[Any], Any]:
    response = await client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json(), response


async def test_attempts_filter_by_outcome_with_links_that_keep_the_filter(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    path = f"/hooks/outgoing/{hook['id']}/requests"
    everything, _ = await _list(client, admin_headers, path)
    assert [(a["outcome"], a["status_code"]) for a in everything] == [
        ("succeeded", 200),
        ("failed", 500),
        ("failed", 500),
        ("refused", 0),
    ]
    for outcome in ATTEMPT_OUTCOMES:
        listed, response = await _list(client, admin_headers, f"{path}?outcome={outcome}")
        expected = [a for a in everything if a["outcome"] == outcome]
        assert listed == expected and expected
        assert response.headers["X-Total-Count"] == str(len(expected))

    page, response = await _list(client, admin_headers, f"{path}?outcome=failed&per_page=1")
    assert page == [everything[1]]
    assert response.headers["X-Total-Count"] == "2"  # the failed ones, not all four
    links = parse_links(response.headers["Link"])
    assert links["next"] == {"outcome": "failed", "per_page": "1", "page": "2"}
    assert links["last"] == {"outcome": "failed", "per_page": "1", "page": "2"}
    second, _ = await _list(client, admin_headers, f"{path}?outcome=failed&per_page=1&page=2")
    assert second == [everything[2]]


async def test_deliveries_filter_by_status_with_links_that_keep_the_filter(
    client: Any, admin_headers: dict[str, str], hook: dict[str, Any]
) -> None:
    path = f"/hooks/outgoing/{hook['id']}/deliveries"
    everything, _ = await _list(client, admin_headers, path)
    assert [d["status"] for d in everything] == ["pending", "pending", "succeeded", "failed"]
    for status in DELIVERY_STATUSES:
        listed, response = await _list(client, admin_headers, f"{path}?status={status}")
        assert listed == [d for d in everything if d["status"] == status]
        assert response.headers["X-Total-Count"] == str(len(listed))

    page, response = await _list(client, admin_headers, f"{path}?status=pending&per_page=1")
    assert page == [everything[0]]
    assert response.headers["X-Total-Count"] == "2"
    links = parse_links(response.headers["Link"])
    assert links["next"] == {"status": "pending", "per_page": "1", "page": "2"}
    assert links["last"] == {"status": "pending", "per_page": "1", "page": "2"}


@pytest.mark.parametrize(
    "case",
    [
        ("requests", "outcome", "succeeded, failed, refused"),
        ("deliveries", "status", "pending, delivering, succeeded, failed, skipped"),
    ],
)
async def test_a_value_the_list_cannot_hold_is_a_422_naming_the_parameter(
    client: Any, admin_headers: dict[str, str], pipeline: dict[str, Any], case: tuple[str, ...]
) -> None:
    """A typo answered every row, which the client took for the filtered list."""
    list_name, key, allowed = case
    body = hook_body("https://x.example/")
    hook = await create_hook(client, admin_headers, pipeline["id"], body)
    # A typo, another case, the dispatcher's "retry" (a decision, not a state), empty, SQL.
    for value in ("succeded", "FAILED", "retry", "", "x'%20OR%201=1--"):
        response = await client.get(
            f"/hooks/outgoing/{hook['id']}/{list_name}?{key}={value}", headers=admin_headers
        )
        assert response.status == 422, value
        assert (await response.json())["errors"] == {key: [f"must be one of: {allowed}"]}


async def test_the_delivery_statuses_are_those_the_schema_allows(db: Database) -> None:
    definition = await db.pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'outgoing_deliveries'::regclass AND contype = 'c' "
        "AND pg_get_constraintdef(oid) LIKE '%status%'"
    )
    assert set(re.findall(r"'([a-z-]+)'", definition)) == set(DELIVERY_STATUSES)
