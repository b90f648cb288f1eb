"""The secret-leak audit, end to end: a real ``gateway serve`` at debug level is given
distinctive secrets (canaries) and driven through every path that handles one; nothing it shows
afterwards — a log line, its standard output, an HTTP answer's headers or body, a command's
output — may hold a password, a token, a key, a hook secret or a computed signature, except the
one answer that issues it (a hook secret in its create or rotate answer, a token in the login,
refresh or token-create answer)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import signal
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from tests.acceptance.canary_helpers import (
    Answer,
    EchoingReceiver,
    Transcript,
    hmac_forms,
    shown_signature_forms,
)
from tests.acceptance.process_helpers import GatewayProcess, free_port, run_gateway, write_config

ADMIN_EMAIL = "canary-admin@example.com"
ADMIN_PASSWORD = "Canary-Admin-Passw0rd-7f3a"
WRONG_PASSWORD = "Canary-Wrong-Passw0rd-91bc"
USER_PASSWORD = "Canary-User-Passw0rd-2d4e"
USER_NEW_PASSWORD = "Canary-User-Changed-Passw0rd-55aa"
SHORT_PASSWORD = "Cq7Zk3w"  # below password_min_length: a 422
DSN_PASSWORD = "Canary-Dsn-Passw0rd-c0ffee"  # trust authentication ignores it
BOX_KEY_BYTES = b"CANARY-SECRET-BOX-KEY-0123456789"
BOX_KEY = base64.b64encode(BOX_KEY_BYTES).decode()
BAD_BEARER = "hgp_CanaryUnknownTokenValue0123456789abcdef"
OUT_AUTHORIZATION = "Bearer Canary-Outgoing-Bearer-Value-8e1f"
OUT_API_KEY = "Canary-Outgoing-Api-Key-Value-3b7d"
WRONG_GITLAB_TOKEN = "Canary-Wrong-Gitlab-Token-6a5c"
SEALED_LOOKALIKE = "enc:v1:Canary-Sealed-Lookalike-4f2e"
FAKE_SECRET = "Canary-Secret-Field-In-A-Put-0d9e"
OUT_TOKEN_HEADER = "Canary-Outgoing-Custom-Token-Value-1c8a"
MALFORMED_TOKEN = "hgp_Canary-Malformed-Header-Token-3f9a"
RELOAD_DSN_PASSWORD = "Canary-Reload-Dsn-Passw0rd-e4d2"
# Credentials in a target URL (Slack-style path, ?api_key=): the hook's own answers show the
# URL as given, and so does the history's target_url; nothing else may.
URL_PATH_TOKEN = "Canary-Url-Path-Token-5b1d"
URL_QUERY_KEY = "Canary-Url-Query-Key-9c2e"
BODY = orjson.dumps({"action": "opened", "pull_request": {"head": {"ref": "feature/canary"}}})
WRONG_KEY = b"not the hook secret"


def _gateway_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path / "config.toml",
        {
            "server": {
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "shutdown_timeout": 5.0,
                "access_log": True,
            },
            "log": {"format": "json", "level": "debug"},
            "outgoing": {
                "allow_private_targets": True,
                "retry_schedule": [0.2, 0.2],
                "retry_jitter": 0.0,
                "poll_interval": 0.2,
                "timeout": 2.0,
            },
        },
    )


def _environment(dsn: str) -> dict[str, str]:
    return {
        "GATEWAY_DATABASE_DSN": str(URL(dsn).with_password(DSN_PASSWORD)),
        "GATEWAY_SECURITY_SECRET_KEYS": f"canary:{BOX_KEY}",
        "GATEWAY_ADMIN_EMAIL": ADMIN_EMAIL,
        "GATEWAY_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }


class Audit:
    """The client side of the audit: every answer recorded, the secrets it learns collected
    with the answers allowed to show them, and the signatures it can compute."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.transcript = Transcript()
        self.secrets: dict[str, str] = {}
        self.allowed: dict[str, set[str]] = {}
        self.signatures: set[str] = set()
        self.auth: dict[str, str] = {}

    def secret(self, value: str, what: str, shown_in: Answer | None = None) -> None:
        self.secrets[value] = what
        if shown_in is not None:
            self.allowed.setdefault(value, set()).add(shown_in.label)

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Answer:
        kwargs.setdefault("headers", self.auth)
        answer = await self.transcript.call(self.session, method, self.base + path, **kwargs)
        assert answer.status == expect, (method, path, answer.status, answer.text)
        return answer

    def hook_secret(self, answer: Answer, what: str) -> str:
        value: str = answer.json()["secret"]
        self.secret(value, what, answer)
        if value.startswith("whsec_"):
            self.secret(value.removeprefix("whsec_"), what + " (base64 part)", answer)
        return value


