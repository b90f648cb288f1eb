"""The pure ingest decision: every status path of evaluate(), on real payloads and signatures."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.config import build_config
from gateway.ingest.evaluation import (
    ACCEPTED,
    REJECTED,
    SKIPPED,
    CompiledHook,
    delivery_id_header_problem,
    evaluate,
)
from gateway.ingest.signatures import sign_hmac_hex
from tests.conftest import FIXTURES
from tests.seed import SEED_VARIABLES

CONFIG = build_config({}, {})
SECRET = "It's a Secret to Everybody"
PR_OPENED = (FIXTURES / "github" / "pull_request.opened.json").read_bytes()
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def make_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "pipeline_id": 7,
        "name": "Deploy `main` branch",
        "active": True,
        "action_type": "deploy",
        "requires_secret": True,
        "secret_algorithm": "sha256",
        "secret_header_name": "x-hub-signature-256",
        "secret": SECRET,
        "previous_secret": None,
        "previous_secret_seconds_left": None,
        "trigger_when": {"conditions": []},
        "settings": {"variables": SEED_VARIABLES, "delivery_id_header": None},
    }
    row.update(overrides)
    return row


def make_hook(**overrides: Any) -> CompiledHook:
    return CompiledHook.from_row(make_row(**overrides), CONFIG)


def github_headers(body: bytes, secret: str = SECRET, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + sign_hmac_hex(secret, "sha256", body),
        **extra,
    }


def test_seed_hook_accepts_a_github_pull_request_with_typed_variables() -> None:
    result = evaluate(make_hook(), github_headers(PR_OPENED), PR_OPENED)
    assert (result.status, result.outcome) == (202, ACCEPTED)
    assert result.message == "Hook accepted: run queued"
    assert result.variables == {
        "source_type": "branch",
        "source_ref": "changes",
        "pull_request_id": 2,
        "pull_request_title": "Update the README with new information.",
        "commit_hash": HEAD_SHA,
    }
    assert result.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert result.errors is None


def test_one_flipped_byte_is_401_and_the_computed_signature_is_not_disclosed() -> None:
    headers = github_headers(PR_OPENED)
    tampered = bytearray(PR_OPENED)
    tampered[100] ^= 0x01
    result = evaluate(make_hook(), headers, bytes(tampered))
    assert (result.status, result.outcome) == (401, REJECTED)
    assert result.message == "invalid signature: signature does not match the request body"
    assert result.reason == "signature_mismatch"
    computed = sign_hmac_hex(SECRET, "sha256", bytes(tampered))
    assert computed not in repr(result) and SECRET not in repr(result)
    assert result.variables is None and result.payload is None


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "invalid signature: missing signature header 'x-hub-signature-256'"),
        (
            {"X-Hub-Signature-256": " "},
            "invalid signature: signature header 'x-hub-signature-256' is empty",
        ),
        (
            {"X-Hub-Signature-256": "sha1=" + "0" * 40},
            "invalid signature: signature uses sha1 but this hook expects sha256",
        ),
        (
            {"X-Hub-Signature-256": "sha256=not hex!"},
            "invalid signature: malformed signature in header 'x-hub-signature-256': expected hex, "
            "'sha256=<hex>' or base64",
        ),
    ],
)
def test_signature_rejections_name_the_problem(headers: dict[str, str], message: str) -> None:
    result = evaluate(make_hook(), {"Content-Type": "application/json", **headers}, PR_OPENED)
    assert (result.status, result.outcome, result.message) == (401, REJECTED, message)


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    body = b"{not json"
    unsigned = evaluate(make_hook(), {"Content-Type": "text/plain"}, body)
    assert unsigned.status == 401  # neither 415 nor 400: nothing is parsed for an unsigned caller
    signed = evaluate(make_hook(), github_headers(body, **{"Content-Type": "text/plain"}), body)
    assert signed.status == 415


def test_rotation_accepts_both_secrets_for_the_grace_period_the_database_counts() -> None:
    """The grace period's end is read as seconds left by the database's clock, which also set
    its start, so this process's clock plays no part: the previous secret works while the
    database says time is left, and the compiled hook says when to recompile it."""
    new_secret = "new secret after rotation"
    row = make_row(secret=new_secret, previous_secret=SECRET, previous_secret_seconds_left=3600.0)
    during = CompiledHook.from_row(row, CONFIG)
    assert during.previous_secret_expires_in == 3600.0
    for secret in (new_secret, SECRET):
        assert evaluate(during, github_headers(PR_OPENED, secret), PR_OPENED).status == 202
    for seconds_left in (0.0, -1.0, None):
        row["previous_secret_seconds_left"] = seconds_left
        after = CompiledHook.from_row(row, CONFIG)
        assert after.previous_secret_expires_in is None
        assert evaluate(after, github_headers(PR_OPENED, new_secret), PR_OPENED).status == 202
        assert evaluate(after, github_headers(PR_OPENED, SECRET), PR_OPENED).status == 401


def test_inactive_hook_is_403() -> None:
    result = evaluate(make_hook(active=False), github_headers(PR_OPENED), PR_OPENED)
    assert (result.status, result.outcome, result.message) == (
        403,
        REJECTED,
        "incoming hook is inactive",
    )


def test_a_broken_stored_definition_is_500_and_accepts_nothing() -> None:
    hook = make_hook(settings={"variables": [{"name": "x", "type": "decimal"}]})
    assert (
        hook.definition_error is not None and "settings.variables.0.type" in hook.definition_error
    )
    result = evaluate(hook, github_headers(PR_OPENED), PR_OPENED)
    assert result.status == 500 and result.outcome == REJECTED
    assert (
        result.message
        == "the incoming hook's stored definition is invalid; an operator must fix it"
    )
    no_secret = make_hook(secret=None)
    assert no_secret.definition_error is not None
    assert evaluate(no_secret, {"Content-Type": "application/json"}, PR_OPENED).status == 500


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON",
     "application/vnd.github+json"],
)  # fmt: skip
def test_json_content_types_and_a_missing_one_parse_as_json(content_type: str | None) -> None:
    headers = github_headers(PR_OPENED)
    del headers["Content-Type"]
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert evaluate(make_hook(), headers, PR_OPENED).status == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data"])
def test_other_content_types_are_415(content_type: str) -> None:
    result = evaluate(
        make_hook(), github_headers(PR_OPENED, **{"Content-Type": content_type}), PR_OPENED
    )
    assert (result.status, result.outcome) == (415, REJECTED)
    assert result.message == (
        f"unsupported content type {content_type!r}: expected application/json or "
        "application/x-www-form-urlencoded with a 'payload' field"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"action": "opened",', "request body is not valid JSON: "),
        (b"\xff\xfe{}", "request body is not valid JSON: "),
        (b"", "request body is empty; expected JSON"),
    ],
)
def test_bad_json_is_400(body: bytes, message: str) -> None:
    result = evaluate(make_hook(), github_headers(body), body)
    assert (result.status, result.outcome) == (400, REJECTED)
    assert result.message.startswith(message)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"action": "caf\xe9"}', "byte 0xe9 at offset 15"),  # Latin-1
        (b'{"a": 1, "b": "ok\xc3"}', "byte 0xc3 at offset 17"),  # a sequence cut short
        (b'{"a": "\xed\xa0\x80"}', "byte 0xed at offset 7"),  # an encoded surrogate
        (b"\xff\xfe{}", "byte 0xff at offset 0"),  # UTF-16's byte order mark
    ],
)
def test_a_body_that_is_not_utf8_is_400_naming_the_first_bad_byte(
    body: bytes, problem: str
) -> None:
    # orjson says "str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)"
    # for all of these: no surrogate in most, and the position is always the start.
    result = evaluate(make_hook(), github_headers(body), body)
    assert (result.status, result.reason) == (400, "bad_json")
    assert result.message == f"request body is not valid JSON: it is not UTF-8 text: {problem}"


def test_github_form_mode_signs_the_form_body_and_parses_its_payload_field() -> None:
    form = urlencode({"payload": PR_OPENED.decode()}).encode()
    headers = github_headers(form, **{"Content-Type": "application/x-www-form-urlencoded"})
    result = evaluate(make_hook(), headers, form)
    assert result.status == 202
    assert result.variables is not None and result.variables["commit_hash"] == HEAD_SHA
    # The HMAC covers the raw form body, not the JSON inside it.
    wrong = github_headers(PR_OPENED, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert evaluate(make_hook(), wrong, form).status == 401


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (b"other=1", "form body has no 'payload' field; GitHub's form mode sends JSON in it"),
        (b"payload=", "form field 'payload' is empty; expected JSON"),
        (b"payload=%7Bnope", "form field 'payload' is not valid JSON: "),
        (b"payload=\xc3\xa9", "form body is not valid URL-encoded UTF-8 text: "),
    ],
)
def test_bad_form_bodies_are_400(form: bytes, message: str) -> None:
    headers = github_headers(form, **{"Content-Type": "application/x-www-form-urlencoded"})
    result = evaluate(make_hook(), headers, form)
    assert result.status == 400 and result.message.startswith(message)


def test_unmet_conditions_skip_with_the_reason() -> None:
    hook = make_hook(
        trigger_when={"conditions": [{"path": "action", "accepted_values": ["closed"]}]}
    )
    result = evaluate(hook, github_headers(PR_OPENED), PR_OPENED)
    assert (result.status, result.outcome) == (202, SKIPPED)
    assert result.message == "Hook call skipped: trigger conditions not met"
    assert result.reason == 'condition 0: value at \'action\' is "opened", accepted: ["closed"]'
    assert result.variables is None
    assert result.history_message() == f"{result.message}: {result.reason}"
    met = make_hook(
        trigger_when={"conditions": [{"path": "action", "accepted_values": ["opened"]}]}
    )
    assert evaluate(met, github_headers(PR_OPENED), PR_OPENED).outcome == ACCEPTED


def test_missing_and_uncoercible_variables_are_422_listing_every_problem() -> None:
    variables = [
        {"name": "ref", "path": "pull_request.head.ref", "type": "string", "required": True},
        {"name": "ticket", "path": "ticket.id", "type": "integer", "required": True},
        {"name": "release", "path": "release.tag", "type": "string", "required": True},
        {"name": "draft", "path": "pull_request.title", "type": "boolean"},
    ]
    hook = make_hook(settings={"variables": variables})
    result = evaluate(hook, github_headers(PR_OPENED), PR_OPENED)
    assert (result.status, result.outcome) == (422, REJECTED)
    assert result.message == "the payload does not provide valid variables: ticket, release, draft"
    assert result.errors == {
        "ticket": ["is required but missing at path 'ticket.id'"],
        "release": ["is required but missing at path 'release.tag'"],
        "draft": [
            "invalid value at path 'pull_request.title': expected a boolean, got "
            "'Update the README with new information.'"
        ],
    }
    assert result.history_message() == (
        "the payload does not provide valid variables: ticket, release, draft (ticket: is "
        "required but missing at path 'ticket.id'; release: is required but missing at path "
        "'release.tag'; draft: invalid value at path 'pull_request.title': expected a boolean, "
        "got 'Update the README with new information.')"
    )


def test_a_nul_character_in_a_variable_is_422_not_a_storage_failure() -> None:
    body = orjson.dumps({"pull_request": {"title": "evil\u0000title", "number": 1}})
    result = evaluate(make_hook(), github_headers(body), body)
    assert result.status == 422
    assert result.errors == {
        "pull_request_title": ["contains a NUL character (\\u0000), which cannot be stored"]
    }


def test_delivery_id_headers_in_order_and_per_hook_override() -> None:
    body = b"{}"
    hook = make_hook(requires_secret=False)
    cases = [
        ({"X-GitHub-Delivery": "gh", "Idempotency-Key": "idem"}, "gh"),
        # GitLab's event UUID is shared by the events of one push: never a delivery id.
        ({"X-Gitlab-Event-UUID": "gl", "Idempotency-Key": "idem"}, "idem"),
        ({"X-Gitlab-Event-UUID": "gl"}, None),
        ({"webhook-id": "msg", "Idempotency-Key": "idem"}, "msg"),
        ({"Idempotency-Key": " idem ", "X-Request-UUID": "bb"}, "idem"),
        ({"X-Request-UUID": "bb"}, "bb"),
        ({"X-Other": "x"}, None),
    ]
    for headers, expected in cases:
        assert evaluate(hook, headers, body).delivery_id == expected
    custom = make_hook(requires_secret=False, settings={"delivery_id_header": "X-Event-Id"})
    assert (
        evaluate(custom, {"x-event-id": "e1", "X-GitHub-Delivery": "gh"}, body).delivery_id == "e1"
    )
    assert evaluate(custom, {"X-GitHub-Delivery": "gh"}, body).delivery_id is None


def test_an_overlong_delivery_id_is_400() -> None:
    hook = make_hook(requires_secret=False)
    result = evaluate(hook, {"Idempotency-Key": "x" * 201}, b"{}")
    assert result.status == 400
    assert result.message == "delivery id header is longer than 200 characters"
    assert evaluate(hook, {"Idempotency-Key": "x" * 200}, b"{}").status == 202


def test_gitlab_token_hook() -> None:
    hook = make_hook(secret_header_name="x-gitlab-token")
    body = (FIXTURES / "gitlab" / "merge_request.docs.json").read_bytes()
    ok = {
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event": "Merge Request Hook",
        "Content-Type": "application/json",
    }
    assert evaluate(hook, ok, body).status == 202
    wrong = evaluate(hook, {**ok, "X-Gitlab-Token": SECRET + "x"}, body)
    assert (wrong.status, wrong.message) == (
        401,
        "invalid signature: token in header 'x-gitlab-token' does not match",
    )


def test_standard_webhooks_signed_by_the_reference_library() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook = make_hook(secret=secret, secret_header_name="webhook-signature")
    msg_id, now = "msg_2KWPBgLlAfxdpx2AI54pPJ85f1W", datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, PR_OPENED.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    result = evaluate(hook, headers, PR_OPENED)
    assert result.status == 202 and result.delivery_id == msg_id
    late = evaluate(hook, headers, PR_OPENED, now=time.time() + 3600)
    assert (late.status, late.message) == (
        401,
        "invalid signature: webhook-timestamp is too old: more than 300 s from this server's clock",
    )


def test_a_standard_webhooks_hook_takes_its_delivery_id_from_the_signed_webhook_id_only() -> None:
    """An unsigned X-GitHub-Delivery added to a captured delivery must not make it new."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, now = "msg_2KWPBgLlAfxdpx2AI54pPJ85f1W", datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, PR_OPENED.decode()),
        "X-GitHub-Delivery": "fresh-unsigned-value",
        "content-type": "application/json",
    }
    for settings in ({"variables": []}, {"delivery_id_header": "x-github-delivery"}):
        hook = make_hook(secret=secret, secret_header_name="webhook-signature", settings=settings)
        assert hook.delivery_id_headers == ("webhook-id",)
        result = evaluate(hook, headers, PR_OPENED)
        assert result.status == 202 and result.delivery_id == msg_id


