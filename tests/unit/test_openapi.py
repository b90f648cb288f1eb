"""The OpenAPI document (gateway/openapi) against the routes the application registers.

A route added to the application without being documented fails here, and so does a documented
route that no longer exists; the document itself must be valid OpenAPI 3.1.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway.app import create_app
from gateway.config import build_config
from gateway.openapi import openapi_document

Route = tuple[str, str]  # (METHOD, path template)
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")


def registered_routes(app: web.Application) -> set[Route]:
    """Every (method, path) the app routes, without the HEAD that aiohttp adds for each GET."""
    found: set[Route] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route without a path: {route!r}"
        found.add((route.method, path))
    return found


def documented_routes(document: dict[str, Any]) -> set[Route]:
    """Every (method, path) the document describes."""
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }


def mismatches(app: web.Application, document: dict[str, Any]) -> tuple[set[Route], set[Route]]:
    """(registered but undocumented, documented but not registered)."""
    registered, documented = registered_routes(app), documented_routes(document)
    return registered - documented, documented - registered


@pytest.fixture(scope="module")
def app() -> web.Application:
    # No database is touched: the routes are registered when the app is built.
    return create_app(build_config({}, {}), None)  # type: ignore[arg-type]


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_registered_route_is_documented_and_nothing_else(app: web.Application) -> None:
    undocumented, unregistered = mismatches(app, openapi_document())
    assert not undocumented, f"routes missing from the OpenAPI document: {sorted(undocumented)}"
    assert not unregistered, f"documented routes that do not exist: {sorted(unregistered)}"
    assert ("GET", "/openapi.json") in registered_routes(app)


def test_the_comparison_notices_a_missing_and_an_extra_route(app: web.Application) -> None:
    document = copy.deepcopy(openapi_document())
    del document["paths"]["/runs/{run_id}/heartbeat"]["post"]
    document["paths"]["/runs/{run_id}/rewind"] = {"post": {"responses": {}}}
    undocumented, unregistered = mismatches(app, document)
    assert undocumented == {("POST", "/runs/{run_id}/heartbeat")}
    assert unregistered == {("POST", "/runs/{run_id}/rewind")}


def test_path_parameters_match_the_placeholders() -> None:
    for path, item in openapi_document()["paths"].items():
        placeholders = set(_PLACEHOLDER.findall(path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == placeholders, f"{method.upper()} {path}: {declared}"


def test_operation_ids_are_unique_and_errors_share_one_schema() -> None:
    ids: list[str] = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            for status, response in operation["responses"].items():
                if (
                    not status.startswith(("4", "5"))
                    or path == "/hook-requests/{request_id}/replay"
                ):
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert len(ids) == len(set(ids))


def test_authenticated_operations_document_401_and_public_ones_opt_out() -> None:
    public = {"login", "refreshToken", "triggerIncomingHook", "healthz", "readyz", "metrics"}
    public.add("openapi")
    for item in openapi_document()["paths"].values():
        for operation in item.values():
            if operation["operationId"] in public:
                assert operation["security"] == []
            else:
                assert "security" not in operation, operation["operationId"]
                assert "401" in operation["responses"], operation["operationId"]
                assert "503" in operation["responses"], operation["operationId"]


def test_every_operation_with_a_body_lists_the_body_errors() -> None:
    # Management views read bodies with management.bodies.read_body: 400 (not a JSON object),
    # 408 (too slow), 413 (over the limit) and 415 (compressed) are possible on each of them.
    document = openapi_document()
    missing = [
        (method.upper(), path, status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
        for status in ("400", "408", "413", "415")
        if status not in operation["responses"]
    ]
    assert missing == []


def test_an_accepted_hook_request_declares_its_run_id_header() -> None:
    trigger = openapi_document()["paths"]["/hooks/incoming/{hook_id}"]["post"]
    for status in ("200", "202"):
        assert "X-Run-Id" in trigger["responses"][status]["headers"], status


@pytest.mark.parametrize(
    ("schema_name", "body"),
    [
        # Passwords are taken exactly as given, spaces included: the document called an
        # all-spaces password invalid while the server accepted it.
        ("NEW_USER", {"email": "carol@example.com", "password": " " * 16}),
        ("LOGIN", {"email": "carol@example.com", "password": " " * 16}),
        ("PASSWORD_CHANGE", {"current_password": " " * 16, "new_password": "  x  " * 4}),
        ("USER_CHANGE", {"password": None}),  # null: the password is left as it is
        ("LOGOUT", {"refresh_token": None}),  # null: as if absent
    ],
)
def test_bodies_the_server_accepts_are_valid_in_the_document(
    schema_name: str, body: dict[str, Any]
) -> None:
    from jsonschema import Draft202012Validator

    from gateway.openapi import inputs

    Draft202012Validator(getattr(inputs, schema_name)).validate(body)


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        # The view refuses a request body template that is a number or a boolean (422); the
        # document called any value valid, so a client trusting it was refused.
        ("outgoing_update", {"settings": {"request_body": 5}}),
        ("outgoing_update", {"settings": {"request_body": True}}),
    ],
)
def test_bodies_the_server_refuses_by_type_are_invalid_in_the_document(
    schema: str, body: dict[str, Any]
) -> None:
    from jsonschema import Draft202012Validator, ValidationError

    from gateway.openapi import inputs

    schemas = {"outgoing_update": inputs.outgoing_hook(partial=True)}
    with pytest.raises(ValidationError):
        Draft202012Validator(schemas[schema]).validate(body)
