"""The secret-leak audit's paths out of the gateway: outgoing hooks with credentials, runs
that trigger them, deliveries retried and given up, their history."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from tests.acceptance.canary_helpers import (
    Audit,
    EchoingReceiver,
    hmac_forms,
    shown_signature_forms,
)
from tests.acceptance.canary_values import (
    OUT_API_KEY,
    OUT_AUTHORIZATION,
    OUT_TOKEN_HEADER,
    SEALED_LOOKALIKE,
    URL_PATH_TOKEN,
    URL_QUERY_KEY,
)
from tests.acceptance.process_helpers import free_port


async def outgoing_hooks(audit: Audit, pipeline: int, target: str) -> dict[str, Any]:
    """Create (and fail to create), read, list and update an outgoing hook with credentials."""
    headers = [
        {"name": "Authorization", "value": OUT_AUTHORIZATION},
        {"name": "X-Api-Key", "value": OUT_API_KEY},
        {"name": "X-Canary-Token", "value": OUT_TOKEN_HEADER},
    ]
    body = {
        "name": "notify",
        "target_url": target,
        "trigger_when": {"events": ["run.queued", "run.started", "run.completed"]},
        "settings": {"request_headers": headers, "signature_header": "X-Hub-Signature-256"},
    }
    url = f"/pipelines/{pipeline}/hooks/outgoing"
    sealed = [{"name": "Authorization", "value": SEALED_LOOKALIKE}]
    await audit.call("POST", url, 422, json={**body, "settings": {"request_headers": sealed}})
    broken = [{"name": "X-Api-Key", "value": OUT_API_KEY + "\n"}]
    await audit.call("POST", url, 422, json={**body, "settings": {"request_headers": broken}})
    created = await audit.call("POST", url, 201, json=body)
    hook = created.json()
    hook["secret"] = audit.hook_secret(created, "outgoing hook secret")
    path = f"/hooks/outgoing/{hook['id']}"
    await audit.call("GET", path, 200)
    await audit.call("GET", url, 200)
    await audit.call("PUT", path, 200, json={"name": "notify renamed"})
    # Rotated: deliveries are signed with both secrets for the grace, each shown only once.
    rotated = await audit.call("POST", f"{path}/secret/rotate", 200, json={})
    hook["secrets"] = [hook["secret"], audit.hook_secret(rotated, "rotated outgoing hook secret")]
    hook["secret"] = hook["secrets"][-1]
    await audit.call("GET", path, 200)
    kept = [{"name": h["name"], "value": "********"} for h in headers]
    elsewhere = {"target_url": "http://127.0.0.2:1/", "settings": {"request_headers": kept}}
    await audit.call("PUT", path, 422, json=elsewhere)
    closed = f"http://127.0.0.1:{free_port()}/services/{URL_PATH_TOKEN}?api_key={URL_QUERY_KEY}"
    unreachable = {
        "name": "unreachable",
        "target_url": closed,
        "requires_secret": False,
        "trigger_when": {"events": ["run.queued"]},
        "settings": {"request_headers": headers},
    }
    hook["unreachable"] = (await audit.call("POST", url, 201, json=unreachable)).json()["id"]
    return hook


async def runs(audit: Audit, pipeline: int) -> None:
    """Claim the queued runs and complete them, as an executor does."""
    claimed = await audit.call(
        "POST", "/runs/claim", 200, json={"pipeline_id": pipeline, "limit": 100}
    )
    for run in claimed.json():
        audit.secret(run["lease_token"], "lease token", claimed)
        await audit.call(
            "POST",
            f"/runs/{run['id']}/status",
            200,
            json={"status": "completed", "lease_token": run["lease_token"], "exit_code": 0},
        )
        await audit.call("GET", f"/runs/{run['id']}", 200)
    await audit.call("GET", f"/pipelines/{pipeline}/runs", 200)


async def wait_for_deliveries(
    audit: Audit, hook: dict[str, Any], receiver: EchoingReceiver
) -> None:
    """Until every delivery succeeded after its failed first attempt; then read the history."""
    path = f"/hooks/outgoing/{hook['id']}"
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        deliveries = (await audit.call("GET", f"{path}/deliveries?per_page=100", 200)).json()
        if deliveries and all(d["status"] == "succeeded" for d in deliveries):
            break
        assert asyncio.get_running_loop().time() < deadline, deliveries
        await asyncio.sleep(0.2)
    requests = (await audit.call("GET", f"{path}/requests?per_page=100", 200)).json()
    assert any(r["status_code"] == 500 for r in requests), requests
    unreachable = f"/hooks/outgoing/{hook['unreachable']}"
    while True:
        deliveries = (await audit.call("GET", f"{unreachable}/deliveries", 200)).json()
        if deliveries and all(d["status"] == "failed" for d in deliveries):
            break
        assert asyncio.get_running_loop().time() < deadline + 15, deliveries
        await asyncio.sleep(0.2)
    await audit.call("GET", f"{unreachable}/requests?per_page=100", 200)
    await audit.call("POST", f"/hook-requests/{requests[0]['id']}/replay", 202)
    for _, headers, body in receiver.seen:
        assert len(headers["webhook-signature"].split()) == 2  # both secrets, in the grace
        for name in ("webhook-signature", "X-Hub-Signature-256"):
            if name in headers:
                audit.signatures |= shown_signature_forms(headers[name])
        for secret in hook["secrets"]:
            key = base64.b64decode(secret.removeprefix("whsec_"))
            signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
            audit.signatures |= hmac_forms(key, signed)
            audit.signatures |= hmac_forms(secret.encode(), body)
            audit.signatures |= hmac_forms(key, body)
