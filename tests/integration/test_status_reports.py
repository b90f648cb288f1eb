"""Status reports over HTTP at their edges: bounded 422s for bodies of countless unknown keys,
undecodable output (lone surrogate escapes) taken rather than refused, a clear 409 for a
different outcome repeated under the same lease, and what the server log says about it all."""

from __future__ import annotations

import io
import json
from typing import Any

from structlog.testing import capture_logs

from gateway.http import MAX_LISTED_FIELDS
from gateway.storage.database import Database
from gateway.unknown_fields import MAX_LISTED_UNKNOWN
from tests.integration.runs_helpers import claim, enqueue, make_pipeline, run_row

JSON = "application/json"


async def _claimed(db: Database) -> tuple[Any, str]:
    """A run claimed by a test executor, and its lease token."""
    pipeline = await make_pipeline(db)
    run = await enqueue(db, pipeline["id"], source_ref="main")
    [claimed] = await claim(db, pipeline["id"], limit=1)
    return run, str(claimed["lease_token"])


async def _post_raw(client: Any, url: str, body: bytes | str, headers: dict[str, str]) -> Any:
    """POST ``body`` as sent (a large one streamed) as JSON."""
    data = io.BytesIO(body) if isinstance(body, bytes) else body
    return await client.post(url, data=data, headers={**headers, "Content-Type": JSON})


