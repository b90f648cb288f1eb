"""POST /hooks/incoming/{hook_id} through a real server and database, with real signatures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import pytest
import structlog
import zstandard
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Config
from gateway.ingest.batcher import RUN_BATCHER
from gateway.ingest.evaluation import MAX_DELIVERY_ID_LENGTH
from gateway.ingest.signatures import sign_hmac_hex
from gateway.storage.database import Database
from tests.conftest import FIXTURES, client_for
from tests.integration.ingest_helpers import (
    HEAD_SHA,
    PR_OPENED,
    SEED_VARIABLES,
    create_hook,
    execute,
    fetch,
    github_headers,
    hook_path,
    new_pipeline,
    seed_hook,
)
from tests.integration.management_helpers import expect_continue


async def requests_of(dsn: str, hook_id: str) -> list[dict[str, Any]]:
    return await fetch(
        dsn,
        "SELECT * FROM hook_requests WHERE hook_id = $1 ORDER BY received_at",
        uuid.UUID(hook_id),
    )


async def runs_of(dsn: str, hook_id: str) -> list[dict[str, Any]]:
    return await fetch(
        dsn, "SELECT * FROM pipeline_runs WHERE hook_id = $1 ORDER BY queued_at", uuid.UUID(hook_id)
    )


async def test_seed_hook_accepts_a_signed_github_pull_request(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)

    assert response.status == 202
    body = await response.json()
    assert body == {
        "message": "Hook accepted: run queued",
        "run_id": body["run_id"],
        "errors": None,
    }
    assert response.headers["X-Run-Id"] == body["run_id"]

    [run] = await runs_of(database_dsn, hook["id"])
    assert str(run["id"]) == body["run_id"]
    assert run["status"] == "queued"
    assert run["pipeline_id"] == hook["pipeline_id"]
    variables = orjson.loads(run["variables"])
    assert variables == SEED_VARIABLES
    assert type(variables["pull_request_id"]) is int
    assert run["delivery_id"] == headers["X-GitHub-Delivery"]

    [row] = await requests_of(database_dsn, hook["id"])
    assert row["id"] == run["request_id"]
    assert (row["outcome"], row["status_code"], row["run_id"]) == ("accepted", 202, run["id"])
    assert row["delivery_id"] == headers["X-GitHub-Delivery"]
    assert str(row["client_ip"]) == "127.0.0.1"
    stored_headers = orjson.loads(row["headers"])
    assert stored_headers["x-hub-signature-256"] == "[redacted]"
    assert stored_headers["x-github-event"] == "pull_request"
    assert row["body_encoding"] == "zstd" and row["body_size"] == len(PR_OPENED)
    assert zstandard.ZstdDecompressor().decompress(row["body"]) == PR_OPENED
    assert row["latency_ms"] is not None


async def test_one_flipped_byte_is_401_with_no_run(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    tampered = bytearray(PR_OPENED)
    tampered[len(tampered) // 2] ^= 0x20
    response = await client.post(hook_path(hook), data=bytes(tampered), headers=headers)
    assert response.status == 401
    assert await response.json() == {
        "message": "invalid signature: signature does not match the request body",
        "errors": None,
    }
    assert await runs_of(database_dsn, hook["id"]) == []
    [row] = await requests_of(database_dsn, hook["id"])
    assert (row["outcome"], row["status_code"], row["run_id"]) == ("rejected", 401, None)
    assert orjson.loads(row["headers"])["x-hub-signature-256"] == "[redacted]"


@pytest.mark.parametrize(
    ("settings", "challenge"),
    [
        ({}, 'HMAC header="x-hub-signature-256", algorithm="sha256"'),
        (
            {"secret_header_name": "X-Signature", "secret_algorithm": "sha512"},
            'HMAC header="x-signature", algorithm="sha512"',
        ),
        (
            {"secret_header_name": "webhook-signature"},
            'Standard-Webhooks header="webhook-signature"',
        ),
        ({"secret_header_name": "X-Gitlab-Token"}, 'Token header="x-gitlab-token"'),
    ],
)
async def test_a_401_names_its_challenge_in_www_authenticate(
    client: Any, admin_headers: dict[str, str], settings: dict[str, str], challenge: str
) -> None:
    # RFC 9110 §15.5.2: a 401 MUST carry WWW-Authenticate with a challenge for the resource.
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id, **settings)
    unsigned = await client.post(
        hook_path(hook), data=PR_OPENED, headers={"Content-Type": "application/json"}
    )
    assert unsigned.status == 401
    assert unsigned.headers["WWW-Authenticate"] == challenge
    if not settings:  # other refusals carry none: a signed body that is not JSON is a 400
        signed = github_headers(hook["secret"], b"not json")
        answer = await client.post(hook_path(hook), data=b"not json", headers=signed)
        assert answer.status == 400 and "WWW-Authenticate" not in answer.headers


# A fresh random id on every run, under a fixed test id: pytest-xdist workers each collect
# the suite and must agree on its test ids.
@pytest.mark.parametrize(
    "hook_id", [pytest.param(str(uuid.uuid4()), id="random-uuid"), "not-a-uuid", "0" * 32 + "g"]
)
async def test_unknown_or_malformed_hook_id_is_404(
    client: Any, database_dsn: str, hook_id: str
) -> None:
    response = await client.post(f"/hooks/incoming/{hook_id}", data=b"{}")
    assert response.status == 404
    assert await response.json() == {"message": "incoming hook not found", "errors": None}
    assert await fetch(database_dsn, "SELECT id FROM hook_requests") == []


async def test_a_flood_of_unknown_hook_ids_logs_one_info_line(
    client: Any, admin_headers: dict[str, str], debug_logs: None
) -> None:
    # Anyone who can reach the port can send these as fast as they like: one info line per
    # 10 s (with how many were not logged), the rest debug lines. A known hook's rejection
    # (the history records it too) is still logged every time.
    hook = await seed_hook(client, admin_headers)
    with capture_logs() as logs:
        for _ in range(20):
            response = await client.post(f"/hooks/incoming/{uuid.uuid4()}", data=b"{}")
            assert response.status == 404
        for _ in range(2):
            unsigned = await client.post(hook_path(hook), data=PR_OPENED)
            assert unsigned.status == 401
    unknown = [e for e in logs if e.get("reason") == "unknown_hook"]
    assert [e["log_level"] for e in unknown] == ["info"] + ["debug"] * 19
    assert unknown[0]["suppressed"] == 0 and unknown[0]["interval"] == 10
    assert len({e["hook_id"] for e in unknown}) == 20 and all(e["request_id"] for e in unknown)
    rejected = [e for e in logs if e["event"] == "hook_request_rejected" and e not in unknown]
    assert [(e["status"], e["log_level"]) for e in rejected] == [(401, "info")] * 2


async def test_inactive_hook_is_403_with_the_same_body_shape(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id, active=False)
    headers = github_headers(hook["secret"], PR_OPENED)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 403
    assert await response.json() == {"message": "incoming hook is inactive", "errors": None}
    [row] = await requests_of(database_dsn, hook["id"])
    assert (row["outcome"], row["status_code"], row["body"]) == ("rejected", 403, None)
    assert row["delivery_id"] == headers["X-GitHub-Delivery"]


@pytest.fixture
async def small_client(aiohttp_client: Any, config: Config, db: Database) -> Any:
    """A server whose ingest limit is 1 KiB."""
    limited = replace(config, server=replace(config.server, max_body_bytes=1024))
    return await client_for(create_app(limited, db), aiohttp_client)


async def test_body_over_the_limit_is_413_by_length_and_when_chunked(
    small_client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    client = small_client  # shares the database (and so the admin token) with `client`
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    expected = {"message": "request body is larger than the limit of 1024 bytes", "errors": None}

    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 413
    assert await response.json() == expected

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(PR_OPENED), 512):
            yield PR_OPENED[start : start + 512]

    response = await client.post(hook_path(hook), data=chunks(), headers=headers)
    assert response.status == 413
    assert await response.json() == expected

    small = b'{"pull_request": {"number": 5}}'
    response = await client.post(
        hook_path(hook), data=small, headers=github_headers(hook["secret"], small)
    )
    assert response.status == 202
    statuses = [row["status_code"] for row in await requests_of(database_dsn, hook["id"])]
    assert statuses == [413, 413, 202]


def unsigned_headers(**extra: str) -> dict[str, str]:
    """What a sender that does not know the secret sends: no signature header at all."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        **extra,
    }


