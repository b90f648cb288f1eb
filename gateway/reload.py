"""SIGHUP: re-read ``config.toml`` and apply what can change while running.

:meth:`ConfigReloader.reload` reads and validates the file with :func:`load_config`. A bad
file changes nothing: the result carries every problem and the last good config stays in
force. Otherwise each changed key is either *live* (:data:`LIVE_KEYS`: applied now) or needs a
restart (listen addresses, worker count, the database ... and any key not listed as live, so a
new setting is never half-applied by accident). The config in force afterwards is the old one
with the live changes only, so a pending restart-only change keeps being reported. The key file
(``[security] key_file``) is read again too: an edited file counts as a change of
``security.key_file``, so keys can be rotated through a mounted file without a restart.

:class:`ConfigHolder` is the mutable home of the frozen :class:`Config`: readers take
``holder.current`` (one attribute access); components that derive state from the config (the
hook cache, the batcher, limiters, the client-address resolver, logging) subscribe with
:meth:`ConfigHolder.on_reload` and rebuild it in their callback, keeping their hot path free of
any lookup at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import appkeys, sighup
from gateway.config import Config, ConfigError, env_name, load_config, read_toml, resolve_path
from gateway.logs import get_logger

log = get_logger(__name__)

CONFIG_HOLDER = "config_holder"  # key in app[appkeys.SERVICES]

# Keys a running gateway applies on reload; every other key needs a restart.
LIVE_KEYS: frozenset[str] = frozenset(
    {
        "log.level",
        "log.format",
        "hooks.secret_grace_period",
        "hooks.timestamp_tolerance",
        "hooks.store_bodies",
        "hooks.cache_ttl",
        "batch.max_size",
        "batch.max_wait_ms",
        "batch.max_queue",
        "batch.retry_after",
        "limits.default_rate_per_second",
        "limits.default_burst",
        "auth.access_token_ttl",
        "auth.refresh_token_ttl",
        "auth.password_min_length",
        "auth.login_failure_window",
        "auth.login_failures_per_address",
        "auth.login_failures_per_account",
        "auth.max_personal_tokens",
        "server.max_body_bytes",
        "server.trusted_proxies",
        "server.access_log",
        "server.body_timeout",
        "server.public_url",
        "outgoing.allow_private_targets",
        "outgoing.timeout",
        "outgoing.dns_timeout",
        "outgoing.retry_schedule",
        "outgoing.retry_jitter",
        "outgoing.retry_after_max",
        "outgoing.disable_after_failures",
        "outgoing.poll_interval",
        "outgoing.response_excerpt_bytes",
        "security.secret_keys",
        "security.key_file",
    }
)

ReloadCallback = Callable[[Config, Config, frozenset[str]], None]


def changed_keys(old: Config, new: Config) -> list[str]:
    """``section.key`` names whose values differ, in declaration order."""
    changed = []
    for section in fields(Config):
        if section.name == "source":
            continue
        before, after = getattr(old, section.name), getattr(new, section.name)
        if before == after:
            continue
        for item in fields(before):
            if getattr(before, item.name) != getattr(after, item.name):
                changed.append(f"{section.name}.{item.name}")
    return changed


def with_changes(base: Config, source: Config, keys: set[str] | frozenset[str]) -> Config:
    """``base`` with the values of ``keys`` taken from ``source`` (and its ``source`` path)."""
    sections: dict[str, Any] = {}
    for section in fields(Config):
        if section.name == "source":
            continue
        prefix = section.name + "."
        picked = {
            k[len(prefix) :]: getattr(getattr(source, section.name), k[len(prefix) :])
            for k in keys
            if k.startswith(prefix)
        }
        if picked:
            sections[section.name] = replace(getattr(base, section.name), **picked)
    return replace(base, **sections, source=source.source)


def key_file_digest(config: Config) -> str | None:
    """SHA-256 of the key file's content as ``config`` names it (None: no key file, or it
    cannot be read), so a reload notices an edited key file whose path stayed the same."""
    key_file = config.security.key_file
    if not key_file.strip():
        return None
    try:
        return hashlib.sha256(Path(key_file).expanduser().read_bytes()).hexdigest()
    except OSError:
        return None


def touches(changed: frozenset[str], *sections: str) -> bool:
    """True when a key of any of ``sections`` (``"limits"``) or a full key changed."""
    return any(k in sections or k.partition(".")[0] in sections for k in changed)


def live_config(app: web.Application) -> Config:
    """The config in force for an application (the holder's, which SIGHUP updates); request
    handlers read live settings through this, since an application's own items are frozen."""
    holder: ConfigHolder | None = app[appkeys.SERVICES].get(CONFIG_HOLDER)
    return app[appkeys.CONFIG] if holder is None else holder.current


class ConfigHolder:
    """The config in force (``.current``) and the callbacks to run when it changes."""

    __slots__ = ("_callbacks", "_checks", "current")

    def __init__(self, config: Config) -> None:
        self.current = config
        self._callbacks: list[ReloadCallback] = []
        self._checks: list[ReloadCallback] = []

    def add_check(self, check: ReloadCallback) -> Callable[[], None]:
        """Run ``check(old, new, changed_keys)`` before a reload is applied; a ValueError it
        raises rejects the whole reload (nothing changes). For what only a service can verify,
        such as a key file that must exist. Returns a function that removes the check."""
        self._checks.append(check)
        return lambda: self._checks.remove(check) if check in self._checks else None

    def check(self, new: Config, changed: frozenset[str]) -> list[str]:
        """The problems the registered checks find with ``new`` (empty: it may be applied)."""
        problems = []
        for check in list(self._checks):
            try:
                check(self.current, new, changed)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def on_reload(self, callback: ReloadCallback) -> Callable[[], None]:
        """Call ``callback(old, new, changed_keys)`` after each applied reload; returns a
        function that unsubscribes. Callbacks run on the event loop: keep them short."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def apply(self, new: Config, changed: frozenset[str]) -> list[str]:
        """Make ``new`` current and run every callback; return the names of those that failed
        (each failure is logged; the others still run)."""
        old, self.current = self.current, new
        failed = []
        for callback in list(self._callbacks):
            try:
                callback(old, new, changed)
            except Exception as exc:
                name = getattr(callback, "__qualname__", repr(callback))
                failed.append(name)
                log.error("config_reload_callback_failed", callback=name, error=str(exc))
        return failed


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did. ``config`` is the config in force afterwards."""

    applied: list[str]
    needs_restart: list[str]
    error: str | None
    config: Config
    problems: list[str] = field(default_factory=list)
    failed_callbacks: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)  # edited, but an env variable wins
    unused: list[str] = field(default_factory=list)  # changed, but this process never reads them