@pytest.mark.parametrize(
    ("settings_header", "secret_header"),
    [
        ("x-gitlab-token", "x-gitlab-token"),
        ("X-Hub-Signature-256", "x-hub-signature-256"),
        ("authorization", "x-hub-signature-256"),
        ("x-my-token", "x-my-token"),  # a custom token header: its value is the secret
        ("x-gitea-signature", "x-hub-signature-256"),  # the same HMAC under another name
        ("X-Api-Key", "x-hub-signature-256"),  # a credential of the sender's
    ],
)
def test_a_stored_delivery_id_header_that_carries_a_secret_is_never_read(
    settings_header: str, secret_header: str
) -> None:
    """Definitions stored before the API refused them: no delivery id rather than the secret."""
    hook = make_hook(
        secret_header_name=secret_header, settings={"delivery_id_header": settings_header}
    )
    assert hook.delivery_id_headers == ()
    headers = {settings_header: SECRET, "X-GitHub-Delivery": "gh"}
    assert evaluate(hook, headers, b"{}").delivery_id is None


@pytest.mark.parametrize(
    ("header", "requires_secret", "secret_header", "refused"),
    [
        (None, True, "webhook-signature", False),
        ("webhook-id", True, "webhook-signature", False),
        ("X-GitHub-Delivery", True, "webhook-signature", True),  # unsigned on a signed scheme
        ("x-github-delivery", False, "webhook-signature", False),  # nothing is signed anyway
        ("x-github-delivery", True, "x-hub-signature-256", False),
        ("x-hub-signature-256", True, "x-hub-signature-256", True),
        ("x-hub-signature", True, "x-hub-signature-256", True),
        ("X-Gitlab-Token", True, "x-gitlab-token", True),
        ("x-my-token", False, "x-my-token", True),  # redacted in the history all the same
        ("cookie", False, "x-hub-signature-256", True),
        ("authorization", True, "x-hub-signature-256", True),
        ("x-request-id", True, "x-gitlab-token", False),
        ("X-Gitea-Signature", True, "x-hub-signature-256", True),
        ("x-api-key", False, "x-hub-signature-256", True),
        ("X-Functions-Key", True, "x-hub-signature-256", True),
        ("Idempotency-Key", True, "x-gitlab-token", False),  # GitLab's delivery id
        ("X-Request-UUID", True, "x-hub-signature", False),
    ],
)
def test_which_delivery_id_headers_are_refused(
    header: str | None, requires_secret: bool, secret_header: str, refused: bool
) -> None:
    problem = delivery_id_header_problem(
        header, requires_secret=requires_secret, secret_header_name=secret_header
    )
    assert (problem is not None) is refused, problem


