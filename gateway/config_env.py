"""Environment overrides of the configuration: ``GATEWAY_<SECTION>_<KEY>`` names, their values
read from text, and typos in their names reported like unknown keys in the file.

:mod:`gateway.config` owns the sections; the functions here take them as a mapping of section
name to dataclass, so this module imports nothing of it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, get_args, get_origin

ENV_PREFIX = "GATEWAY_"
ENV_CONFIG_PATH = "GATEWAY_CONFIG"

# GATEWAY_* variables that are not configuration overrides.
OTHER_ENV_NAMES = frozenset({ENV_CONFIG_PATH, "GATEWAY_ADMIN_EMAIL", "GATEWAY_ADMIN_PASSWORD"})
# Overrides whose empty value would silently select a fallback meant for a laptop (a private
# embedded PostgreSQL, a freshly generated key file) rather than the shared one meant: set but
# blank, they are refused (a secret mount that failed, a forgotten value).
_NOT_BLANK_ENV = {
    "GATEWAY_DATABASE_DSN": "the embedded PostgreSQL would start instead of the shared database",
    "GATEWAY_SECURITY_SECRET_KEYS": "a generated key file would be used instead of your keys",
}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``: GATEWAY_SECTION_KEY."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def override_keys(sections: Mapping[str, type]) -> dict[str, str]:
    """Each override's name -> the ``section.key`` it sets, for ``sections`` (name ->
    dataclass)."""
    return {
        env_name(section, f.name): f"{section}.{f.name}"
        for section, cls in sections.items()
        for f in fields(cls)
    }


# Set by others, not typos: a Kubernetes Service named "gateway" gives every pod in its
# namespace GATEWAY_SERVICE_HOST, GATEWAY_PORT, GATEWAY_PORT_8080_TCP_ADDR ...; Docker links
# add GATEWAY_NAME and GATEWAY_ENV_*.
_NOT_OURS = re.compile(r"GATEWAY_(SERVICE_.*|PORT|PORT_.*|NAME|ENV_.*)")


def check_env_names(
    sections: Mapping[str, type], env: Mapping[str, str], problems: list[str], refused: set[str]
) -> None:
    """Append to ``problems`` each GATEWAY_ variable that looks meant as an override but is
    none, and each override set blank that must not be (its key goes to ``refused``)."""
    # A typo in an override must not be ignored silently any more than one in the file: in
    # the key (GATEWAY_SERVER_PROT), the section (GATEWAY_DATABSE_DSN) or the case. Other
    # GATEWAY_ variables (a Kubernetes Service named gateway, another program's) are not ours.
    keys = override_keys(sections)
    overrides = frozenset(keys)
    for env_key in sorted(env):
        if not env_key.upper().startswith(ENV_PREFIX):
            continue
        if env_key in overrides or env_key in OTHER_ENV_NAMES:
            if env_key in _NOT_BLANK_ENV and not env[env_key].strip():
                problems.append(
                    f"{env_key} is set but empty: {_NOT_BLANK_ENV[env_key]}; give it a value, "
                    "or unset it to use the fallback on purpose"
                )
                refused.add(keys[env_key])
            continue
        if _NOT_OURS.fullmatch(env_key):
            continue
        head = env_key[len(ENV_PREFIX) :].split("_", 1)[0].upper()
        names = [s.upper() for s in sections]
        if head in names:  # a known section: the key is wrong
            prefix = f"{ENV_PREFIX}{head}_"
            candidates = sorted(o for o in overrides if o.startswith(prefix))
            allowed = f" (allowed: {', '.join(candidates)})"
        elif env_key.upper() in overrides or difflib.get_close_matches(head, names, 1, 0.8):
            candidates, allowed = sorted(overrides), ""  # the wrong case, or a misspelt section
        elif difflib.get_close_matches(env_key, sorted(OTHER_ENV_NAMES), 1, 0.85):
            candidates, allowed = sorted(OTHER_ENV_NAMES), ""
        else:
            continue  # not ours
        close = difflib.get_close_matches(env_key.upper(), candidates, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"unknown environment override {env_key}{hint}{allowed}")


def from_env(text: str, kind: Any) -> Any:
    """An override's text as the key's type where it reads as one; else the text, which the
    value check then refuses naming the variable."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return text
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return text
    if get_origin(kind) is tuple:
        # Comma- or newline-separated, '#' lines skipped: GATEWAY_SECURITY_SECRET_KEYS="$(cat
        # key-file)" takes the key file as written (its header comment holds a comma).
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        parts = [part.strip() for line in lines for part in line.split(",") if part.strip()]
        if get_args(kind)[0] is float:  # e.g. GATEWAY_OUTGOING_RETRY_SCHEDULE=1,5,30
            return [from_env(part, float) for part in parts]
        return parts
    return text
