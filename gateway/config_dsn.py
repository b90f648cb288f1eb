"""Checks of ``[database] dsn`` (gateway.config): a URL the driver (asyncpg) reads as the
operator meant, with parameters it takes. No message ever holds the DSN: a password can sit
anywhere in it."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit


def check_dsn(dsn: str, problems: list[str]) -> None:
    """Append to ``problems`` what is wrong with ``dsn`` as the driver would read it."""
    # The DSN itself never appears in a message: a password can sit anywhere in it (URL
    # userinfo with '/', '#' or '?' in it, a password= parameter, a key/value DSN).
    allowed = "must be a URL like postgresql://user:password@host:5432/database"
    scheme, sep, _ = dsn.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        plain = sep and re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme)
        named = f" (the scheme is {scheme!r})" if plain else ""
        problems.append(f"database.dsn is invalid{named}: {allowed}")
        return
    try:
        parts = urlsplit(dsn)
        if parts.netloc.count("@") > 1:  # the driver splits at the first '@', URLs at the last
            problems.append(
                "database.dsn is invalid (an '@' in the user name or password must be "
                f"percent-encoded as %40): {allowed}"
            )
            return
        # Several hosts (h1:5432,h2:5432, with target_session_attrs): each port on its own.
        userinfo, at, hosts = parts.netloc.rpartition("@")
        for host in hosts.split(","):
            urlsplit(f"{scheme}://{userinfo}{at}{host}/").port  # noqa: B018 - the check
    except ValueError:
        userinfo = dsn.partition("://")[2].rpartition("@")[0]  # user:password, if any
        encode = (  # each of these ends the user info, or makes an IPv6 host, for a URL
            "; a '/', '#', '?', '[' or ']' in the password must be percent-encoded"
            if any(c in userinfo for c in "/#?[]")
            else ""
        )
        problems.append(
            f"database.dsn is invalid (a port is not a number from 0 to 65535{encode}): {allowed}"
        )
        return
    query = parse_qsl(parts.query)
    for name, value in query:
        choices = DSN_CHOICES.get(name)
        if name == "sslmode":  # the driver takes verify_full for verify-full too
            value = value.replace("_", "-")
        if choices is not None and value not in choices:  # the value is not echoed: a typo
            problems.append(  # like sslmode=require?password=... would hold the password
                f"database.dsn parameter {name!r} is invalid: must be one of {', '.join(choices)}"
            )
    for name in sorted({key for key, _ in query} & LIBPQ_ONLY_PARAMETERS.keys()):
        instead = LIBPQ_ONLY_PARAMETERS[name]
        problems.append(
            f"database.dsn parameter {name!r} is invalid: a libpq option the driver (asyncpg) "
            f"does not take; it would reach the server as an unknown setting{instead}"
        )


# DSN parameters with a fixed set of values (asyncpg's; tests/unit pins them against it). The
# driver would refuse any other only when connecting, with a message of its own.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # weakest first
DSN_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": SSL_MODES,
    "target_session_attrs": (
        "any",
        "primary",
        "standby",
        "read-write",
        "read-only",
        "prefer-standby",
    ),
    "sslnegotiation": ("postgres", "direct"),
}

# libpq connection options asyncpg does not take: it passes unknown DSN parameters to the
# server as settings, which refuses the connection ("unrecognized configuration parameter").
LIBPQ_ONLY_PARAMETERS: dict[str, str] = {
    "connect_timeout": " (use database.connect_timeout)",
    **dict.fromkeys(
        (
            "keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout "
            "hostaddr channel_binding gssencmode gssdelegation sslcompression sslsni "
            "sslcertmode requirepeer require_auth fallback_application_name "
            "load_balance_hosts replication"
        ).split(),
        "",
    ),
}
