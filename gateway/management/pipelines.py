"""Pipelines: what a hook runs. Each belongs to one environment and one resource."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.http import ApiError, json_response
from gateway.logs import get_logger
from gateway.management.bodies import Fields, page_headers, pagination, read_json_object
from gateway.management.framework import endpoint
from gateway.management.resources import environment_for, pipeline_for
from gateway.storage import pipelines
from gateway.storage.database import Record

log = get_logger(__name__)
routes = web.RouteTableDef()

PIPELINE_FIELDS = ("name", "resource_type", "resource_id", "action_type")
# resource_type and action_type are identifiers ("application", "deploy"), not free text.
_SLUG = re.compile(r"[a-z][a-z0-9_-]*")
_SLUG_MESSAGE = "must start with a lower-case letter and contain only a-z, 0-9, '_' and '-'"


def pipeline_json(row: Record) -> dict[str, Any]:
    """The API shape of a pipeline."""
    return {
        "id": row["id"],
        "environment_id": row["environment_id"],
        "name": row["name"],
        "resource_type": row["resource_type"],
        "resource_id": row["resource_id"],
        "action_type": row["action_type"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _parse_pipeline(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Validated pipeline fields (only those present when ``partial``); 422 naming each bad one."""
    fields = Fields(body, PIPELINE_FIELDS)
    if partial:
        for key in PIPELINE_FIELDS:
            if key in body and body[key] is None:
                fields.add(key, "must not be null")
    required = not partial
    values = {
        "name": fields.name("name", required=required, max_length=100),
        "resource_type": fields.string("resource_type", required=required, max_length=60),
        "resource_id": fields.integer(
            "resource_id", required=required, minimum=1, maximum=2**63 - 1
        ),
        "action_type": fields.string("action_type", required=required, max_length=60),
    }
    for key in ("resource_type", "action_type"):
        value = values[key]
        if isinstance(value, str) and value and not _SLUG.fullmatch(value):
            fields.add(key, _SLUG_MESSAGE)
    fields.check()
    return {k: v for k, v in values.items() if k in body}


@routes.post("/environments/{environment_id}/pipelines")
@endpoint()
async def create_pipeline(request: web.Request) -> web.Response:
    """Create a pipeline in an environment (``pipeline:create``)."""
    environment = await environment_for(request, "pipeline:create")
    values = _parse_pipeline(await read_json_object(request), partial=False)
    row = await pipelines.insert_pipeline(
        request.app[appkeys.DATABASE], environment["id"], **values
    )
    log.info("pipeline_created", pipeline_id=row["id"], environment_id=environment["id"])
    return json_response(
        pipeline_json(row), status=201, headers={"Location": f"/pipelines/{row['id']}"}
    )


@routes.get("/environments/{environment_id}/pipelines")
@endpoint()
async def list_pipelines(request: web.Request) -> web.Response:
    """An environment's pipelines, paginated (``pipeline:read``)."""
    environment = await environment_for(request, "pipeline:read")
    page, per_page = pagination(request)
    rows, total = await pipelines.list_pipelines(
        request.app[appkeys.DATABASE], environment["id"], per_page, (page - 1) * per_page
    )
    return json_response(
        [pipeline_json(r) for r in rows], headers=page_headers(request, page, per_page, total)
    )


@routes.get("/pipelines/{pipeline_id}")
@endpoint()
async def get_pipeline(request: web.Request) -> web.Response:
    """One pipeline (``pipeline:read``)."""
    return json_response(pipeline_json(await pipeline_for(request, "pipeline:read")))


@routes.put("/pipelines/{pipeline_id}")
@endpoint()
async def update_pipeline(request: web.Request) -> web.Response:
    """Change some or all of a pipeline's fields (``pipeline:update``)."""
    pipeline = await pipeline_for(request, "pipeline:update")
    values = _parse_pipeline(await read_json_object(request), partial=True)
    row = await pipelines.update_pipeline(request.app[appkeys.DATABASE], pipeline["id"], **values)
    if row is None:
        raise ApiError(404, "pipeline not found")
    log.info("pipeline_updated", pipeline_id=row["id"], fields=sorted(values))
    return json_response(pipeline_json(row))


@routes.delete("/pipelines/{pipeline_id}")
@endpoint()
async def delete_pipeline(request: web.Request) -> web.Response:
    """Delete a pipeline and its hooks (``pipeline:delete``); runs and history remain."""
    pipeline = await pipeline_for(request, "pipeline:delete")
    if not await pipelines.delete_pipeline(request.app[appkeys.DATABASE], pipeline["id"]):
        raise ApiError(404, "pipeline not found")
    log.info("pipeline_deleted", pipeline_id=pipeline["id"])
    return web.Response(status=204)