async def test_unsigned_request_to_an_inactive_hook_is_403_not_401(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    # DESIGN §3: the inactive check (step 1) comes before the signature (step 3).
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id, active=False, requires_secret=True)
    assert hook["requires_secret"] is True and hook["active"] is False
    headers = unsigned_headers()

    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)

    assert response.status == 403
    assert await response.json() == {"message": "incoming hook is inactive", "errors": None}
    assert await runs_of(database_dsn, hook["id"]) == []
    [row] = await requests_of(database_dsn, hook["id"])
    assert (row["outcome"], row["status_code"]) == ("rejected", 403)
    assert row["message"] == "incoming hook is inactive"
    assert row["delivery_id"] == headers["X-GitHub-Delivery"]


async def test_unsigned_body_over_the_limit_is_413_not_401_by_length_and_when_chunked(
    small_client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    # DESIGN §3: the size limit (step 2) comes before the signature (step 3).
    client = small_client
    hook = await seed_hook(client, admin_headers)
    assert hook["requires_secret"] is True
    assert len(PR_OPENED) > 1024
    expected = {"message": "request body is larger than the limit of 1024 bytes", "errors": None}

    by_length = await client.post(hook_path(hook), data=PR_OPENED, headers=unsigned_headers())
    assert by_length.status == 413
    assert by_length.request_info.headers["Content-Length"] == str(len(PR_OPENED))
    assert await by_length.json() == expected

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(PR_OPENED), 512):
            yield PR_OPENED[start : start + 512]

    chunked = await client.post(hook_path(hook), data=chunks(), headers=unsigned_headers())
    assert chunked.status == 413
    assert "Content-Length" not in chunked.request_info.headers
    assert chunked.request_info.headers["Transfer-Encoding"] == "chunked"
    assert await chunked.json() == expected

    # The same unsigned sender under the limit is refused by the signature check: the hook
    # does require one, so the 413s above were decided before it.
    small = b'{"pull_request": {"number": 5}}'
    under = await client.post(hook_path(hook), data=small, headers=unsigned_headers())
    assert under.status == 401
    assert (await under.json())["message"].startswith("invalid signature: ")

    rows = await requests_of(database_dsn, hook["id"])
    assert [(r["outcome"], r["status_code"]) for r in rows] == [
        ("rejected", 413),
        ("rejected", 413),
        ("rejected", 401),
    ]
    assert await runs_of(database_dsn, hook["id"]) == []