async def test_a_status_report_of_a_million_unknown_keys_gets_a_short_422(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """16 MiB of unknown keys (the most a status report may be) used to get a 125 MB 422
    naming every one of them; now the first few are named and the rest counted."""
    run, _ = await _claimed(db)
    keys = 1_290_000
    body = ("{" + ",".join(f'"k{i:07d}":0' for i in range(keys)) + "}").encode()
    response = await _post_raw(client, f"/runs/{run['id']}/status", body, admin_headers)
    assert response.status == 422
    raw = await response.read()
    assert len(raw) < 5000, len(raw)
    answer = json.loads(raw)
    unknown = [k for k in answer["errors"] if k.startswith("k")]
    assert unknown == [f"k{i:07d}" for i in range(MAX_LISTED_UNKNOWN)]
    assert {"status", "lease_token"} <= set(answer["errors"])  # the real problems still shown
    assert answer["message"].endswith(f" and {keys - MAX_LISTED_UNKNOWN} more")
    assert (await run_row(db, run["id"]))["status"] == "in-progress"


async def test_a_status_report_of_countless_nul_strings_is_refused_after_the_first_few(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """Every string holding U+0000 outside output and message is a 422; the search for them
    used to walk the whole body (seconds for a 16 MiB one), it stops once a 422 is full."""
    run, token = await _claimed(db)
    strings = 300_000
    nuls = ",".join(f'"k{i:06d}":"\\u0000"' for i in range(strings))
    body = f'{{"status":"failed","lease_token":"{token}",{nuls}}}'.encode()
    response = await _post_raw(client, f"/runs/{run['id']}/status", body, admin_headers)
    assert response.status == 422
    answer = await response.json()
    assert list(answer["errors"]) == [f"k{i:06d}" for i in range(MAX_LISTED_FIELDS)]
    assert answer["message"].endswith(" and more (the first found)")
    assert (await run_row(db, run["id"]))["status"] == "in-progress"


async def test_every_422_is_bounded_not_only_the_status_reports(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """The other validators of unknown keys: a top-level body (1 MiB, other endpoints' limit)
    and the nested objects checked by the ingest validators (conditions, variables)."""
    pipeline = await make_pipeline(db)
    many = {f"k{i:06d}": 0 for i in range(60_000)}
    response = await client.put(
        f"/pipelines/{pipeline['id']}/concurrency",
        data=json.dumps({"policy": "queue", **many}),
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert response.status == 422
    answer = await response.json()
    assert len(answer["errors"]) == MAX_LISTED_UNKNOWN
    assert answer["message"].endswith(f" and {60_000 - MAX_LISTED_UNKNOWN} more")

    hook = {
        "name": "out",
        "target_url": "https://example.com/hook",
        "trigger_when": {
            "events": ["run.completed"],
            "conditions": [{"path": "run.status", "accepted_values": ["x"], **many}],
        },
    }
    response = await client.post(
        f"/pipelines/{pipeline['id']}/hooks/outgoing", json=hook, headers=admin_headers
    )
    assert response.status == 422
    errors = (await response.json())["errors"]
    prefix = "trigger_when.conditions.0"
    assert len([k for k in errors if k.startswith(f"{prefix}.k")]) == MAX_LISTED_UNKNOWN
    assert errors[prefix] == [f"{60_000 - MAX_LISTED_UNKNOWN} more unknown fields not listed"]


async def test_a_lone_surrogate_in_the_output_is_replaced_not_refused(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """What Python's surrogateescape + json.dumps make of bytes that are not UTF-8: refused
    with 400, the report was lost and the run executed again after its lease. Now taken, with
    U+FFFD in their place, and logged."""
    run, token = await _claimed(db)
    body = json.dumps(
        {
            "status": "failed",
            "lease_token": token,
            "exit_code": 3,
            "output": b"caf\xe9 \xff\n".decode("utf-8", "surrogateescape"),
            "message": "broken \ud800 pair \ud83d\ude00",
        }
    )
    assert "\\udce9" in body  # what the executor sends
    with capture_logs() as logs:
        response = await _post_raw(client, f"/runs/{run['id']}/status", body, admin_headers)
    assert response.status == 200, await response.text()
    row = await run_row(db, run["id"])
    assert (row["status"], row["exit_code"]) == ("failed", 3)
    assert row["output"] == "caf\ufffd \ufffd\n"
    assert row["message"] == "broken \ufffd pair \U0001f600"  # a real pair stays as it is
    [event] = [e for e in logs if e["event"] == "run_status_text_replaced"]
    assert event["run_id"] == str(run["id"]) and event["fields"] == ["output", "message"]


async def test_a_lone_surrogate_elsewhere_is_still_a_clear_error(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    run, token = await _claimed(db)
    url = f"/runs/{run['id']}/status"
    headers = {**admin_headers, "Content-Type": "application/json"}
    # Not JSON after the surrogate: 400 as before; a surrogate in the status: 422 naming it.
    for body, status, says in (
        ('{"status":"failed","output":"a\\udcff", oops}', 400, "not valid JSON"),
        ('{"status":"failed","output":"a\\udcff","n":NaN}', 400, "not valid JSON"),
        (f'{{"status":"fail\\udcffed","lease_token":"{token}"}}', 422, "status"),
        (f'{{"status":"failed","lease_token":"{token}","x\\udcff":1}}', 422, "x\ufffd"),
    ):
        response = await client.post(url, data=body, headers=headers)
        assert response.status == status, await response.text()
        assert says in await response.text()
    # Other endpoints keep refusing text that is not Unicode.
    response = await client.post(
        f"/runs/{run['id']}/heartbeat",
        data=f'{{"lease_token":"{token}","x":"\\udcff"}}',
        headers=headers,
    )
    assert response.status == 400
    assert (await run_row(db, run["id"]))["status"] == "in-progress"


async def test_a_different_outcome_after_the_recorded_one_is_a_409_naming_it(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    run, token = await _claimed(db)
    url = f"/runs/{run['id']}/status"
    done = {"status": "completed", "lease_token": token, "exit_code": 0}
    assert (await client.post(url, json=done, headers=admin_headers)).status == 200
    assert (await client.post(url, json=done, headers=admin_headers)).status == 200  # a repeat
    for different in ({**done, "exit_code": 1}, {**done, "status": "failed", "exit_code": 2}):
        response = await client.post(url, json=different, headers=admin_headers)
        assert response.status == 409
        assert (await response.json())["message"] == (
            "the run already ended completed with exit code 0 under this lease; "
            "a different outcome cannot replace it"
        )
    assert (await run_row(db, run["id"]))["exit_code"] == 0


async def test_refused_reports_are_logged_and_empty_claims_are_not_at_info(
    client: Any, db: Database, admin_headers: dict[str, str], debug_logs: None
) -> None:
    run, token = await _claimed(db)
    url = f"/runs/{run['id']}/status"
    stale = "00000000-0000-4000-8000-000000000000"
    with capture_logs() as logs:
        for _ in range(3):
            response = await client.post("/runs/claim", json={}, headers=admin_headers)
            assert await response.json() == []
        refused = await client.post(
            url, json={"status": "completed", "lease_token": stale}, headers=admin_headers
        )
        beat = await client.post(
            f"/runs/{run['id']}/heartbeat", json={"lease_token": stale}, headers=admin_headers
        )
        done = {"status": "completed", "lease_token": token, "exit_code": 0}
        for _ in range(2):
            assert (await client.post(url, json=done, headers=admin_headers)).status == 200
    assert (refused.status, beat.status) == (409, 409)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for entry in logs:
        by_event.setdefault(entry["event"], []).append(entry)
    [status_refused] = by_event["run_status_refused"]
    assert status_refused["run_id"] == str(run["id"])
    assert status_refused["status"] == "completed" and status_refused["current"] == "in-progress"
    assert status_refused["executor"].startswith("user:")
    assert "lease token does not match" in status_refused["reason"]
    assert status_refused["log_level"] == "info"
    [beat_refused] = by_event["run_heartbeat_refused"]
    assert beat_refused["run_id"] == str(run["id"]) and "lease" in beat_refused["reason"]
    assert [e["log_level"] for e in by_event["runs_claimed"]] == ["debug"] * 3
    assert len(by_event["run_status_reported"]) == 1
    assert len(by_event["run_status_repeated"]) == 1
    assert token not in repr(logs) and stale not in repr(logs)


async def test_a_refusal_logs_the_runs_status_as_the_refusal_left_it(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    # A heartbeat of a superseded run (cancel-in-progress) cancels it and is refused: the log
    # line said current=in-progress, the status read before the call, beside a reason saying
    # the run is cancelled.
    pipeline = await make_pipeline(db, policy="cancel-in-progress", key="source_ref")
    older = await enqueue(db, pipeline["id"], source_ref="main")
    [claimed] = await claim(db, pipeline["id"])
    await enqueue(db, pipeline["id"], source_ref="main")
    with capture_logs() as logs:
        beat = await client.post(
            f"/runs/{older['id']}/heartbeat",
            json={"lease_token": str(claimed["lease_token"])},
            headers=admin_headers,
        )
    assert beat.status == 409
    [refused] = [e for e in logs if e["event"] == "run_heartbeat_refused"]
    assert "superseded by run" in refused["reason"]
    assert refused["current"] == "cancelled"
    assert (await run_row(db, older["id"]))["status"] == "cancelled"


async def test_the_lease_holder_may_repeat_its_cancelled_report(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """A cancelled report retried after its answer was lost is answered 200 like a repeated
    completed or failed one; it was a 409 ``cannot move run from cancelled to cancelled``."""
    run, token = await _claimed(db)
    url = f"/runs/{run['id']}/status"
    cancelled = {"status": "cancelled", "lease_token": token, "message": "stopped by its user"}
    for _ in range(2):
        response = await client.post(url, json=cancelled, headers=admin_headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "cancelled"
    row = await run_row(db, run["id"])
    assert (row["status"], row["message"]) == ("cancelled", "stopped by its user")
    # Another outcome is still refused, naming both states.
    response = await client.post(
        url, json={"status": "completed", "lease_token": token}, headers=admin_headers
    )
    assert response.status == 409
    assert (await response.json())["message"] == "cannot move run from cancelled to completed"


async def test_a_cancel_by_another_is_not_taken_for_the_lease_holders_repeat(
    client: Any, db: Database, admin_headers: dict[str, str]
) -> None:
    """Only the cancel the lease holder itself reported can be repeated. A run cancelled by
    another (superseded under cancel-in-progress, or cancelled without its lease) kept the
    lease token, so the holder's own first ``cancelled`` report passed for a repeat: 200, its
    message and output silently dropped, logged as run_status_repeated."""
    pipeline = await make_pipeline(db, policy="cancel-in-progress", key="source_ref")
    superseded = await enqueue(db, pipeline["id"], source_ref="main")
    [claimed] = await claim(db, pipeline["id"])
    await enqueue(db, pipeline["id"], source_ref="main")
    token = str(claimed["lease_token"])
    beat = await client.post(
        f"/runs/{superseded['id']}/heartbeat", json={"lease_token": token}, headers=admin_headers
    )
    assert beat.status == 409  # the heartbeat found it superseded, and cancelled it

    called_off, other_token = await _claimed(db)
    response = await client.post(
        f"/runs/{called_off['id']}/status", json={"status": "cancelled"}, headers=admin_headers
    )
    assert response.status == 200, await response.text()

    for run, lease in ((superseded, token), (called_off, other_token)):
        before = await run_row(db, run["id"])
        report = {"status": "cancelled", "lease_token": lease, "message": "mine", "output": "x"}
        with capture_logs() as logs:
            response = await client.post(
                f"/runs/{run['id']}/status", json=report, headers=admin_headers
            )
        assert response.status == 409, await response.text()
        assert (await response.json())["message"] == ("cannot move run from cancelled to cancelled")
        assert not [e for e in logs if e["event"] == "run_status_repeated"]
        after = await run_row(db, run["id"])
        assert (after["message"], after["output"]) == (before["message"], before["output"])
