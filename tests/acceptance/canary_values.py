"""The canaries of the secret-leak audit: distinctive values that must never be shown."""

from __future__ import annotations

import base64

import orjson

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
