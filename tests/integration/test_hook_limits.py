"""Per-hook limits through the API and the live endpoint: rate limit (429 + Retry-After), the
``[limits]`` default, IP allowlists (403), their validation (422), and what gets recorded.

Rates are tiny (one token per ~17 minutes), so a refused request is refused whatever the speed
of the machine: no timing is asserted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.config import Config
from tests.integration.ingest_helpers import create_hook, fetch, new_pipeline
from tests.integration.management_helpers import JSON_HEADERS
from tests.integration.ops_helpers import (
    call_hook,
    reload_to,
    requests_of,
    sample,
    scrape,
    with_section,
)

SLOW = 0.001  # requests per second


@pytest.fixture
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    """``[limits] default_rate_per_second`` from the test's parameter (default: unlimited)."""
    rate = getattr(request, "param", 0.0)
    return replace(config, limits=replace(config.limits, default_rate_per_second=rate))


async def hook_with(client: Any, headers: dict[str, str], **settings: Any) -> dict[str, Any]:
    pipeline_id = await new_pipeline(client, headers)
    return await create_hook(client, headers, pipeline_id, settings=settings)


async def statuses(client: Any, hook: dict[str, Any], count: int) -> list[int]:
    return [(await call_hook(client, hook)).status for _ in range(count)]


async def test_over_the_rate_a_hook_answers_429_with_retry_after(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await hook_with(client, admin_headers, rate_limit={"per_second": SLOW, "burst": 2})
    assert hook["settings"]["rate_limit"] == {"per_second": SLOW, "burst": 2}
    before = await scrape(client)
    assert await statuses(client, hook, 2) == [202, 202]
    refused = await call_hook(client, hook)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "rate limit" in (await refused.json())["message"]
    assert refused.headers["X-Request-Id"]

    # Not recorded (a flood costs no writes) but counted.
    assert len(await requests_of(client, admin_headers, hook)) == 2
    assert len(await fetch(database_dsn, "SELECT 1 FROM pipeline_runs")) == 2
    after = await scrape(client)
    name = "hookgate_ingest_requests_total"
    limited = {"outcome": "rate_limited", "status": "429"}
    assert sample(after, name, **limited) - sample(before, name, **limited) == 1


# Every hook without its own rate: one request, then 429 for a long while.
@pytest.mark.parametrize("config", [SLOW], indirect=True)
async def test_the_default_applies_unless_a_hook_sets_its_own_or_opts_out(
    client: Any, admin_headers: dict[str, str], config: Config
) -> None:
    default = await hook_with(client, admin_headers)
    exempt = await hook_with(client, admin_headers, rate_limit={"per_second": 0})
    own = await hook_with(client, admin_headers, rate_limit={"per_second": SLOW, "burst": 3})
    assert await statuses(client, default, 2) == [202, 429]
    assert await statuses(client, exempt, 4) == [202] * 4
    assert await statuses(client, own, 4) == [202, 202, 202, 429]

    # SIGHUP: the default is lifted; hooks are recompiled with the new [limits].
    reload_to(client, with_section(config, "limits", default_rate_per_second=0.0))
    assert await statuses(client, default, 3) == [202] * 3


async def test_an_allowlist_refuses_other_addresses_with_403(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hook = await hook_with(client, admin_headers, allowed_ips=["192.0.2.0/24", "2001:db8::/32"])
    assert hook["settings"]["allowed_ips"] == ["192.0.2.0/24", "2001:db8::/32"]
    before = await scrape(client)
    refused = await call_hook(client, hook)
    assert refused.status == 403
    assert (await refused.json())["message"] == (
        "client address 127.0.0.1 is not allowed to call this hook"
    )
    assert await requests_of(client, admin_headers, hook) == []
    after = await scrape(client)
    name, labels = "hookgate_ingest_requests_total", {"outcome": "forbidden", "status": "403"}
    assert sample(after, name, **labels) - sample(before, name, **labels) == 1

    path = f"/hooks/incoming/{hook['id']}"
    for allowed, expected in ((["127.0.0.0/8"], 202), (None, 202), (["10.0.0.1"], 403)):
        response = await client.put(
            path, json={"settings": {"allowed_ips": allowed}}, headers=admin_headers
        )
        assert response.status == 200, await response.text()
        assert (await call_hook(client, hook)).status == expected, allowed


@pytest.mark.parametrize(
    ("settings", "errors"),
    [
        ({"rate_limit": {"per_second": -1}}, ["settings.rate_limit.per_second"]),
        ({"rate_limit": {"per_second": 5, "burst": 1.5}}, ["settings.rate_limit.burst"]),
        ({"rate_limit": {"burst": 5}}, ["settings.rate_limit.per_second"]),
        ({"rate_limit": {"per_second": 1, "every": 2}}, ["settings.rate_limit.every"]),
        ({"rate_limit": 10}, ["settings.rate_limit"]),
        ({"allowed_ips": []}, ["settings.allowed_ips"]),
        ({"allowed_ips": "10.0.0.0/8"}, ["settings.allowed_ips"]),
        (
            {"allowed_ips": ["10.0.0.0/8", "10.0.0.1/8", "nope", 7]},
            ["settings.allowed_ips.1", "settings.allowed_ips.2", "settings.allowed_ips.3"],
        ),
    ],
)
async def test_invalid_limits_are_refused_with_422(
    client: Any, admin_headers: dict[str, str], settings: dict[str, Any], errors: list[str]
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    response = await client.post(
        f"/pipelines/{pipeline_id}/hooks/incoming",
        json={"name": "h", "action_type": "deploy", "settings": settings},
        headers={**JSON_HEADERS, **admin_headers},
    )
    assert response.status == 422
    assert sorted((await response.json())["errors"]) == errors

    hook = await create_hook(client, admin_headers, pipeline_id)
    response = await client.put(
        f"/hooks/incoming/{hook['id']}", json={"settings": settings}, headers=admin_headers
    )
    assert response.status == 422
    assert sorted((await response.json())["errors"]) == errors


async def test_hooks_without_limits_keep_the_settings_shape(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hook = await hook_with(client, admin_headers, variables=[])
    assert hook["settings"] == {"variables": [], "delivery_id_header": None}


async def test_a_limit_given_as_null_is_no_limit_and_not_shown(
    client: Any, admin_headers: dict[str, str]
) -> None:
    # null means "no list, the default rate", as leaving the key out does: both give the same
    # settings, so a client comparing what it sent with what it reads sees no difference.
    plain = {"variables": [], "delivery_id_header": None}
    created = await hook_with(client, admin_headers, rate_limit=None, allowed_ips=None)
    assert created["settings"] == plain
    hook = await hook_with(
        client, admin_headers, rate_limit={"per_second": 5, "burst": 2}, allowed_ips=["10.0.0.1"]
    )
    path = f"/hooks/incoming/{hook['id']}"
    removed = {"settings": {"rate_limit": None, "allowed_ips": None}}
    response = await client.put(path, json=removed, headers=admin_headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["settings"] == plain
    shown = await client.get(path, headers=admin_headers)
    assert (await shown.json())["settings"] == plain
    assert (await call_hook(client, hook)).status == 202  # the allowlist is gone