async def raw_post(client: Any, path: str, headers: dict[str, str]) -> int:
    """POST with exactly these headers and no body (a client lying about Content-Length); the
    response status."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\n{head}\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize("claimed", [2**31, 99_999_999_999])
async def test_a_content_length_past_the_column_is_recorded_capped(
    client: Any, admin_headers: dict[str, str], database_dsn: str, claimed: int
) -> None:
    """A 413 decided from Content-Length alone records the claimed size, capped to what the
    integer column holds: past it the history statement (and its whole batch) would fail."""
    hook = await seed_hook(client, admin_headers)
    inactive = await create_hook(
        client, admin_headers, await new_pipeline(client, admin_headers), active=False
    )
    for target, expected in ((hook, 413), (inactive, 403)):
        headers = unsigned_headers(**{"Content-Length": str(claimed), "Connection": "close"})
        assert await raw_post(client, hook_path(target), headers) == expected
        [row] = await requests_of(database_dsn, target["id"])
        assert (row["status_code"], row["body_size"]) == (expected, 2**31 - 1)
        assert row["delivery_id"] == headers["X-GitHub-Delivery"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("accepted", [100, 202]),
        ("too_large", [413]),
        ("unknown_hook", [404]),
        ("inactive", [403]),
        ("compressed", [415]),
    ],
)
async def test_expect_100_continue_is_sent_only_when_the_body_will_be_read(
    client: Any, admin_headers: dict[str, str], database_dsn: str, case: str, expected: list[int]
) -> None:
    """A request refused before its body is read (413 over the limit, 404, 403, 415) is
    answered at once, without a 100 Continue, and the connection closes (the body the client
    holds back is never sent). A 100 told the client to send it all first: curl sends
    Expect with every body over 1 MiB, i.e. every one over the default limit, and uploaded it
    only to be refused (over a real network, often cut off by the reset before it could read
    the 413)."""
    hook = await seed_hook(client, admin_headers)
    body = PR_OPENED
    headers = github_headers(hook["secret"], body)
    headers["Content-Length"] = str(len(body))
    path = hook_path(hook)
    if case == "too_large":
        headers["Content-Length"] = str(2 * 1024 * 1024)  # over the default max_body_bytes
    elif case == "unknown_hook":
        path = f"/hooks/incoming/{uuid.uuid4()}"
    elif case == "inactive":
        inactive = await create_hook(
            client, admin_headers, await new_pipeline(client, admin_headers), active=False
        )
        path = hook_path(inactive)
    elif case == "compressed":
        headers["Content-Encoding"] = "gzip"
    statuses, answer_headers, answer = await expect_continue(client, path, headers, body)
    assert statuses == expected, answer
    assert orjson.loads(answer)["message"]
    if expected[0] != 100:
        assert answer_headers["connection"] == "close"
    if case == "too_large":
        [row] = await requests_of(database_dsn, hook["id"])
        assert (row["status_code"], row["body_size"]) == (413, 2 * 1024 * 1024)


async def test_an_expectation_other_than_100_continue_is_a_json_417(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    headers["Content-Length"] = str(len(PR_OPENED))
    statuses, answer_headers, answer = await expect_continue(
        client, hook_path(hook), headers, PR_OPENED, expect="200-ok"
    )
    assert statuses == [417]
    assert answer_headers["content-type"].startswith("application/json")
    assert answer_headers["connection"] == "close"  # the body held back will not come
    assert orjson.loads(answer) == {
        "message": "Expect '200-ok' is not supported: only 100-continue is",
        "errors": None,
    }


async def test_unsupported_content_type_is_415(client: Any, admin_headers: dict[str, str]) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED, **{"Content-Type": "text/plain"})
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 415
    assert await response.json() == {
        "message": "unsupported content type 'text/plain': expected application/json or "
        "application/x-www-form-urlencoded with a 'payload' field",
        "errors": None,
    }


async def test_bad_json_is_400(client: Any, admin_headers: dict[str, str]) -> None:
    hook = await seed_hook(client, admin_headers)
    body = PR_OPENED[:-10]
    response = await client.post(
        hook_path(hook), data=body, headers=github_headers(hook["secret"], body)
    )
    assert response.status == 400
    message = (await response.json())["message"]
    assert message.startswith("request body is not valid JSON: ")


async def test_missing_json_content_type_is_parsed_as_json(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    del headers["Content-Type"]
    response = await client.post(
        hook_path(hook), data=PR_OPENED, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 202, await response.text()


async def test_missing_required_variables_are_422_listing_each(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    variables = [
        {"name": "ref", "path": "pull_request.head.ref", "type": "string", "required": True},
        {"name": "ticket", "path": "ticket.id", "type": "integer", "required": True},
        {"name": "release", "path": "$.release.tag_name", "type": "string", "required": True},
    ]
    hook = await create_hook(client, admin_headers, pipeline_id, settings={"variables": variables})
    response = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert response.status == 422
    assert await response.json() == {
        "message": "the payload does not provide valid variables: ticket, release",
        "errors": {
            "ticket": ["is required but missing at path 'ticket.id'"],
            "release": ["is required but missing at path '$.release.tag_name'"],
        },
    }
    assert await runs_of(database_dsn, hook["id"]) == []
    [row] = await requests_of(database_dsn, hook["id"])
    assert row["status_code"] == 422 and "ticket: is required" in row["message"]


async def test_repeated_delivery_is_200_with_the_original_run_and_no_second_run(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    first = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert first.status == 202
    run_id = (await first.json())["run_id"]
    again = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert again.status == 200
    delivery = headers["X-GitHub-Delivery"]
    assert await again.json() == {
        "message": f"duplicate delivery '{delivery}': already accepted as run {run_id}",
        "run_id": run_id,
        "duplicate": True,
        "errors": None,
    }
    assert again.headers["X-Run-Id"] == run_id
    assert len(await runs_of(database_dsn, hook["id"])) == 1
    outcomes = [
        (r["outcome"], r["status_code"], str(r["run_id"]))
        for r in await requests_of(database_dsn, hook["id"])
    ]
    assert outcomes == [("accepted", 202, run_id), ("duplicate", 200, run_id)]


async def test_concurrent_repeats_of_one_delivery_create_exactly_one_run(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    responses = await asyncio.gather(
        *(client.post(hook_path(hook), data=PR_OPENED, headers=headers) for _ in range(20))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 19 + [202]
    run_ids = {(await r.json())["run_id"] for r in responses}
    [run] = await runs_of(database_dsn, hook["id"])
    assert run_ids == {str(run["id"])}


async def test_unmet_conditions_are_202_skipped_with_the_reason_and_no_run(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        trigger_when={"conditions": [{"path": "action", "accepted_values": ["closed"]}]},
    )
    response = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert response.status == 202
    assert await response.json() == {
        "message": "Hook call skipped: trigger conditions not met",
        "run_id": None,
        "skipped": True,
        "reason": 'condition 0: value at \'action\' is "opened", accepted: ["closed"]',
        "errors": None,
    }
    assert "X-Run-Id" not in response.headers
    assert await runs_of(database_dsn, hook["id"]) == []
    [row] = await requests_of(database_dsn, hook["id"])
    assert (row["outcome"], row["status_code"]) == ("skipped", 202)
    assert 'accepted: ["closed"]' in row["message"]


async def test_secret_and_computed_signatures_never_appear_in_responses_or_logs(
    client: Any, admin_headers: dict[str, str], debug_logs: None
) -> None:
    hook = await seed_hook(client, admin_headers)
    secret = hook["secret"]
    tampered = PR_OPENED.replace(b"opened", b"closed")
    computed = [
        sign_hmac_hex(secret, algo, body)
        for algo in ("sha1", "sha256")
        for body in (PR_OPENED, tampered)
    ]
    attempts = [
        (PR_OPENED, github_headers(secret, PR_OPENED)),  # accepted
        (tampered, github_headers(secret, PR_OPENED)),  # 401 mismatch
        (
            PR_OPENED,
            {"X-Hub-Signature-256": "sha1=" + computed[0], "Content-Type": "application/json"},
        ),
        (PR_OPENED, {"Content-Type": "application/json"}),  # missing header
    ]
    texts = []
    # merge_contextvars only: no redaction processor, so the handler itself must not log
    # secrets. The debug events are inspected too (the debug_logs fixture).
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for body, headers in attempts:
            response = await client.post(
                hook_path(hook),
                data=body,
                headers={**headers, "X-Request-Id": "req-secret-check"},
            )
            texts.append(f"{response.status} {dict(response.headers)} {await response.text()}")
    assert [text.split(" ", 1)[0] for text in texts] == ["202", "401", "401", "401"]
    rejections = [e for e in logs if e["event"] == "hook_request_rejected"]
    assert len(rejections) == 3 and all(e["request_id"] == "req-secret-check" for e in rejections)
    assert [e["log_level"] for e in logs if e["event"] == "run_enqueued"] == ["debug"]
    haystack = "\n".join(texts) + "\n" + "\n".join(repr(event) for event in logs)
    for needle in [secret, *computed]:
        assert needle not in haystack


async def test_request_id_is_echoed(client: Any, admin_headers: dict[str, str]) -> None:
    hook = await seed_hook(client, admin_headers)
    response = await client.post(
        hook_path(hook),
        data=PR_OPENED,
        headers={**github_headers(hook["secret"], PR_OPENED), "X-Request-Id": "abc-123"},
    )
    assert response.headers["X-Request-Id"] == "abc-123"
    missing = await client.post(f"/hooks/incoming/{uuid.uuid4()}", data=b"{}")
    assert len(missing.headers["X-Request-Id"]) == 32


async def test_github_form_mode_end_to_end(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    form = urlencode({"payload": PR_OPENED.decode()}).encode()
    headers = github_headers(
        hook["secret"], form, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = await client.post(hook_path(hook), data=form, headers=headers)
    assert response.status == 202, await response.text()
    [run] = await runs_of(database_dsn, hook["id"])
    assert orjson.loads(run["variables"]) == SEED_VARIABLES


async def test_gitlab_events_of_one_push_are_not_taken_for_repeats(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    # A push of two branches: GitLab sends two events with the same X-Gitlab-Event-UUID (its
    # recursion-detection id) and their own Idempotency-Key (the same on a retry).
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        secret_header_name="x-gitlab-token",
        settings={"variables": [{"name": "ref", "type": "string"}]},
    )
    event_uuid = str(uuid.uuid4())
    keys = {"refs/heads/main": str(uuid.uuid4()), "refs/heads/release": str(uuid.uuid4())}
    answers = []
    for ref in [*keys, "refs/heads/main"]:  # the last one: GitLab retrying the first event
        headers = {
            "Content-Type": "application/json",
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": hook["secret"],
            "X-Gitlab-Event-UUID": event_uuid,
            "Idempotency-Key": keys[ref],
        }
        body = orjson.dumps({"object_kind": "push", "ref": ref})
        response = await client.post(hook_path(hook), data=body, headers=headers)
        answers.append((response.status, (await response.json()).get("duplicate", False)))
    assert answers == [(202, False), (202, False), (200, True)]
    runs = await runs_of(database_dsn, hook["id"])
    assert sorted(orjson.loads(r["variables"])["ref"] for r in runs) == sorted(keys)


async def test_gitlab_token_hook_end_to_end(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    variables = [
        {"name": "source_ref", "path": "object_attributes.source_branch", "type": "string"},
        {"name": "merge_request_id", "path": "object_attributes.iid", "type": "integer"},
        {"name": "commit_hash", "path": "object_attributes.last_commit.id", "type": "string"},
    ]
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        secret_header_name="x-gitlab-token",
        settings={"variables": variables},
    )
    body = (FIXTURES / "gitlab" / "merge_request.docs.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": hook["secret"],
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": str(uuid.uuid4()),
    }
    response = await client.post(hook_path(hook), data=body, headers=headers)
    assert response.status == 202, await response.text()
    [run] = await runs_of(database_dsn, hook["id"])
    assert orjson.loads(run["variables"]) == {
        "source_ref": "ms-viewport",
        "merge_request_id": 1,
        "commit_hash": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    }
    assert run["delivery_id"] == headers["Idempotency-Key"]
    [row] = await requests_of(database_dsn, hook["id"])
    assert orjson.loads(row["headers"])["x-gitlab-token"] == "[redacted]"
    wrong = await client.post(
        hook_path(hook), data=body, headers={**headers, "X-Gitlab-Token": "guess"}
    )
    assert wrong.status == 401


async def test_bitbucket_sha256_signature_end_to_end(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    variables = [
        {"name": "pull_request_id", "path": "pullrequest.id", "type": "integer"},
        {"name": "source_ref", "path": "pullrequest.source.branch.name", "type": "string"},
    ]
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        secret_header_name="x-hub-signature",
        settings={"variables": variables},
    )
    body = (FIXTURES / "bitbucket" / "pullrequest_fulfilled.json").read_bytes()
    digest = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Bitbucket-Webhooks/2.0",
        "X-Event-Key": "pullrequest:fulfilled",
        "X-Request-UUID": str(uuid.uuid4()),
        "X-Hub-Signature": f"sha256={digest}",
    }
    response = await client.post(hook_path(hook), data=body, headers=headers)
    assert response.status == 202, await response.text()
    [run] = await runs_of(database_dsn, hook["id"])
    assert orjson.loads(run["variables"]) == {"pull_request_id": 6, "source_ref": "gmacario/dev03"}
    assert run["delivery_id"] == headers["X-Request-UUID"]


async def test_standard_webhooks_request_from_the_reference_library(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(
        client,
        admin_headers,
        pipeline_id,
        secret_header_name="webhook-signature",
        settings={
            "variables": [
                {"name": "commit_hash", "path": "pull_request.head.sha", "type": "string"}
            ]
        },
    )
    assert hook["secret"].startswith("whsec_")
    msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(hook["secret"]).sign(msg_id, now, PR_OPENED.decode()),
    }
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 202, await response.text()
    [run] = await runs_of(database_dsn, hook["id"])
    assert orjson.loads(run["variables"]) == {"commit_hash": HEAD_SHA}
    assert run["delivery_id"] == msg_id
    stored = orjson.loads((await requests_of(database_dsn, hook["id"]))[0]["headers"])
    assert stored["webhook-signature"] == "[redacted]"


async def test_database_down_is_503_with_retry_after_and_never_a_2xx(
    client: Any, admin_headers: dict[str, str], database_dsn: str, server_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    warm = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert warm.status == 202
    database = database_dsn.split("?", 1)[0].rsplit("/", 1)[1]
    await execute(server_dsn, f'DROP DATABASE "{database}" WITH (FORCE)')

    for _ in range(3):
        response = await client.post(
            hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert await response.json() == {
            "message": "the database is unavailable; retry later",
            "errors": None,
        }
    cold = await client.post(f"/hooks/incoming/{uuid.uuid4()}", data=b"{}")
    assert cold.status == 503
    assert await cold.json() == {
        "message": "the database is unavailable; retry later",
        "errors": None,
    }


async def test_a_hook_whose_pipeline_stays_locked_is_503_not_held_until_the_timeout(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    [row] = await fetch(
        database_dsn, "SELECT pipeline_id FROM incoming_hooks WHERE id = $1", uuid.UUID(hook["id"])
    )
    locker = await asyncpg.connect(database_dsn)
    try:
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE", row["pipeline_id"]
            )
            started = asyncio.get_running_loop().time()
            response = await client.post(
                hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
            )
            assert asyncio.get_running_loop().time() - started < 7.5  # not the statement timeout
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert await response.json() == {
                "message": "a concurrent change held up or conflicted with this write; retry later",
                "errors": None,
            }
    finally:
        await locker.close()
    assert await runs_of(database_dsn, hook["id"]) == []
    again = await client.post(
        hook_path(hook), data=PR_OPENED, headers=github_headers(hook["secret"], PR_OPENED)
    )
    assert again.status == 202


async def test_delivery_ids_differing_only_in_undecodable_bytes_are_two_deliveries(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    """Header bytes that are not UTF-8 are stored as \\xNN escapes: two such ids stay distinct
    (both events queue a run) and a repeat of one is still recognised as a duplicate."""
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED)
    del headers["X-GitHub-Delivery"]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()

    async def send(delivery: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        try:
            writer.write(
                f"POST {hook_path(hook)} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".encode()
                + head
                + f"Content-Length: {len(PR_OPENED)}\r\n".encode()
                + b"X-GitHub-Delivery: "
                + delivery
                + b"\r\n\r\n"
                + PR_OPENED
            )
            await writer.drain()
            return await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()

    first, second, again = (
        await send(b"evt-\xe9"),
        await send(b"evt-\xfa"),
        await send(b"evt-\xe9"),
    )
    assert first.startswith(b"HTTP/1.1 202") and second.startswith(b"HTTP/1.1 202"), second
    assert again.startswith(b"HTTP/1.1 200") and b'"duplicate":true' in again
    runs = await fetch(database_dsn, "SELECT delivery_id FROM pipeline_runs ORDER BY queued_at")
    assert [row["delivery_id"] for row in runs] == ["evt-\\xe9", "evt-\\xfa"]


@pytest.fixture
async def poisoned_history(database_dsn: str) -> AsyncIterator[str]:
    """A history row with delivery id 'poison' is refused by the database (a CHECK): its
    batch is retried one request per transaction, and that request alone fails."""
    await execute(
        database_dsn,
        "ALTER TABLE hook_requests ADD CONSTRAINT no_poison CHECK (delivery_id <> 'poison')",
    )
    yield "poison"


async def test_an_accepted_request_whose_row_the_database_refuses_is_a_json_500_without_a_run(
    client: Any, admin_headers: dict[str, str], database_dsn: str, poisoned_history: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = github_headers(hook["secret"], PR_OPENED, delivery=poisoned_history)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 500
    assert (await response.json())["message"] == (
        "The request could not be stored; see the gateway log."
    )
    assert response.headers["X-Request-Id"]
    assert await runs_of(database_dsn, hook["id"]) == []
    # The others of the batch are unaffected.
    fine = github_headers(hook["secret"], PR_OPENED)
    assert (await client.post(hook_path(hook), data=PR_OPENED, headers=fine)).status == 202


async def test_a_rejection_keeps_its_4xx_when_its_history_row_cannot_be_written(
    client: Any, admin_headers: dict[str, str], database_dsn: str, poisoned_history: str
) -> None:
    """The answer does not depend on the history row: a 401 must not become a 500 or a 503
    that the sender would retry."""
    hook = await seed_hook(client, admin_headers)
    forged = github_headers("not the secret", PR_OPENED, delivery=poisoned_history)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=forged)
    assert response.status == 401
    assert await requests_of(database_dsn, hook["id"]) == []


async def test_a_stopping_batcher_answers_503_with_retry_after_and_stores_nothing(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    await client.app[appkeys.SERVICES][RUN_BATCHER].close()  # as at shutdown
    headers = github_headers(hook["secret"], PR_OPENED)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["message"] == "the gateway is shutting down; retry later"
    assert await runs_of(database_dsn, hook["id"]) == []


async def test_a_503_carries_the_configured_batch_retry_after(
    aiohttp_client: Any, config: Config, db: Database, admin_headers: dict[str, str]
) -> None:
    """Retry-After of an ingest 503 is [batch] retry_after, not a constant."""
    slow = replace(config, batch=replace(config.batch, retry_after=7))
    client = await client_for(create_app(slow, db), aiohttp_client)
    hook = await seed_hook(client, admin_headers)
    await client.app[appkeys.SERVICES][RUN_BATCHER].close()  # as at shutdown
    headers = github_headers(hook["secret"], PR_OPENED)
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 503 and response.headers["Retry-After"] == "7"


async def test_the_hooks_own_signature_header_is_redacted_even_outside_the_rule(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    """A secret_header_name the general rule does not know (no 'signature', 'token', ...) is
    still redacted in the recorded history: it carries the hook's HMAC."""
    from gateway.security.sensitive_headers import is_sensitive_header

    assert not is_sensitive_header("x-verify")
    pipeline_id = await new_pipeline(client, admin_headers)
    hook = await create_hook(client, admin_headers, pipeline_id, secret_header_name="x-verify")
    signature = sign_hmac_hex(hook["secret"], "sha256", PR_OPENED)
    headers = {"Content-Type": "application/json", "X-Verify": f"sha256={signature}"}
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 202, await response.text()
    [row] = await requests_of(database_dsn, hook["id"])
    stored = orjson.loads(row["headers"])
    assert stored["x-verify"] == "[redacted]"
    assert signature not in row["headers"]


