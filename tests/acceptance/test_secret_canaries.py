"""The secret-leak audit, end to end: a real ``gateway serve`` at debug level is given
distinctive secrets (canaries) and driven through every path that handles one; nothing it shows
afterwards — a log line, its standard output, an HTTP answer's headers or body, a command's
output — may hold a password, a token, a key, a hook secret or a computed signature, except the
one answer that issues it (a hook secret in its create or rotate answer, a token in the login,
refresh or token-create answer)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from tests.acceptance.canary_helpers import Audit, EchoingReceiver
from tests.acceptance.canary_incoming import (
    accounts,
    history,
    incoming_hooks,
    ingest,
    malformed_requests,
)
from tests.acceptance.canary_outgoing import outgoing_hooks, runs, wait_for_deliveries
from tests.acceptance.canary_values import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    BAD_BEARER,
    BOX_KEY,
    BOX_KEY_BYTES,
    DSN_PASSWORD,
    FAKE_SECRET,
    MALFORMED_TOKEN,
    OUT_API_KEY,
    OUT_AUTHORIZATION,
    OUT_TOKEN_HEADER,
    RELOAD_DSN_PASSWORD,
    SEALED_LOOKALIKE,
    SHORT_PASSWORD,
    URL_PATH_TOKEN,
    URL_QUERY_KEY,
    USER_NEW_PASSWORD,
    USER_PASSWORD,
    WRONG_GITLAB_TOKEN,
    WRONG_PASSWORD,
)
from tests.acceptance.process_helpers import GatewayProcess, free_port, run_gateway, write_config


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
                await accounts(audit)
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
                outgoing = await outgoing_hooks(audit, pipeline, str(target.make_url("/notify")))
                hooks = await incoming_hooks(audit, pipeline)
                await ingest(audit, hooks)
                await history(audit, hooks)
                await malformed_requests(port, hooks)
                await runs(audit, pipeline)
                await wait_for_deliveries(audit, outgoing, receiver)
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
