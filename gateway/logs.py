"""structlog set-up: JSON or console output, event name first, request context via contextvars.

Module-level loggers (``log = get_logger(__name__)``) are lazy: they pick up the configuration
in force when they first log, so importing a module before ``configure_logging`` is harmless.
Records from the standard library (aiohttp, asyncpg ...) are rendered by the same processors, so
a JSON log stays one JSON object per line whoever wrote it.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextlib import suppress
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError

from gateway.security.sensitive_headers import is_sensitive_header

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "console")

# Keys whose values must never reach a log line, whatever a caller passes by mistake: a key
# (lower-cased, '-' read as '_', so header names count too) with one of these words in it,
# unless it ends with a suffix naming something about the secret rather than the secret itself
# (signature_header, key_id, previous_secret_expires_in, token_count, tokens_ended). Dicts are
# looked into the same way. tests/unit/test_log_fields.py checks that no log call passes a
# field that this rule would hide (a count or a flag logged as "[redacted]" says nothing).
# Header names are judged by the gateway's header rule as well (the history and outgoing hooks
# redact the same ones): the keys of a mapping logged as ``headers`` or ``*_headers``, and any
# key with a '-' in it (no Python keyword argument has one). Not every key: ``key`` as a word
# would take ``cache_key`` or ``key_file``, and ``session`` a ``session_timeout``.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwords",
        "secret",
        "secrets",
        "token",
        "tokens",
        "signature",
        "signatures",
        "authorization",
        "cookie",
        "cookies",
        "apikey",
        "dsn",
    }
)
_METADATA_SUFFIXES = (
    "_header",
    "_algorithm",
    "_id",
    "_ids",
    "_count",
    "_ended",  # tokens_ended, refresh_token_ended: how many or whether, never which
    "_expires_at",
    "_expires_in",
)
_WORD = re.compile(r"[a-z0-9]+")
# Where an aiohttp parser error starts quoting the request: its bytes (b'...' or b"..."), or
# its request line as text ("Bad status line '...'", aiohttp's pure-Python parser).
_QUOTED_REQUEST = re.compile(r"""\bb['"]|(?<=\bline )['"]""")
REDACTED = "[redacted]"

# One list object for the whole process, updated in place: loggers cached on first use keep a
# reference to it, so a later configure_logging() (tests, a SIGHUP reload) still changes their
# format. The level is checked by the first processor against _THRESHOLD for the same reason
# (a level baked into the cached logger's class could never change).
_PROCESSORS: list[Any] = []
_THRESHOLD = [logging.INFO]
_FORMAT = ["json"]
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (pytest swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows its name, for the ``logger`` field.

    Each line is written with its newline in one ``write`` (``print`` makes two): worker
    processes share one stderr pipe, and two lines must never be interleaved on one.

    A line that cannot be written is lost, never an error of the code that logs it (as with
    the stdlib's handlers): stderr can go away under a running process (the terminal an
    executor was started from closed: EIO; a reader of its pipe gone: EPIPE), and each log call
    raising then stopped whatever it was logging, a run's command and heartbeats included.
    """

    def __init__(self, name: str | None, file: TextIO | Any) -> None:
        super().__init__(file)
        self.name = name

    def msg(self, message: str) -> None:
        with self._lock:
            with suppress(OSError):
                self._file.write(message + "\n")
                self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _BoundLogger(structlog.make_filtering_bound_logger(logging.DEBUG)):  # type: ignore[misc]
    """structlog's bound logger whose ``debug`` returns at once while the level is above debug.

    Debug calls sit on hot paths (one per accepted webhook); without this each would build its
    event dict and run the processor chain until ``_drop_below_level`` drops it.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _THRESHOLD[0] > logging.DEBUG:
            return None
        return super().debug(event, *args, **kw)


def _drop_below_level(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    if _METHOD_LEVELS.get(method, logging.INFO) < _THRESHOLD[0]:
        raise structlog.DropEvent
    return event_dict


def _is_secret_key(key: str) -> bool:
    name = key.lower().replace("-", "_")
    if name.endswith(_METADATA_SUFFIXES):
        return False
    words = _WORD.findall(name)
    pairs = {a + b for a, b in itertools.pairwise(words)}  # api_key, x-api-key
    return not _SECRET_WORDS.isdisjoint(words) or "apikey" in pairs


def _is_secret_field(key: str, header_names: bool = False) -> bool:
    """Whether the value of ``key`` is redacted; ``header_names``: a key of a headers mapping."""
    if _is_secret_key(key):
        return True
    return (header_names or "-" in key) and is_sensitive_header(key)


def _names_headers(key: Any) -> bool:
    name = key.lower().replace("-", "_") if isinstance(key, str) else ""
    return name == "headers" or name.endswith("_headers")


def _redacted(value: Any, depth: int = 0, header_names: bool = False) -> Any:
    if depth < 3 and isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and _is_secret_field(k, header_names)
            else _redacted(v, depth + 1, header_names or _names_headers(k))
            for k, v in value.items()
        }
    return value


def _redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    for key in list(event_dict):
        if _is_secret_field(key):
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], Mapping):
            event_dict[key] = _redacted(event_dict[key], header_names=_names_headers(key))
    return event_dict