async def test_a_long_delivery_id_is_cut_to_its_limit_on_a_request_refused_unread(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    """A request refused before its body is read (413, 403) records and logs its delivery id
    cut to MAX_DELIVERY_ID_LENGTH, as one refused after it does: a header of up to 8 KiB went
    into the history row and the log line whole."""
    hook = await seed_hook(client, admin_headers)
    inactive = await create_hook(
        client, admin_headers, await new_pipeline(client, admin_headers), active=False
    )
    long_id = "d" * 5000
    for target, expected in ((hook, 413), (inactive, 403)):
        headers = unsigned_headers(
            **{
                "Content-Length": str(2 * 1024 * 1024),
                "Connection": "close",
                "X-GitHub-Delivery": long_id,
            }
        )
        with capture_logs() as logs:
            assert await raw_post(client, hook_path(target), headers) == expected
        [row] = await requests_of(database_dsn, target["id"])
        assert row["status_code"] == expected
        assert row["delivery_id"] == long_id[:MAX_DELIVERY_ID_LENGTH]
        logged = [e["delivery_id"] for e in logs if "delivery_id" in e]
        assert logged and all(d == long_id[:MAX_DELIVERY_ID_LENGTH] for d in logged), logs


async def test_repeated_headers_are_recorded_joined_in_order_with_credentials_redacted(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await seed_hook(client, admin_headers)
    headers = CIMultiDict(github_headers(hook["secret"], PR_OPENED))
    for value in ("one", "two", "three"):
        headers.add("X-Trace", value)
    headers.add("X-Api-Key", "first-credential")
    headers.add("X-Api-Key", "second-credential")
    response = await client.post(hook_path(hook), data=PR_OPENED, headers=headers)
    assert response.status == 202, await response.text()
    [row] = await requests_of(database_dsn, hook["id"])
    recorded = orjson.loads(row["headers"]) if isinstance(row["headers"], str) else row["headers"]
    assert recorded["x-trace"] == "one, two, three"
    assert recorded["x-api-key"] == "[redacted], [redacted]"
    assert recorded["x-github-event"] == "pull_request"
