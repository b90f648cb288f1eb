"""Which HTTP headers carry a credential or a signature: the one rule for the whole gateway.

A header is sensitive when its lower-cased name

- contains one of ``token``, ``secret``, ``signature``, ``password``/``passwd``, ``auth``,
  ``credential``, ``hmac``, ``session``, ``cookie`` or ``api-key``/``api_key``/``apikey``
  anywhere (``Authorization``, ``Proxy-Authorization``, ``Set-Cookie``, ``X-Hub-Signature-256``,
  ``X-Gitea-Signature``, ``svix-signature``, ``X-Gitlab-Token``, ``X-Auth-Token``,
  ``X-Shopify-Hmac-Sha256``), or
- has ``key`` as a whole word, words being split at anything but letters and digits
  (``X-Functions-Key``, ``Ocp-Apim-Subscription-Key``, ``X-Api-Key``, ``Key``; not
  ``Keep-Alive``, ``X-Keyboard``, ``Monkey``), except right after ``idempotency`` or
  ``event``: ``Idempotency-Key`` is a delivery id (GitLab's, shown as the request's
  ``delivery_id`` anyway) and Bitbucket's ``X-Event-Key`` names the event (``repo:push``).
  Neither is a credential, and operators need to see both.

The parts match anywhere, as the outgoing rule did before this module took its place: every
name that rule called sensitive still is, so an outgoing header value it sealed is still
opened. Outgoing hooks use it for every decision about their request headers: masked in
responses (gateway.management.outgoing_hooks), sealed at rest, redacted in the attempt
history and scrubbed from the target's answer (gateway.dispatcher.signing). The incoming
request history redacts with it when a request is recorded (gateway.ingest.trigger, through
:func:`recorded_name`), and the history API again when it shows a recorded request or attempt
(gateway.management.history and outgoing_history: rows recorded under a narrower rule). The
log redactor judges a logged headers mapping by it too (gateway.logs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

REDACTED = "[redacted]"

_PARTS = re.compile(
    r"token|secret|signature|passw(?:or)?d|auth|credential|hmac|session|cookie|api[-_]?key"
)
_WORD = re.compile(r"[a-z0-9]+")
# A ``key`` right after one of these words is not a credential (see the module docstring).
_ORDINARY_KEYS = frozenset({"idempotency", "event"})
# recorded_name's answers by header name as sent. Bounded: the names are chosen by whoever
# sends a request; emptied when full, so a flood of new names costs a sender as much as the
# gateway, and the names of real senders come back with their next request.
CACHE_SIZE = 1024
_recorded: dict[str, tuple[str, bool]] = {}


def is_sensitive_header(name: str) -> bool:
    """True when the value of header ``name`` (any case) is a credential or a signature: it
    must not be stored in clear, shown or logged."""
    lowered = name.lower()
    if _PARTS.search(lowered) is not None:
        return True
    words = _WORD.findall(lowered)
    return any(
        word == "key" and (i == 0 or words[i - 1] not in _ORDINARY_KEYS)
        for i, word in enumerate(words)
    )


def recorded_name(name: str) -> tuple[str, bool]:
    """(``name`` lower-cased, :func:`is_sensitive_header` of it): what the ingest path needs
    of every header it records, looked up once per name (a dict lookup in place of the
    ``lower()`` it had to do anyway; the rule's regular expression would cost a request with
    15 headers about a microsecond)."""
    known = _recorded.get(name)
    if known is None:
        known = (name.lower(), is_sensitive_header(name))
        if len(_recorded) >= CACHE_SIZE:
            _recorded.clear()
        _recorded[name] = known
    return known


def redact_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with the values of sensitive headers, and of those named in
    ``extra`` (any case: a hook's own signature header), replaced by ``[redacted]``."""
    own = {e.lower() for e in extra}
    return {
        name: REDACTED if is_sensitive_header(name) or name.lower() in own else value
        for name, value in headers.items()
    }