async def _accounts(audit: Audit) -> None:
    """Logins, users, tokens: every path that takes a password or issues a token."""
    login = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    good = await audit.call("POST", "/users/login", 200, json=login, headers={})
    for key in ("access_token", "refresh_token"):
        audit.secret(good.json()[key], f"login {key}", good)
    audit.auth = {"Authorization": f"Bearer {good.json()['access_token']}"}
    await audit.call(
        "POST", "/users/login", 401, json={**login, "password": WRONG_PASSWORD}, headers={}
    )
    unknown = {"email": "nobody@example.com", "password": WRONG_PASSWORD}
    await audit.call("POST", "/users/login", 401, json=unknown, headers={})
    await audit.call("POST", "/users/login", 422, json={**login, "extra": 1}, headers={})
    truncated = f'{{"email": "{ADMIN_EMAIL}", "password": "{ADMIN_PASSWORD}'
    await audit.call(
        "POST", "/users/login", 400, data=truncated, headers={"Content-Type": "application/json"}
    )
    await audit.call("GET", "/users/me", 401, headers={"Authorization": f"Bearer {BAD_BEARER}"})
    await audit.call("GET", "/users/me", 401, headers={"Authorization": f"Basic {BAD_BEARER}"})

    created = await audit.call("POST", "/users/me/tokens", 201, json={"name": "canary automation"})
    personal = created.json()["token"]
    audit.secret(personal, "personal token", created)
    await audit.call("GET", "/users/me/tokens", 200)

    user = await audit.call(
        "POST", "/users", 201, json={"email": "dev@example.com", "password": USER_PASSWORD}
    )
    await audit.call(
        "POST", "/users", 409, json={"email": "DEV@example.com", "password": USER_PASSWORD}
    )
    await audit.call(
        "POST", "/users", 422, json={"email": "x@example.com", "password": SHORT_PASSWORD}
    )
    user_path = f"/users/{user.json()['id']}"
    await audit.call("PUT", user_path, 200, json={"password": USER_NEW_PASSWORD})
    await audit.call("PUT", user_path, 422, json={"password": SHORT_PASSWORD})
    await audit.call("GET", "/users", 200)
    await audit.call(
        "PUT",
        "/users/me/password",
        422,
        json={"current_password": WRONG_PASSWORD, "new_password": USER_NEW_PASSWORD},
    )
    user_login = await audit.call(
        "POST",
        "/users/login",
        200,
        json={"email": "dev@example.com", "password": USER_NEW_PASSWORD},
        headers={},
    )
    refresh = user_login.json()["refresh_token"]
    audit.secret(user_login.json()["access_token"], "user access token", user_login)
    audit.secret(refresh, "user refresh token", user_login)
    pair = await audit.call(
        "POST", "/users/refresh-token", 200, json={"refresh_token": refresh}, headers={}
    )
    for key in ("access_token", "refresh_token"):
        audit.secret(pair.json()[key], f"refreshed {key}", pair)
    await audit.call(
        "POST", "/users/refresh-token", 401, json={"refresh_token": refresh}, headers={}
    )
    await audit.call(
        "POST",
        "/users/logout",
        204,
        json={"refresh_token": pair.json()["refresh_token"]},
        headers={"Authorization": f"Bearer {pair.json()['access_token']}"},
    )
    # From here on, the personal token authenticates (it is sent with every request).
    audit.auth = {"Authorization": f"Bearer {personal}"}


