"""SIGHUP config reload: live keys applied, restart-only keys reported, bad files rejected."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, build_config, load_config
from gateway.logs import configure_logging
from gateway.reload import (
    LIVE_KEYS,
    ConfigHolder,
    ConfigReloader,
    changed_keys,
    install_sighup,
    touches,
    with_changes,
)

BASE = """
[server]
port = 8080
trusted_proxies = []
[hooks]
cache_ttl = 60.0
[limits]
default_rate_per_second = 0
"""


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    write(path, BASE)
    return path


def reloader(path: Path) -> ConfigReloader:
    return ConfigReloader(path, load_config(path, env={}), env={})


def test_good_edit_is_applied_and_subscribers_are_told(config_file: Path) -> None:
    r = reloader(config_file)
    calls: list[tuple[Config, Config, frozenset[str]]] = []
    r.on_reload(lambda old, new, changed: calls.append((old, new, changed)))
    write(
        config_file,
        BASE.replace("cache_ttl = 60.0", "cache_ttl = 5.0")
        .replace("default_rate_per_second = 0", "default_rate_per_second = 20")
        .replace("trusted_proxies = []", 'trusted_proxies = ["10.0.0.0/8"]'),
    )
    result = r.reload()
    assert result.error is None and result.needs_restart == []
    assert result.applied == [
        "server.trusted_proxies",
        "hooks.cache_ttl",
        "limits.default_rate_per_second",
    ]
    assert r.current is result.config and r.holder.current is result.config
    assert r.current.hooks.cache_ttl == 5.0 and r.current.limits.default_rate_per_second == 20
    assert r.current.server.trusted_proxies == ("10.0.0.0/8",)
    ((old, new, changed),) = calls
    assert old.hooks.cache_ttl == 60.0 and new is r.current
    assert changed == frozenset(result.applied)


def test_restart_only_edit_is_reported_and_not_applied(config_file: Path) -> None:
    r = reloader(config_file)
    calls: list[Any] = []
    r.on_reload(lambda *args: calls.append(args))
    before = r.current
    write(config_file, BASE.replace("port = 8080", "port = 9090\nworkers = 4"))
    result = r.reload()
    assert result.error is None and result.applied == []
    assert result.needs_restart == ["server.port", "server.workers"]
    assert r.current is before and r.current.server.port == 8080 and calls == []
    # Still pending on the next reload: the running server still listens on 8080.
    assert r.reload().needs_restart == ["server.port", "server.workers"]


def test_a_key_the_process_does_not_read_is_reported_as_such(config_file: Path) -> None:
    """A process that reads only some keys (gateway dispatch) is not told to restart for the
    others, nor said to have applied them."""
    uses = lambda k: k != "server.port" and not k.startswith("hooks.")  # noqa: E731
    r = ConfigReloader(config_file, load_config(config_file, env={}), env={}, uses=uses)
    edited = "[server]\nport = 9090\nworkers = 4\n[hooks]\ncache_ttl = 5.0\n[limits]\n"
    write(config_file, edited + "default_rate_per_second = 20\n")
    result = r.reload()
    assert result.error is None
    assert result.applied == ["limits.default_rate_per_second"]
    assert result.needs_restart == ["server.workers"]
    assert result.unused == ["server.port", "hooks.cache_ttl"]
    assert r.current.server.port == 8080 and r.current.hooks.cache_ttl == 60.0


def test_a_file_saved_with_a_byte_order_mark_reloads(config_file: Path) -> None:
    """An edit made with an editor that writes a UTF-8 BOM (Windows Notepad)."""
    r = reloader(config_file)
    config_file.write_bytes(
        ("\ufeff" + BASE.replace("cache_ttl = 60.0", "cache_ttl = 5.0")).encode()
    )
    result = r.reload()
    assert result.error is None and result.applied == ["hooks.cache_ttl"]


def test_an_edit_that_an_environment_variable_overrides_is_reported(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator edits the file and reloads; GATEWAY_HOOKS_CACHE_TTL still wins: the log
    must say why nothing changed, instead of only "unchanged"."""
    env = {"GATEWAY_HOOKS_CACHE_TTL": "30"}
    r = ConfigReloader(config_file, load_config(config_file, env=env), env=env)
    write(
        config_file,
        BASE.replace("cache_ttl = 60.0", "cache_ttl = 5.0").replace(
            "default_rate_per_second = 0", "default_rate_per_second = 20"
        ),
    )
    configure_logging("info", "json")
    capsys.readouterr()
    result = r.reload_and_log()
    assert result.applied == ["limits.default_rate_per_second"]
    assert result.shadowed == ["hooks.cache_ttl"] and r.current.hooks.cache_ttl == 30.0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [shadowed] = [
        line for line in lines if line["event"] == "config_reload_shadowed_by_environment"
    ]
    assert shadowed["keys"] == ["hooks.cache_ttl"]
    assert shadowed["variables"] == ["GATEWAY_HOOKS_CACHE_TTL"]
    # Names only, never values (a shadowed key may be a secret).
    assert set(shadowed) == {
        "event",
        "path",
        "keys",
        "variables",
        "hint",
        "level",
        "logger",
        "timestamp",
    }
    # Said once per edit: the next reload of the same file has nothing new to report.
    assert r.reload().shadowed == []
    # An edit of only that key: said so, not "unchanged" as well.
    write(config_file, config_file.read_text().replace("cache_ttl = 5.0", "cache_ttl = 7.0"))
    capsys.readouterr()
    r.reload_and_log()
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["config_reload_shadowed_by_environment"]


