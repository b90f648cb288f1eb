"""An integer field takes a number written with a zero fraction (``805.0``): JSON has one
number type, JSON Schema (and so the OpenAPI document) calls such a number an integer, and some
clients write every number that way. A number with a fraction is still refused, naming the
field, and so is one too large for a float to hold exactly."""

from __future__ import annotations

from typing import Any

from tests.integration.management_helpers import make_environment, make_pipeline

PIPELINE = {"name": "p", "resource_type": "application", "action_type": "deploy"}


async def _hook_with_burst(
    client: Any, headers: dict[str, str], pipeline_id: int, burst: float
) -> Any:
    """The answer to creating an incoming hook whose rate limit has this ``burst``."""
    body = {
        "name": "h",
        "action_type": "deploy",
        "settings": {"rate_limit": {"per_second": 1, "burst": burst}},
    }
    return await client.post(f"/pipelines/{pipeline_id}/hooks/incoming", json=body, headers=headers)


async def test_an_integral_number_is_an_integer(client: Any, admin_headers: dict[str, str]) -> None:
    environment = await make_environment(client, admin_headers)
    response = await client.post(
        f"/environments/{environment['id']}/pipelines",
        json={**PIPELINE, "resource_id": 805.0},
        headers=admin_headers,
    )
    assert response.status == 201, await response.text()
    assert '"resource_id":805,' in await response.text()  # stored and shown as the integer
    pipeline = await response.json()
    claimed = await client.post(
        "/runs/claim",
        json={"pipeline_id": float(pipeline["id"]), "limit": 2.0, "lease_seconds": 60.0},
        headers=admin_headers,
    )
    assert claimed.status == 200, await claimed.text()
    hook = await _hook_with_burst(client, admin_headers, pipeline["id"], 5.0)
    assert hook.status == 201, await hook.text()
    assert (await hook.json())["settings"]["rate_limit"] == {"per_second": 1.0, "burst": 5}


async def test_a_fraction_or_an_inexact_number_is_refused(
    client: Any, admin_headers: dict[str, str]
) -> None:
    environment = await make_environment(client, admin_headers)
    pipeline = await make_pipeline(client, admin_headers, environment["id"])
    # 9007199254740993.0 reads as the float 2**53, as 9007199254740992.0 does: it was stored
    # as 9007199254740992, another integer than the one written.
    for value in ("805.5", "1152921504606846976.0", "9007199254740993.0"):
        response = await client.put(
            f"/pipelines/{pipeline['id']}",
            data=f'{{"resource_id": {value}}}',
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert response.status == 422, await response.text()
        assert (await response.json())["errors"] == {
            "resource_id": ["must be an integer, got a number"]
        }
    response = await _hook_with_burst(client, admin_headers, pipeline["id"], 1.5)
    assert response.status == 422, await response.text()
    assert list((await response.json())["errors"]) == ["settings.rate_limit.burst"]