async def _incoming_hooks(audit: Audit, pipeline: int) -> dict[str, dict[str, Any]]:
    """Create, read, list, update and rotate one hook per signature scheme."""
    kinds = {
        "github": {"secret_header_name": "x-hub-signature-256"},
        "gitlab": {"secret_header_name": "x-gitlab-token"},
        "standard": {"secret_header_name": "webhook-signature"},
        "custom": {"secret_header_name": "x-canary-signature", "secret_algorithm": "sha512"},
    }
    hooks: dict[str, dict[str, Any]] = {}
    for kind, fields in kinds.items():
        body = {
            "name": kind,
            "action_type": "deploy",
            **fields,
            "settings": {
                "variables": [{"name": "ref", "path": "pull_request.head.ref", "type": "string"}]
            },
        }
        created = await audit.call("POST", f"/pipelines/{pipeline}/hooks/incoming", 201, json=body)
        hook = created.json()
        hook["secrets"] = [audit.hook_secret(created, f"{kind} hook secret")]
        hooks[kind] = hook
        path = f"/hooks/incoming/{hook['id']}"
        await audit.call("GET", path, 200)
        await audit.call("PUT", path, 200, json={"name": f"{kind} renamed"})
        await audit.call("PUT", path, 422, json={"secret": FAKE_SECRET})
    rotated = await audit.call(
        "POST", f"/hooks/incoming/{hooks['github']['id']}/secret/rotate", 200, json={}
    )
    hooks["github"]["secrets"].append(audit.hook_secret(rotated, "github hook rotated secret"))
    await audit.call("GET", f"/pipelines/{pipeline}/hooks", 200)
    return hooks


def _known_signatures(audit: Audit, hook: dict[str, Any], message: bytes, algorithm: str) -> None:
    for secret in hook["secrets"]:
        key = (
            base64.b64decode(secret.removeprefix("whsec_"))
            if secret.startswith("whsec_")
            else secret.encode()
        )
        audit.signatures |= hmac_forms(key, message, algorithm)


async def _ingest(audit: Audit, hooks: dict[str, dict[str, Any]]) -> None:
    """Signed, badly signed, stale and unsigned calls to each hook."""
    json_type = {"Content-Type": "application/json"}

    async def send(
        hook: dict[str, Any], expect: int, headers: dict[str, str], body: bytes = BODY
    ) -> None:
        await audit.call(
            "POST",
            f"/hooks/incoming/{hook['id']}",
            expect,
            data=body,
            headers={**json_type, **headers},
        )

    github = hooks["github"]
    _known_signatures(audit, github, BODY, "sha256")
    for secret in github["secrets"]:  # the previous secret passes during its grace period
        good = hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()
        await send(github, 202, {"X-Hub-Signature-256": f"sha256={good}"})
    wrong = hmac.new(WRONG_KEY, BODY, hashlib.sha256)
    await send(github, 401, {"X-Hub-Signature-256": f"sha256={wrong.hexdigest()}"})
    await send(github, 401, {"X-Hub-Signature-256": base64.b64encode(wrong.digest()).decode()})
    await send(github, 401, {})
    _known_signatures(audit, github, BODY, "sha1")
    sha1 = hmac.new(github["secrets"][-1].encode(), BODY, hashlib.sha1).hexdigest()
    await send(github, 401, {"X-Hub-Signature-256": f"sha1={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": f"t=1,v1={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": f"md5={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": sha1[:-1] + "!"})
    form = b"payload=" + urllib.parse.quote_plus(BODY.decode()).encode()
    _known_signatures(audit, github, form, "sha256")
    form_signature = hmac.new(github["secrets"][-1].encode(), form, hashlib.sha256).hexdigest()
    await send(
        github,
        202,
        {
            "X-Hub-Signature-256": f"sha256={form_signature}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        form,
    )

    gitlab = hooks["gitlab"]
    await send(gitlab, 202, {"X-Gitlab-Token": gitlab["secrets"][0]})
    await send(gitlab, 401, {"X-Gitlab-Token": WRONG_GITLAB_TOKEN})

    custom = hooks["custom"]
    _known_signatures(audit, custom, BODY, "sha512")
    good_512 = hmac.new(custom["secrets"][0].encode(), BODY, hashlib.sha512).digest()
    await send(custom, 202, {"X-Canary-Signature": base64.b64encode(good_512).decode()})
    await send(custom, 401, {"X-Canary-Signature": hmac.new(WRONG_KEY, BODY, "sha512").hexdigest()})

    standard = hooks["standard"]
    key = base64.b64decode(standard["secrets"][0].removeprefix("whsec_"))
    for stamp, expect in ((int(time.time()), 202), (int(time.time()) - 3600, 401)):
        message_id = f"msg_{uuid.uuid4().hex}"
        signed = f"{message_id}.{stamp}.".encode() + BODY
        _known_signatures(audit, standard, signed, "sha256")
        good_sw = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        headers = {"webhook-id": message_id, "webhook-timestamp": str(stamp)}
        await send(standard, expect, {**headers, "webhook-signature": f"v1,{good_sw}"})
    message_id = f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time()))
    signed = f"{message_id}.{stamp}.".encode() + BODY
    _known_signatures(audit, standard, signed, "sha256")
    bad_sw = base64.b64encode(hmac.new(WRONG_KEY, signed, hashlib.sha256).digest()).decode()
    switched = await audit.call(
        "PUT",
        f"/hooks/incoming/{custom['id']}",
        200,
        json={"secret_header_name": "webhook-signature"},
    )
    audit.hook_secret(switched, "custom hook secret issued by a switch")
    await send(
        standard,
        401,
        {"webhook-id": message_id, "webhook-timestamp": stamp, "webhook-signature": f"v1,{bad_sw}"},
    )