def test_a_shadowed_edit_is_reported_in_a_file_the_environment_completes(
    config_file: Path,
) -> None:
    """The load-balancer instance file is not valid alone (embedded = false, its DSN comes from
    GATEWAY_DATABASE_DSN): the report must not depend on that."""
    text = BASE + "[database]\nembedded = false\n"
    write(config_file, text)
    env = {"GATEWAY_DATABASE_DSN": "postgresql://db/app", "GATEWAY_HOOKS_CACHE_TTL": "30"}
    r = ConfigReloader(config_file, load_config(config_file, env=env), env=env)
    write(config_file, text.replace("cache_ttl = 60.0", "cache_ttl = 5.0"))
    assert r.reload().shadowed == ["hooks.cache_ttl"]


def test_mixed_edit_applies_only_the_live_part(config_file: Path) -> None:
    r = reloader(config_file)
    write(
        config_file,
        BASE.replace("port = 8080", "port = 9090").replace("cache_ttl = 60.0", "cache_ttl = 1.5")
        + '\n[database]\ndsn = "postgresql://u:p@db:5432/x"\n',
    )
    result = r.reload()
    assert result.applied == ["hooks.cache_ttl"]
    assert result.needs_restart == ["server.port", "database.dsn"]
    assert r.current.hooks.cache_ttl == 1.5
    assert r.current.server.port == 8080 and r.current.database.dsn == ""
    assert "p@db" not in json.dumps(result.needs_restart)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server\nport = 1", "not valid TOML"),
        ("[hooks]\ncache_ttl = -1", "hooks.cache_ttl = -1 is invalid"),
        ("[server]\nport = 'x'\n[log]\nlevel = 'loud'", "log.level = 'loud' is invalid"),
        ("[nope]\n", "unknown section [nope]"),
    ],
)
def test_broken_file_is_rejected_and_the_old_config_kept(
    config_file: Path, text: str, problem: str
) -> None:
    r = reloader(config_file)
    calls: list[Any] = []
    r.on_reload(lambda *args: calls.append(args))
    before = r.current
    write(config_file, text)
    result = r.reload()
    assert result.error is not None and any(problem in p for p in result.problems)
    assert result.applied == [] and result.needs_restart == []
    assert result.config is before and r.current is before and calls == []


def test_every_problem_is_reported(config_file: Path) -> None:
    r = reloader(config_file)
    write(config_file, "[server]\nport = 'x'\n[log]\nlevel = 'loud'\n")
    assert len(r.reload().problems) == 2


def test_deleted_file_is_rejected(config_file: Path) -> None:
    r = reloader(config_file)
    config_file.unlink()
    result = r.reload()
    assert result.error is not None and "file not found" in result.error


def test_unchanged_file(config_file: Path) -> None:
    result = reloader(config_file).reload()
    assert (result.applied, result.needs_restart, result.error) == ([], [], None)


def test_failing_callback_does_not_stop_the_others(config_file: Path) -> None:
    r = reloader(config_file)
    seen: list[str] = []

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    r.on_reload(broken)
    unsubscribe = r.on_reload(lambda *_: seen.append("second"))
    write(config_file, BASE.replace("cache_ttl = 60.0", "cache_ttl = 2.0"))
    result = r.reload()
    assert seen == ["second"] and result.failed_callbacks == [broken.__qualname__]
    assert r.current.hooks.cache_ttl == 2.0
    unsubscribe()
    unsubscribe()  # idempotent
    write(config_file, BASE.replace("cache_ttl = 60.0", "cache_ttl = 3.0"))
    r.reload()
    assert seen == ["second"]