class ConfigReloader:
    """Re-reads one config file into a :class:`ConfigHolder`; see the module docstring."""

    def __init__(
        self,
        path: str | Path | None,
        current: Config | ConfigHolder,
        env: Mapping[str, str] | None = None,
        uses: Callable[[str], bool] | None = None,
    ) -> None:
        """``path`` None resolves the file as at start-up ($GATEWAY_CONFIG, ./config.toml).
        ``uses("section.key")``: whether this process reads that key at all (default: every
        key); a changed key it does not read is reported as such, never as needing a restart."""
        self.path = path
        self._uses = uses
        self.holder = current if isinstance(current, ConfigHolder) else ConfigHolder(current)
        self.on_reload = self.holder.on_reload
        self._env = env
        self._file_only = self._read_file_only()
        self._key_file = key_file_digest(self.holder.current)

    @classmethod
    def for_config(
        cls, config: Config, uses: Callable[[str], bool] | None = None
    ) -> ConfigReloader:
        """A reloader of the file ``config`` was read from (if it existed at start-up)."""
        path = config.source if config.source and Path(config.source).is_file() else None
        return cls(path, config, uses=uses)

    @property
    def current(self) -> Config:
        """The config in force."""
        return self.holder.current

    def _read_file_only(self) -> dict[str, Any] | None:
        """The file's own values, as written, by ``section.key`` (None when it cannot be read).
        Not validated: a file meant to be completed by the environment (a DSN left to
        GATEWAY_DATABASE_DSN) need not be valid alone."""
        path = resolve_path(str(self.path) if self.path else None, self._env)
        try:
            raw = read_toml(path)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
        return {
            f"{section}.{key}": value
            for section, table in raw.items()
            if isinstance(table, dict)
            for key, value in table.items()
        }

    def _shadowed(self) -> list[str]:
        """Keys whose value changed in the file since the last read but which a ``GATEWAY_*``
        variable overrides: the edit has no effect (restart without the variable to use it)."""
        before, after = self._file_only, self._read_file_only()
        self._file_only = after
        if before is None or after is None:
            return []
        env = os.environ if self._env is None else self._env
        changed = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
        return [k for k in changed if env_name(*k.split(".", 1)) in env]

    def reload(self) -> ReloadResult:
        """Re-read the file; apply the live changes (see module docstring)."""
        old = self.holder.current
        try:
            new = load_config(self.path, self._env)
        except ConfigError as exc:
            return ReloadResult([], [], str(exc), old, problems=list(exc.problems))
        shadowed = self._shadowed()
        changed = changed_keys(old, new)
        key_file = key_file_digest(new)
        if key_file != self._key_file and "security.key_file" not in changed:
            changed.append("security.key_file")  # the same path, another content
        unused = [k for k in changed if self._uses is not None and not self._uses(k)]
        changed = [k for k in changed if k not in unused]
        live = [k for k in changed if k in LIVE_KEYS]
        restart = [k for k in changed if k not in LIVE_KEYS]
        failed: list[str] = []
        if live:
            effective = with_changes(old, new, set(live))
            problems = self.holder.check(effective, frozenset(live))
            if problems:  # the key file stays "changed": the next reload tries it again
                return ReloadResult([], [], "; ".join(problems), old, problems=problems)
            failed = self.holder.apply(effective, frozenset(live))
        else:
            effective = old
        self._key_file = key_file
        return ReloadResult(
            live,
            restart,
            None,
            effective,
            failed_callbacks=failed,
            shadowed=shadowed,
            unused=unused,
        )

    def reload_and_log(self) -> ReloadResult:
        """:meth:`reload`, then one log line per outcome (key names only, never values)."""
        result = self.reload()
        source = str(self.path or result.config.source)
        if result.error is not None:
            log.error(
                "config_reload_rejected",
                path=source,
                problems=result.problems,
                kept="the previous configuration stays in force",
            )
            return result
        if result.applied:
            log.info("config_reloaded", path=source, applied=result.applied)
        if result.needs_restart:
            log.warning("config_reload_needs_restart", path=source, keys=result.needs_restart)
        if result.shadowed:
            log.warning(
                "config_reload_shadowed_by_environment",
                path=source,
                keys=result.shadowed,
                variables=[env_name(*k.split(".", 1)) for k in result.shadowed],
                hint="these keys changed in the file, but a GATEWAY_* variable sets them",
            )
        if result.unused:
            log.info(
                "config_reload_not_used",
                path=source,
                keys=result.unused,
                hint="changed in the file, but this process does not read them: no restart of "
                "it applies them",
            )
        if not (result.applied or result.needs_restart or result.shadowed or result.unused):
            log.info("config_reload_unchanged", path=source)
        return result


def install_sighup(reloader: ConfigReloader, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Reload on SIGHUP (replaces any earlier SIGHUP handler of the loop), and once now if one
    arrived while the process was starting (see gateway.sighup)."""
    loop = loop or asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.reload_and_log)
    if sighup.take_pending():
        log.info("config_reload_requested_during_start_up")
        loop.call_soon(reloader.reload_and_log)


def logging_callback(old: Config, new: Config, changed: frozenset[str]) -> None:
    """Standard subscriber: re-configure logging when ``[log]`` changed."""
    if touches(changed, "log"):
        from gateway.logs import configure_logging

        configure_logging(new.log.level, new.log.format)