def test_bitbucket_sha256_in_the_legacy_header() -> None:
    hook = make_hook(secret_header_name="x-hub-signature", settings={"variables": []})
    body = (FIXTURES / "bitbucket" / "pullrequest_fulfilled.json").read_bytes()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature": f"sha256={digest}",
        "X-Event-Key": "pullrequest:fulfilled",
        "X-Request-UUID": "9d5a6b50-bitbucket",
        "Content-Type": "application/json",
    }
    result = evaluate(hook, headers, body)
    assert result.status == 202 and result.delivery_id == "9d5a6b50-bitbucket"


def test_no_secret_required_and_replay_without_verification() -> None:
    open_hook = make_hook(requires_secret=False)
    assert open_hook.verifier is None
    assert evaluate(open_hook, {"Content-Type": "application/json"}, PR_OPENED).status == 202
    # Replay: stored headers have the signature redacted; the request was verified on arrival.
    stored = {"content-type": "application/json", "x-hub-signature-256": "[redacted]"}
    assert evaluate(make_hook(), stored, PR_OPENED).status == 401
    replayed = evaluate(make_hook(), stored, PR_OPENED, verify_signature=False)
    assert replayed.status == 202 and replayed.variables is not None


def test_secret_bearing_headers_are_marked_for_redaction() -> None:
    # The hook's own header; the rule (gateway.security.sensitive_headers) covers the others.
    assert make_hook().redacted_headers == {"x-hub-signature-256"}
    custom = make_hook(secret_header_name="X-Signature")
    assert "x-signature" in custom.redacted_headers
    stdwh = make_hook(
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", secret_header_name="webhook-signature"
    )
    assert "webhook-signature" in stdwh.redacted_headers