async def _history(audit: Audit, hooks: dict[str, dict[str, Any]]) -> None:
    """Every recorded request, listed and read one by one (headers included); one replayed."""
    for hook in hooks.values():
        listed = await audit.call("GET", f"/hooks/incoming/{hook['id']}/requests", 200)
        for item in listed.json():
            await audit.call("GET", f"/hook-requests/{item['id']}", 200)
    accepted = await audit.call(
        "GET", f"/hooks/incoming/{hooks['github']['id']}/requests?outcome=accepted", 200
    )
    await audit.call("POST", f"/hook-requests/{accepted.json()[0]['id']}/replay", 202)


async def _outgoing_hooks(audit: Audit, pipeline: int, target: str) -> dict[str, Any]:
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


async def _runs(audit: Audit, pipeline: int) -> None:
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


async def _wait_for_deliveries(
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
        for name in ("webhook-signature", "X-Hub-Signature-256"):
            if name in headers:
                audit.signatures |= shown_signature_forms(headers[name])
        key = base64.b64decode(hook["secret"].removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        audit.signatures |= hmac_forms(key, signed)
        audit.signatures |= hmac_forms(hook["secret"].encode(), body)
        audit.signatures |= hmac_forms(key, body)


async def _malformed_requests(port: int, hooks: dict[str, dict[str, Any]]) -> None:
    """Requests aiohttp cannot parse, whose bad header line holds a credential: a stray
    control character in a token or a GitLab secret, a header line over 8 KiB. aiohttp's own
    400 answers quote the line back to the sender (not recorded: the sender's own bytes)."""
    gitlab = hooks["gitlab"]
    for head in (
        f"GET /users/me HTTP/1.1\r\nAuthorization: Bearer {MALFORMED_TOKEN}\x01",
        f"POST /hooks/incoming/{gitlab['id']} HTTP/1.1\r\n"
        f"X-Gitlab-Token: {gitlab['secrets'][0]}\x7f\r\nContent-Length: 0",
        f"GET /users/me HTTP/1.1\r\nAuthorization: Bearer {MALFORMED_TOKEN}{'A' * 9000}",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"{head}\r\nHost: canary\r\n\r\n".encode("latin-1"))
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer


def _commands(audit: Audit, config: Path, env: dict[str, str]) -> None:
    """Commands that print: their output is shown too."""
    for args, stdin in (
        (("keys", "status"), None),
        (("check-config",), None),
        (("user", "create", "--email", ADMIN_EMAIL), ADMIN_PASSWORD + "\n"),
        (("user", "set-password", "--email", "dev@example.com"), USER_PASSWORD + "\n"),
    ):
        done = run_gateway("--config", str(config), *args, env=env, input=stdin)
        audit.transcript.add(f"gateway {' '.join(args)}", done.stdout + done.stderr)


def _reload_with_a_bad_dsn(gateway: GatewayProcess, config: Path) -> None:
    """SIGHUP after a bad edit that also puts a password into an invalid DSN (shadowed by the
    environment's): the rejection is logged, the password is not."""
    bad = f"postgresql://app:{RELOAD_DSN_PASSWORD}@127.0.0.1:notaport/app"
    edit = f'[database]\ndsn = "{bad}"\n[limits]\ndefault_rate_per_second = -1\n'
    config.write_text(config.read_text() + edit)
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_event("config_reload_rejected", timeout=30)


async def test_no_secret_reaches_a_log_line_an_answer_or_a_command_output(
    database_dsn: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    receiver = EchoingReceiver()
    target = await aiohttp_server(receiver.app())
    port = free_port()
    config = _gateway_config(tmp_path, port)
    env = _environment(database_dsn)
    with (tmp_path / "stdout").open("w+") as stdout:
        gateway = GatewayProcess(config, env=env, stdout=stdout)
        try:
            gateway.wait_event("listening", port=port)
            async with aiohttp.ClientSession() as session:
                audit = Audit(session, f"http://127.0.0.1:{port}")
                await _accounts(audit)
                environment = await audit.call("POST", "/environments", 201, json={"name": "prod"})
                pipeline = (
                    await audit.call(
                        "POST",
                        f"/environments/{environment.json()['id']}/pipelines",
                        201,
                        json={
                            "name": "api",
                            "resource_type": "application",
                            "resource_id": 1,
                            "action_type": "deploy",
                        },
                    )
                ).json()["id"]
                outgoing = await _outgoing_hooks(audit, pipeline, str(target.make_url("/notify")))
                hooks = await _incoming_hooks(audit, pipeline)
                await _ingest(audit, hooks)
                await _history(audit, hooks)
                await _malformed_requests(port, hooks)
                await _runs(audit, pipeline)
                await _wait_for_deliveries(audit, outgoing, receiver)
                for path in ("/metrics", "/openapi.json", "/healthz", "/readyz"):
                    await audit.call("GET", path, 200, headers={})
            # In a thread: the receiver, on this event loop, keeps answering meanwhile.
            await asyncio.to_thread(_commands, audit, config, env)
            _reload_with_a_bad_dsn(gateway, config)
            gateway.process.send_signal(signal.SIGTERM)
            assert gateway.finish(timeout=30) == 0
        finally:
            gateway.kill()
        stdout.seek(0)
        audit.transcript.add("gateway serve stdout", stdout.read())
    audit.transcript.add("gateway serve stderr", gateway.output)

    # The paths under test were taken: this test cannot pass by logging nothing.
    events = {e.get("event") for e in gateway.events}
    assert {"login_failed", "login_succeeded", "http_request"} <= events, events
    assert {"hook_request_rejected", "config_reload_rejected"} <= events, events
    gave_up = [e for e in gateway.named("outgoing_delivery_attempt") if e.get("next") == "failed"]
    assert gave_up, "no delivery to the unreachable target was given up"
    assert receiver.seen and len(receiver.failed_once) >= 3

    for value, what in (
        (ADMIN_PASSWORD, "admin password"),
        (WRONG_PASSWORD, "wrong password"),
        (USER_PASSWORD, "user password"),
        (USER_NEW_PASSWORD, "user's new password"),
        (SHORT_PASSWORD, "short password"),
        (DSN_PASSWORD, "DSN password"),
        (BOX_KEY, "secret-box key"),
        (BOX_KEY_BYTES.decode(), "secret-box key bytes"),
        (BAD_BEARER, "unknown bearer token"),
        (OUT_AUTHORIZATION.split()[1], "outgoing Authorization value"),
        (OUT_API_KEY, "outgoing X-Api-Key value"),
        (WRONG_GITLAB_TOKEN, "wrong GitLab token"),
        (SEALED_LOOKALIKE, "sealed-looking header value"),
        (FAKE_SECRET, "secret field of a PUT"),
        (OUT_TOKEN_HEADER, "outgoing X-Canary-Token value"),
        (MALFORMED_TOKEN, "token in a malformed header"),
        (RELOAD_DSN_PASSWORD, "password of a DSN in a rejected reload"),
    ):
        audit.secret(value, what)
    for value in (URL_PATH_TOKEN, URL_QUERY_KEY):
        # Only as the target URL itself, in answers (never in a log line or a message).
        audit.secret(value, "credential in a target URL")
        audit.allowed[value] = {a.label for a in audit.transcript.answers}
        for answer in audit.transcript.answers:
            elsewhere = re.sub(r'"target_url":"[^"]*"', "", answer.text)
            assert value not in elsewhere, (answer.label, elsewhere)
    for form in audit.signatures:
        audit.secret(form, "a signature")
    leaks = audit.transcript.leaks(audit.secrets, audit.allowed)
    assert not leaks, "\n".join(leaks)
    # aiohttp's lines for the unparseable requests are there, without their bytes.
    assert len(gateway.named("http_request_unparseable")) == 3, gateway.output[-3000:]
