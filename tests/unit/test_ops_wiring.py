"""Issue 8 wiring in the pure parts: compiled hooks carry their limits and open sealed secrets,
only a stored value is written back sealed, the access log follows reloads."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.dispatcher.outbound import CompiledHook as OutgoingHook
from gateway.ingest.evaluation import CompiledHook, evaluate
from gateway.security.secret_box import SecretBox, StoredSecret
from gateway.server import AccessLog
from tests.unit.test_evaluation import CONFIG, PR_OPENED, SECRET, github_headers, make_row

BOX_A = SecretBox({"a": bytes(32)}, "a")
BOX_B = SecretBox({"b": bytes(range(32))}, "b")
SLOW_DEFAULT = replace(CONFIG, limits=replace(CONFIG.limits, default_rate_per_second=2.5))


def compiled(box: SecretBox = BOX_A, config: Any = CONFIG, **overrides: Any) -> CompiledHook:
    return CompiledHook.from_row(make_row(**overrides), config, box=box)


@pytest.mark.parametrize(
    ("settings", "config", "expected"),
    [
        ({}, CONFIG, (0.0, 0)),  # no default, no own limit: unlimited
        ({}, SLOW_DEFAULT, (2.5, 0)),  # the [limits] default
        ({"rate_limit": {"per_second": 0}}, SLOW_DEFAULT, (0.0, 0)),  # opted out
        ({"rate_limit": {"per_second": 5, "burst": 9}}, SLOW_DEFAULT, (5.0, 9)),
    ],
)
def test_the_rate_in_force_is_resolved_when_compiling(
    settings: dict[str, Any], config: Any, expected: tuple[float, int]
) -> None:
    hook = compiled(config=config, settings=settings)
    assert (hook.rate, hook.burst) == expected
    assert hook.allowlist is None and hook.definition_error is None


def test_an_allowlist_is_compiled_once() -> None:
    hook = compiled(settings={"allowed_ips": ["192.0.2.0/24", "::1"]})
    assert hook.allowlist is not None
    assert hook.allowlist.allows("192.0.2.9") and hook.allowlist.allows("::1")
    assert not hook.allowlist.allows("127.0.0.1") and not hook.allowlist.allows(None)


def test_stored_limits_that_do_not_validate_fail_closed() -> None:
    hook = compiled(settings={"allowed_ips": ["not a network"]})
    assert hook.definition_error is not None and "settings.allowed_ips.0" in hook.definition_error
    assert evaluate(hook, github_headers(PR_OPENED), PR_OPENED).status == 500


def test_sealed_secrets_are_opened_with_the_configured_box() -> None:
    hook = compiled(secret=BOX_A.encrypt(SECRET))
    assert evaluate(hook, github_headers(PR_OPENED), PR_OPENED).status == 202
    legacy = compiled(secret=SECRET)  # written before encryption was on
    assert evaluate(legacy, github_headers(PR_OPENED), PR_OPENED).status == 202


def test_a_secret_sealed_with_an_unknown_key_is_a_definition_error() -> None:
    hook = compiled(box=BOX_B, secret=BOX_A.encrypt(SECRET))
    assert hook.definition_error is not None and "'a'" in hook.definition_error
    assert SECRET not in hook.definition_error
    assert evaluate(hook, github_headers(PR_OPENED), PR_OPENED).status == 500


def test_only_a_value_read_back_from_storage_is_written_as_it_is() -> None:
    sealed = BOX_A.stored_form("whsec_abc")
    assert sealed.startswith("enc:v1:a:") and BOX_A.decrypt(sealed) == "whsec_abc"
    assert BOX_A.stored_form(StoredSecret(sealed)) == sealed
    # A legacy plaintext row written back is encrypted now.
    legacy = BOX_A.stored_form(StoredSecret("whsec_abc"))
    assert legacy.startswith("enc:v1:a:") and BOX_A.decrypt(legacy) == "whsec_abc"
    # A str is a new secret, whatever it looks like: encrypted again, so opening it gives the
    # text back, never what the sealed text holds.
    again = BOX_A.stored_form(sealed)
    assert again != sealed and BOX_A.decrypt(again) == sealed
    assert "whsec_abc" not in repr(StoredSecret("whsec_abc"))


def test_the_dispatcher_opens_sealed_secrets_or_refuses_to_compile() -> None:
    row = {
        "target_url": "https://ci.example/x",
        "trigger_when": {"events": ["run.failed"]},
        "settings": {},
        "requires_secret": True,
        "secret": BOX_A.encrypt("whsec_c2VjcmV0"),
    }
    assert OutgoingHook.from_row(row, BOX_A).secret == "whsec_c2VjcmV0"
    with pytest.raises(ValueError, match="not configured"):
        OutgoingHook.from_row(row, BOX_B)


def test_the_access_log_follows_the_config() -> None:
    before = AccessLog.active
    try:
        logger = AccessLog(None, "")  # type: ignore[arg-type]
        on = replace(CONFIG, server=replace(CONFIG.server, access_log=True))
        AccessLog.apply_config(CONFIG, on, frozenset({"server.access_log"}))
        assert logger.enabled
        AccessLog.apply_config(on, CONFIG, frozenset({"server.access_log"}))
        assert not logger.enabled
    finally:
        AccessLog.active = before