def test_secret_keys_change_is_live_and_never_shown(config_file: Path) -> None:
    from gateway.security.secret_keys import new_key_line

    r = reloader(config_file)
    line = new_key_line("k1")
    write(config_file, BASE + f'\n[security]\nsecret_keys = ["{line}"]\n')
    result = r.reload()
    assert result.applied == ["security.secret_keys"]
    assert r.current.security.secret_keys == (line,)
    assert line.split(":")[1] not in repr(result)


def test_changed_keys_and_with_changes_helpers() -> None:
    old = build_config({}, {})
    new = build_config({}, {"GATEWAY_BATCH_MAX_SIZE": "7", "GATEWAY_SERVER_PORT": "1234"})
    assert changed_keys(old, new) == ["server.port", "batch.max_size"]
    merged = with_changes(old, new, {"batch.max_size"})
    assert merged.batch.max_size == 7 and merged.server.port == old.server.port
    assert touches(frozenset({"batch.max_size"}), "batch")
    assert touches(frozenset({"batch.max_size"}), "batch.max_size")
    assert not touches(frozenset({"batch.max_size"}), "limits", "batch.max_queue")


def test_live_keys_name_real_settings() -> None:
    from dataclasses import fields

    config = Config()
    real = {
        f"{s.name}.{k.name}"
        for s in fields(Config)
        if s.name != "source"
        for k in fields(getattr(config, s.name))
    }
    assert LIVE_KEYS <= real, LIVE_KEYS - real
    for restart_only in ("server.host", "server.port", "server.workers", "database.dsn"):
        assert restart_only not in LIVE_KEYS


def test_the_dispatchers_limits_need_a_restart(config_file: Path) -> None:
    # Like concurrency and per_target_concurrency: a running dispatcher keeps its counts of
    # requests in flight under the limits it started with.
    r = reloader(config_file)
    write(config_file, BASE + "[outgoing]\nper_environment_concurrency = 2\n")
    result = r.reload()
    assert result.error is None and result.applied == []
    assert result.needs_restart == ["outgoing.per_environment_concurrency"]
    assert r.current.outgoing.per_environment_concurrency == 32


def test_for_config_uses_the_source_file_only_when_it_exists(config_file: Path) -> None:
    config = load_config(config_file, env={})
    assert ConfigReloader.for_config(config).path == str(config_file)
    assert ConfigReloader.for_config(Config(source="/nonexistent/config.toml")).path is None


def test_a_failing_check_rejects_the_whole_reload(config_file: Path) -> None:
    holder = ConfigHolder(load_config(config_file, env={}))
    reloader = ConfigReloader(config_file, holder, env={})
    applied: list[frozenset[str]] = []
    holder.on_reload(lambda old, new, changed: applied.append(changed))

    def refuse_level_debug(old: Config, new: Config, changed: frozenset[str]) -> None:
        if new.log.level == "debug":
            raise ValueError("log.level: debug is refused by this check")

    remove = holder.add_check(refuse_level_debug)
    config_file.write_text(config_file.read_text() + '\n[log]\nlevel = "debug"\n')
    result = reloader.reload()
    assert result.error == "log.level: debug is refused by this check"
    assert result.applied == [] and applied == [] and holder.current.log.level == "info"

    remove()
    assert reloader.reload().applied == ["log.level"] and holder.current.log.level == "debug"
    assert applied == [frozenset({"log.level"})]


async def test_sighup_reloads_and_logs_rejection(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    capsys.readouterr()
    r = reloader(config_file)
    applied = asyncio.Event()
    r.on_reload(lambda *_: applied.set())
    loop = asyncio.get_running_loop()
    install_sighup(r, loop)
    try:
        write(config_file, BASE.replace("cache_ttl = 60.0", "cache_ttl = 9.0"))
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(applied.wait(), 10)
        assert r.current.hooks.cache_ttl == 9.0

        write(config_file, "[hooks]\ncache_ttl = 'soon'\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.strip()]
            rejected = [x for x in lines if x["event"] == "config_reload_rejected"]
            if rejected:
                break
        assert rejected and rejected[0]["level"] == "error"
        assert any("hooks.cache_ttl" in p for p in rejected[0]["problems"])
        assert r.current.hooks.cache_ttl == 9.0  # the last good config stays
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