def _unparseable_request(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """aiohttp's line for a request it cannot parse, without the bytes it quotes.

    Its parser errors (an invalid character in a header value, a header line over 8 KiB ...)
    quote the offending line, and aiohttp logs them with the traceback: an ``Authorization``
    or signature header sent with a stray control character would be written out whole. Kept:
    the error's class and its reason, up to the quote."""
    exc_info = event_dict.get("exc_info")
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if not isinstance(exc, HttpProcessingError):
        return event_dict
    del event_dict["exc_info"]
    said, found, remote = str(event_dict.get("event")).rpartition(" from ")
    if found and said == "Error handling request":  # aiohttp's words, its args already in
        event_dict["remote"] = remote
    event_dict["event"] = "http_request_unparseable"
    # The client's fault, not the gateway's (aiohttp says error): scanners and broken clients
    # on a public port must not page whoever alerts on error lines.
    event_dict["level"] = "warning"
    event_dict["error_type"] = type(exc).__name__
    # An InvalidURLError's message is the request target itself (a query string with a token).
    said = "" if isinstance(exc, InvalidURLError) else str(exc.message)
    event_dict["reason"] = _QUOTED_REQUEST.split(said, 1)[0].strip(" :.\n") or None
    return event_dict


def _keeps_record(record: logging.LogRecord) -> bool:
    """The stdlib handler's filter: a request aiohttp cannot parse, logged by it at ERROR, is
    written as a warning (:func:`_unparseable_request`), so it is held back like one below
    the configured level (``[log] level = "error"``) rather than shown labelled a warning.
    (A formatter cannot drop a record: structlog's DropEvent there is a logging error.)"""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError) or logging.WARNING >= _THRESHOLD[0]


def _add_logger_name(logger: Any, _: str, event_dict: MutableMapping[str, Any]) -> Any:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _event_first(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    event = event_dict.pop("event", None)
    return {"event": event, **event_dict}


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog and stdlib logging (for libraries) to one format on stderr.

    Safe to call again (a reload): level, format and destination change for every logger,
    including those already used. ``stream`` defaults to whatever ``sys.stderr`` is when a line
    is written.
    """
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS}, format one of {FORMATS}")
    out = stream if stream is not None else _CurrentStderr()
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
        _unparseable_request,
    ]
    tail: list[Any]
    if fmt == "json":
        tail = [
            structlog.processors.format_exc_info,
            _event_first,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        # The console renderer formats exceptions itself (format_exc_info would only warn).
        # Plain tracebacks: rich's (used when it is installed) print local variables, which
        # may hold secrets.
        tail = [
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    _THRESHOLD[0] = numeric
    _FORMAT[0] = fmt
    _PROCESSORS[:] = [_drop_below_level, *shared, *tail]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=_BoundLogger,
        logger_factory=lambda *args: _NamedPrintLogger(args[0] if args else None, out),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(out)
    handler.addFilter(_keeps_record)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries are chatty at INFO; their warnings and errors are what an operator needs.
    root.setLevel(max(numeric, logging.WARNING))


def log_format() -> str:
    """The format the last configure_logging() chose (``json`` before any)."""
    return _FORMAT[0]


def get_logger(name: str | None = None) -> Any:
    """A lazy structlog logger; ``name`` becomes the ``logger`` field."""
    return structlog.get_logger(name) if name else structlog.get_logger()
