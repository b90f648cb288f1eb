"""The secret-leak audit's paths into the gateway: accounts and tokens, incoming hooks,
signed and badly signed calls, the request history, requests aiohttp cannot parse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import urllib.parse
import uuid
from typing import Any

from tests.acceptance.canary_helpers import Audit, hmac_forms
from tests.acceptance.canary_values import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    BAD_BEARER,
    BODY,
    FAKE_SECRET,
    MALFORMED_TOKEN,
    SHORT_PASSWORD,
    USER_NEW_PASSWORD,
    USER_PASSWORD,
    WRONG_GITLAB_TOKEN,
    WRONG_KEY,
    WRONG_PASSWORD,
)


async def accounts(audit: Audit) -> None:
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
        "POST",
        "/users/logout",
        204,
        json={"refresh_token": pair.json()["refresh_token"]},
        headers={"Authorization": f"Bearer {pair.json()['access_token']}"},
    )
    # A spent one again: refused, and it ends the user's sessions (refresh_token_reused); one
    # ended by the logout: refused.
    for spent in (refresh, pair.json()["refresh_token"]):
        await audit.call(
            "POST", "/users/refresh-token", 401, json={"refresh_token": spent}, headers={}
        )
    # From here on, the personal token authenticates (it is sent with every request).
    audit.auth = {"Authorization": f"Bearer {personal}"}


async def incoming_hooks(audit: Audit, pipeline: int) -> dict[str, dict[str, Any]]:
    """Create, read, list, update and rotate one hook per signature scheme."""
    kinds = {
        "github": {"secret_header_name": "x-hub-signature-256"},
        "gitlab": {"secret_header_name": "x-gitlab-token"},
        "standard": {"secret_header_name": "webhook-signature"},
        "custom": {"secret_header_name": "x-canary-digest", "secret_algorithm": "sha512"},
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


def known_signatures(audit: Audit, hook: dict[str, Any], message: bytes, algorithm: str) -> None:
    for secret in hook["secrets"]:
        key = (
            base64.b64decode(secret.removeprefix("whsec_"))
            if secret.startswith("whsec_")
            else secret.encode()
        )
        audit.signatures |= hmac_forms(key, message, algorithm)


async def ingest(audit: Audit, hooks: dict[str, dict[str, Any]]) -> None:
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
    known_signatures(audit, github, BODY, "sha256")
    for secret in github["secrets"]:  # the previous secret passes during its grace period
        good = hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()
        await send(github, 202, {"X-Hub-Signature-256": f"sha256={good}"})
    wrong = hmac.new(WRONG_KEY, BODY, hashlib.sha256)
    await send(github, 401, {"X-Hub-Signature-256": f"sha256={wrong.hexdigest()}"})
    await send(github, 401, {"X-Hub-Signature-256": base64.b64encode(wrong.digest()).decode()})
    await send(github, 401, {})
    known_signatures(audit, github, BODY, "sha1")
    sha1 = hmac.new(github["secrets"][-1].encode(), BODY, hashlib.sha1).hexdigest()
    await send(github, 401, {"X-Hub-Signature-256": f"sha1={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": f"t=1,v1={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": f"md5={sha1}"})
    await send(github, 401, {"X-Hub-Signature-256": sha1[:-1] + "!"})
    form = b"payload=" + urllib.parse.quote_plus(BODY.decode()).encode()
    known_signatures(audit, github, form, "sha256")
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
    known_signatures(audit, custom, BODY, "sha512")
    good_512 = hmac.new(custom["secrets"][0].encode(), BODY, hashlib.sha512).digest()
    await send(custom, 202, {"X-Canary-Digest": base64.b64encode(good_512).decode()})
    await send(custom, 401, {"X-Canary-Digest": hmac.new(WRONG_KEY, BODY, "sha512").hexdigest()})

    standard = hooks["standard"]
    key = base64.b64decode(standard["secrets"][0].removeprefix("whsec_"))
    for stamp, expect in ((int(time.time()), 202), (int(time.time()) - 3600, 401)):
        message_id = f"msg_{uuid.uuid4().hex}"
        signed = f"{message_id}.{stamp}.".encode() + BODY
        known_signatures(audit, standard, signed, "sha256")
        good_sw = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        headers = {"webhook-id": message_id, "webhook-timestamp": str(stamp)}
        await send(standard, expect, {**headers, "webhook-signature": f"v1,{good_sw}"})
    message_id = f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time()))
    signed = f"{message_id}.{stamp}.".encode() + BODY
    known_signatures(audit, standard, signed, "sha256")
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


async def history(audit: Audit, hooks: dict[str, dict[str, Any]]) -> None:
    """Every recorded request, listed and read one by one (headers included); one replayed."""
    for hook in hooks.values():
        listed = await audit.call("GET", f"/hooks/incoming/{hook['id']}/requests", 200)
        for item in listed.json():
            await audit.call("GET", f"/hook-requests/{item['id']}", 200)
    accepted = await audit.call(
        "GET", f"/hooks/incoming/{hooks['github']['id']}/requests?outcome=accepted", 200
    )
    await audit.call("POST", f"/hook-requests/{accepted.json()[0]['id']}/replay", 202)


async def malformed_requests(port: int, hooks: dict[str, dict[str, Any]]) -> None:
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
