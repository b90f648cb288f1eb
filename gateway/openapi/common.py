"""Building blocks of the OpenAPI document: references, parameters, responses, operations.

Every management view runs inside ``management.framework.endpoint``, so its errors share one
shape and a few statuses appear everywhere (401 without a valid bearer token, 503 while the
database is unreachable); :func:`operation` adds those so each path module lists only what is
particular to its routes.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

MAX_BIGINT = 2**63 - 1
JSON = "application/json"


def ref(name: str) -> Schema:
    """A reference to ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null (OpenAPI 3.1 / JSON Schema 2020-12 style)."""
    return {"oneOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A closed object: ``required`` members always present, ``optional`` ones may be."""
    properties = {**required, **(optional or {})}
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema, **extra: Any) -> Schema:
    """A JSON array of ``items``."""
    return {"type": "array", "items": items, **extra}


# Scalar shapes used throughout.
STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_BIGINT}
UUID: Schema = {"type": "string", "format": "uuid"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}


def text(max_length: int, *, min_length: int = 1) -> Schema:
    """A request string field as ``management.bodies.Fields.string`` checks it: stripped of
    surrounding whitespace, then ``min_length``..``max_length`` characters. ``\\S`` keeps
    blank strings (which strip to nothing) out of the valid set."""
    schema: Schema = {"type": "string", "maxLength": max_length}
    if min_length:
        schema.update(minLength=min_length, pattern=r"\S")
    return schema


# Parameters -------------------------------------------------------------------------------------


def path_id(name: str, what: str) -> Schema:
    """A bigint id in the path (a value that cannot be one answers 404)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id.",
        "schema": ID,
    }


def path_uuid(name: str, what: str) -> Schema:
    """A UUID in the path (a malformed one answers 404)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id.",
        "schema": UUID,
    }


def list_filter(name: str, what: str, values: tuple[str, ...]) -> Schema:
    """The query parameter ``name`` of a list: only items whose ``name`` is one of ``values``
    (management.bodies.list_filter refuses any other with a 422)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"Only {what} with this {name} ({', '.join(values)}).",
        "schema": {"enum": list(values)},
    }


PAGE_PARAMETERS: list[Schema] = [
    {
        "name": "page",
        "in": "query",
        "required": False,
        "description": "Page number, from 1.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
    },
    {
        "name": "per_page",
        "in": "query",
        "required": False,
        "description": "Items per page.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
]

# Response headers --------------------------------------------------------------------------------

REQUEST_ID_HEADER: Schema = {
    "description": "The caller's X-Request-Id when it is sane, else a generated one.",
    "schema": {"type": "string"},
}
RETRY_AFTER_HEADER: Schema = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
PAGE_HEADERS: dict[str, Schema] = {
    "Link": {
        "description": 'RFC 8288 links: rel="first", "prev", "next", "last".',
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Total-Count": {
        "description": "Items across all pages.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}

# Responses ----------------------------------------------------------------------------------------

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is empty, not JSON, or not a JSON object.",
    401: "Missing, malformed, invalid, expired or revoked bearer token.",
    403: "The caller lacks the permission (named in the message) or is not an administrator.",
    404: "No such resource, or it is in an environment the caller cannot see.",
    408: "The body did not arrive within server.body_timeout; the connection is closed.",
    409: "The request conflicts with the resource's current state.",
    413: "The body is larger than the server accepts (the message names the limit).",
    415: "The body is compressed (a Content-Encoding other than identity), or declared as "
    "something other than JSON: send it as is, as application/json.",
    422: "The data is invalid; ``errors`` names every bad field.",
    503: "The database is unavailable, or the gateway is overloaded; retry later.",
}


def json_body(schema: Schema, description: str, headers: dict[str, Schema] | None = None) -> Schema:
    """A JSON response."""
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    response["headers"] = {"X-Request-Id": REQUEST_ID_HEADER, **(headers or {})}
    return response


def error(status: int, description: str | None = None) -> Schema:
    """An error response with the shared ``{"message", "errors"}`` body."""
    headers: dict[str, Schema] = {}
    if status == 401:
        headers["WWW-Authenticate"] = {
            "description": "``Bearer`` when the token is missing or not accepted.",
            "schema": {"type": "string"},
        }
    if status in (429, 503):
        headers["Retry-After"] = RETRY_AFTER_HEADER
    return json_body(ref("Error"), description or ERROR_DESCRIPTIONS[status], headers)


def no_content(description: str) -> Schema:
    """A 204 response."""
    return {"description": description, "headers": {"X-Request-Id": REQUEST_ID_HEADER}}


def page(schema: Schema, description: str) -> Schema:
    """A paginated list response: a JSON array plus Link and X-Total-Count."""
    return json_body(array(schema), description, PAGE_HEADERS)


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[int, Schema],
    *,
    errors: tuple[int, ...] = (),
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    example: Any = None,
    auth: bool = True,
) -> Schema:
    """One management operation: its own responses plus error responses for ``errors``, 401
    (when authenticated) and 503; 400, 408, 413 and 415 whenever it reads a JSON body
    (``example``: a valid one)."""
    statuses = set(errors) | {503}
    if auth:
        statuses.add(401)
    if body is not None:
        statuses.update((400, 408, 413, 415))
    all_responses = {str(k): v for k, v in sorted(responses.items())}
    for status in sorted(statuses):
        all_responses.setdefault(str(status), error(status))
    result: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": dict(sorted(all_responses.items())),
    }
    if parameters:
        result["parameters"] = parameters
    if body is not None:
        media: Schema = {"schema": body}
        if example is not None:
            media["example"] = example
        result["requestBody"] = {"required": body_required, "content": {JSON: media}}
    if not auth:
        result["security"] = []
    return result
