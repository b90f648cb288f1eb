"""The secret-leak audit's tools: a transcript of everything the gateway showed (HTTP answers,
log lines, command output), the signature forms to look for, and an echoing receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web


def digest_forms(digest: bytes) -> set[str]:
    """Every text form a signature could be shown in: hex (either case), base64 (standard and
    URL-safe, with and without padding)."""
    standard = base64.b64encode(digest).decode()
    urlsafe = base64.urlsafe_b64encode(digest).decode()
    return {
        digest.hex(),
        digest.hex().upper(),
        standard,
        standard.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
    }


def hmac_forms(key: bytes, message: bytes, algorithm: str = "sha256") -> set[str]:
    """The forms of HMAC-``algorithm`` of ``message`` keyed with ``key``."""
    return digest_forms(hmac.new(key, message, getattr(hashlib, algorithm)).digest())


def shown_signature_forms(value: str) -> set[str]:
    """The forms of the signatures a header carried (``v1,<b64> ...``, ``sha256=<hex>``)."""
    forms: set[str] = set()
    for entry in value.split():
        _, comma, rest = entry.partition(",")
        algorithm, equals, hexits = entry.partition("=")
        if comma:
            forms |= digest_forms(base64.b64decode(rest))
        elif equals and algorithm in hashlib.algorithms_guaranteed:
            forms |= digest_forms(bytes.fromhex(hexits))
    return forms


@dataclass
class Answer:
    """One HTTP exchange as the client saw it."""

    label: str
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)


@dataclass
class Transcript:
    """Everything the gateway showed, each piece under a label (``POST /users/login #3``)."""

    shown: list[tuple[str, str]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.shown.append((label, text))

    async def call(
        self, session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
    ) -> Answer:
        """Send a request; record the answer's status line, headers and body."""
        async with session.request(method, url, **kwargs) as response:
            text = (await response.read()).decode("utf-8", "replace")
            path = response.url.path
            headers = dict(response.headers)
        label = f"{method} {path} #{len(self.answers)}"
        answer = Answer(label, response.status, headers, text)
        self.answers.append(answer)
        header_text = "\n".join(f"{k}: {v}" for k, v in headers.items())
        self.add(label, f"{response.status}\n{header_text}\n\n{text}")
        return answer

    def leaks(self, secrets: dict[str, str], allowed: dict[str, set[str]]) -> list[str]:
        """``secrets``: value → what it is; ``allowed``: value → labels that may show it.
        One line per (secret, place) where a secret was shown but may not be."""
        found = []
        for value, what in secrets.items():
            for label, text in self.shown:
                if value in text and label not in allowed.get(value, set()):
                    at = text.index(value)
                    context = text[max(0, at - 80) : at + len(value) + 40].replace("\n", " | ")
                    found.append(f"{what} shown in {label}: ...{context}...")
        return found


class Audit:
    """The client side of the audit: every answer recorded, the secrets it learns collected
    with the answers allowed to show them, and the signatures it can compute."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.transcript = Transcript()
        self.secrets: dict[str, str] = {}
        self.allowed: dict[str, set[str]] = {}
        self.signatures: set[str] = set()
        self.auth: dict[str, str] = {}

    def secret(self, value: str, what: str, shown_in: Answer | None = None) -> None:
        self.secrets[value] = what
        if shown_in is not None:
            self.allowed.setdefault(value, set()).add(shown_in.label)

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Answer:
        kwargs.setdefault("headers", self.auth)
        answer = await self.transcript.call(self.session, method, self.base + path, **kwargs)
        assert answer.status == expect, (method, path, answer.status, answer.text)
        return answer

    def hook_secret(self, answer: Answer, what: str) -> str:
        value: str = answer.json()["secret"]
        self.secret(value, what, answer)
        if value.startswith("whsec_"):
            self.secret(value.removeprefix("whsec_"), what + " (base64 part)", answer)
        return value


@dataclass
class EchoingReceiver:
    """An outgoing hooks' target that echoes what it got (headers and body) in its answer, so
    that the response excerpts the gateway keeps are tested for echoed credentials; the first
    request of each ``webhook-id`` answers 500 (a retry), later ones 200."""

    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    failed_once: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {str(k): v for k, v in request.headers.items()}
        self.seen.append((request.path, headers, body))
        delivery = headers.get("webhook-id", "")
        status = 200
        if delivery not in self.failed_once:
            self.failed_once.add(delivery)
            status = 500
        echo = orjson.dumps({"you_sent": headers, "body": body.decode("utf-8", "replace")})
        return web.Response(status=status, body=echo, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app
