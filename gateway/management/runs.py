"""Reading pipeline runs (``pipeline:read``, as in the DESIGN §2 table).

``run:read`` is deliberately not consulted: runs are part of the pipeline they belong to, and
one permission per view keeps the 403 message exact. Executors change runs elsewhere.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys, run_states
from gateway.http import ApiError, json_response
from gateway.management.bodies import list_filter, page_headers, pagination
from gateway.management.framework import endpoint
from gateway.management.resources import authorize_orphanable, path_uuid, pipeline_for
from gateway.storage import runs_read
from gateway.storage.database import Record

routes = web.RouteTableDef()


def run_json(row: Record) -> dict[str, Any]:
    """The API shape of a run (CONTRACTS.md)."""
    triggered_from = None
    if row["hook_id"] is not None:
        triggered_from = {
            "type": "incoming_hook",
            "hook_id": str(row["hook_id"]),
            "request_id": None if row["request_id"] is None else str(row["request_id"]),
        }
    return {
        "id": str(row["id"]),
        "pipeline_id": row["pipeline_id"],
        "status": row["status"],
        "variables": row["variables"],
        "attempt": row["attempt"],
        "message": row["message"],
        "exit_code": row["exit_code"],
        "triggered_from": triggered_from,
        "queued_at": row["queued_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }


@routes.get("/pipelines/{pipeline_id}/runs")
@endpoint()
async def list_runs(request: web.Request) -> web.Response:
    """A pipeline's runs, newest first, paginated; ``?status=`` filters."""
    pipeline = await pipeline_for(request, "pipeline:read")
    page, per_page = pagination(request)
    status = list_filter(request, "status", run_states.STATUSES)
    rows, total = await runs_read.list_runs(
        request.app[appkeys.DATABASE], pipeline["id"], status, per_page, (page - 1) * per_page
    )
    return json_response(
        [run_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


@routes.get("/runs/{run_id}")
@endpoint()
async def get_run(request: web.Request) -> web.Response:
    """One run, with the executor's output."""
    run_id = path_uuid(request, "run_id", "run")
    row = await runs_read.run_by_id(request.app[appkeys.DATABASE], run_id)
    if row is None:
        raise ApiError(404, "run not found")
    await authorize_orphanable(request, row["environment_id"], "pipeline:read", resource="run")
    return json_response({**run_json(row), "output": row["output"]})
