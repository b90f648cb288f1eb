"""schemathesis against a live ``gateway serve``: every documented operation, fed schema-valid
and schema-invalid requests as the bootstrap admin, must never answer 5xx and must answer only
what gateway/openapi documents (status codes, content types, headers, bodies); schema-invalid
requests must be refused.

One server for the module, on a fresh database seeded with one of everything (environment,
pipeline, incoming and outgoing hook, runs, recorded requests, role, team, link, token), so that
about half of the generated cases name resources that exist and reach the views' success paths.
Bounded and deterministic: ``MAX_EXAMPLES`` cases per operation, derandomized, no shrinking;
deletions run last so that they do not empty the world of the other operations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.openapi import openapi_document
from tests.acceptance.lb_client import payload, signed_headers
from tests.acceptance.lb_helpers import login_as
from tests.acceptance.live_gateway import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    LiveGateway,
    fresh_database,
    start_gateway,
    stop_gateway,
)
from tests.integration.management_helpers import SEED_CREATE_BODY

MAX_EXAMPLES = 25  # per operation (schema-valid and schema-invalid together)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
# The bearer token is the admin's, sent with every case (authentication failures are covered by
# tests/integration). Unknown query parameters are ignored by design, as most HTTP APIs do.
SCHEMA.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every documented operation; deletions last, the deepest paths first
    (a team's member before the team)."""
    found = [
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
    ]
    return sorted(
        found, key=lambda op: (op[0] == "DELETE", op[0] == "DELETE" and -op[1].count("/"))
    )


@dataclass
class World:
    """The live server and the ids of the resources seeded in it."""

    live: LiveGateway
    ids: dict[str, Any]
    session: requests.Session

    def auth_for(self, method: str, path: str) -> dict[str, str]:
        """The admin's Authorization header; for logging out, a session of its own (a logout
        ends the access token it is called with)."""
        if (method, path) == ("POST", "/users/logout"):
            return {
                "Authorization": f"Bearer {login_as(self.live.port, ADMIN_EMAIL, ADMIN_PASSWORD)}"
            }
        return dict(self.live.auth)

    def known(self, path: str) -> dict[str, Any]:
        """Existing values for the path parameters of ``path``."""
        names = _PLACEHOLDER.findall(path)
        hook = self.ids["outgoing_hook_id" if "/outgoing" in path else "incoming_hook_id"]
        values = {**self.ids, "hook_id": hook}
        return {name: values[name] for name in names}


def _seed(live: LiveGateway, session: requests.Session) -> dict[str, Any]:
    def call(method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        data = body if isinstance(body, str) else None
        response = session.request(
            method,
            live.url + path,
            json=None if data is not None else body,
            data=data,
            headers={**live.auth, "Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == expect, (method, path, response.text)
        return response.json() if response.content else None

    me = call("GET", "/users/me")
    env = call("POST", "/environments", {"name": "schemathesis"}, 201)
    pipeline = call(
        "POST",
        f"/environments/{env['id']}/pipelines",
        {"name": "p", "resource_type": "application", "resource_id": 1, "action_type": "deploy"},
        201,
    )
    outgoing = call(
        "POST",
        f"/pipelines/{pipeline['id']}/hooks/outgoing",
        {
            "name": "notify",
            "target_url": "http://127.0.0.1:9/notify",
            "trigger_when": {"events": ["run.queued"]},
        },
        201,
    )
    hook = call("POST", f"/pipelines/{pipeline['id']}/hooks/incoming", SEED_CREATE_BODY, 201)
    run_ids = []
    for number in range(3):
        body = payload(number)
        response = session.post(
            f"{live.url}/hooks/incoming/{hook['id']}",
            data=body,
            headers=signed_headers(hook["secret"], body),
            timeout=10,
        )
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["run_id"])
    requests_ = call("GET", f"/hooks/incoming/{hook['id']}/requests")
    role = call("POST", "/roles", {"name": "viewer", "permissions": ["environment:read"]}, 201)
    team = call("POST", "/teams", {"name": "ops"}, 201)
    call("POST", f"/teams/{team['id']}/members", {"user_id": me["id"]}, 201)
    # The user that user_id paths name: another one, so that PUT /users/{user_id} reaches its
    # success path (the admin cannot demote, disable or set the password of itself there).
    other = call("POST", "/users", {"email": "other@example.com", "password": "x" * 12}, 201)
    call("POST", f"/teams/{team['id']}/members", {"user_id": other["id"]}, 201)
    call("POST", f"/environments/{env['id']}/teams/{team['id']}/link", {"role_id": role["id"]}, 201)
    token = call("POST", "/users/me/tokens", {"name": "ci"}, 201)
    return {
        "environment_id": env["id"],
        "pipeline_id": pipeline["id"],
        "incoming_hook_id": hook["id"],
        "outgoing_hook_id": outgoing["id"],
        "run_id": run_ids[0],
        "request_id": requests_[0]["id"],
        "role_id": role["id"],
        "team_id": team["id"],
        "user_id": other["id"],
        "token_id": token["id"],
    }


@pytest.fixture(scope="module")
def world(
    server_dsn: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    with fresh_database(server_dsn, template_database) as dsn:
        # No failed-login throttling: the fuzzed logins fail by the dozen, and the admin must
        # still log in for every logout case (tests/integration/test_login_protection.py).
        no_throttle = {"login_failures_per_address": 0, "login_failures_per_account": 0}
        live = start_gateway(directory, dsn, sections={"auth": no_throttle})
        session = requests.Session()
        try:
            served = session.get(f"{live.url}/openapi.json", timeout=10)
            assert served.status_code == 200 and served.json() == openapi_document()
            yield World(live, _seed(live, session), session)
        finally:
            session.close()
            stop_gateway(live)


def _failure_lines(group: FailureGroup) -> list[str]:
    return [f"{type(f).__name__}: {f.title}: {f.message}"[:600] for f in group.exceptions]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: str(v))
def test_operation_conforms_to_the_document(world: World, method: str, path: str) -> None:
    operation = SCHEMA[path][method]
    known = world.known(path)
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if known:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
        # The documented example bodies, sent to resources that exist.
        strategies += SCHEMA.get_strategies_from_examples(operation, path_parameters=known)
    else:
        strategies += SCHEMA.get_strategies_from_examples(operation)
    failures: dict[str, str] = {}  # first case per distinct failure

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        # As the admin everywhere (the trigger endpoint ignores the header).
        headers = world.auth_for(method, path)
        response = case.call(
            base_url=world.live.url, session=world.session, headers=headers, timeout=10
        )
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for line in _failure_lines(group):
                failures.setdefault(line, case.as_curl_command(headers=headers))

    run()
    report = "\n\n".join(f"{line}\n  {curl}" for line, curl in failures.items())
    assert not failures, f"{method} {path}: {len(failures)} failure(s)\n{report}"
