"""Fuzzing ``POST /hooks/incoming/{id}`` through the real application (real HTTP on loopback,
real PostgreSQL): malformed headers, bodies, content types and encodings, sizes around
``server.max_body_bytes``. Whatever arrives, the answer is never a 5xx: a 4xx carries the JSON
error body with a message, a 2xx a JSON body, and nothing hangs.

The hook is the seed's GitHub hook (HMAC-SHA256 in X-Hub-Signature-256); requests that must get
past the signature are signed with its secret. Loopback is a trusted proxy here, so forwarded
headers are parsed too.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from tests.integration.ingest_helpers import (
    JSON_HEADERS,
    create_hook,
    fetch,
    github_headers,
    hook_path,
    new_pipeline,
    seed_hook,
)

MAX_BODY = 4096
EXAMPLES = 100
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PAYLOAD = orjson.dumps({"action": "opened", "pull_request": {"number": 7, "title": "t"}})

# Header values the client library can put on the wire: no CR, LF or other control characters.
_HEADER_CHARS = st.characters(exclude_categories=("Cc", "Cs"))
HEADER_VALUES = st.one_of(
    st.text(_HEADER_CHARS, max_size=80),
    # Large (ASCII, so at most 4000 bytes: under aiohttp's 8190-byte field limit).
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1000, max_size=4000),
    st.text(
        st.characters(min_codepoint=0x80, exclude_categories=("Cc", "Cs")),
        max_size=40,
    ),  # non-ASCII
    st.builds(lambda h: "sha256=" + h, st.text("0123456789abcdefABCDEF", max_size=80)),
    st.sampled_from(["sha256=", "sha1=00", "=", "sha256", "md5=abc", " sha256=00 ", "sha256=zz"]),
)
HEADER_NAMES = st.sampled_from(
    [
        "X-Hub-Signature-256",
        "X-Hub-Signature",
        "X-GitHub-Delivery",
        "X-Request-Id",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "Forwarded",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Idempotency-Key",
    ]
)


@pytest.fixture
def config(config: Config) -> Config:
    """A small body limit (sizes around it are cheap) and loopback as a trusted proxy."""
    return replace(
        config,
        server=replace(config.server, max_body_bytes=MAX_BODY, trusted_proxies=("127.0.0.0/8",)),
    )


@pytest.fixture
async def hook(client: Any, admin_headers: dict[str, str]) -> dict[str, Any]:
    return await seed_hook(client, admin_headers)


async def check_answer(response: Any) -> dict[str, Any]:
    """The invariant: no 5xx; JSON with a message (and for 4xx, the shared error shape)."""
    raw = await response.read()
    assert response.status < 500, (response.status, raw[:300])
    assert response.content_type == "application/json", (response.status, raw[:300])
    body = orjson.loads(raw)
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]
    if response.status >= 400:
        assert set(body) == {"message", "errors"}, body
        assert body["errors"] is None or isinstance(body["errors"], dict)
    return body


def signed(hook: dict[str, Any], body: bytes, **extra: str) -> dict[str, str]:
    return github_headers(hook["secret"], body, **extra)


@FUZZ
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    sign=st.booleans(),
)
async def test_malformed_headers_get_a_clear_answer(
    client: Any, hook: dict[str, Any], headers: list[tuple[str, str]], sign: bool
) -> None:
    base = signed(hook, PAYLOAD) if sign else {"Content-Type": "application/json"}
    # A list of pairs: the fuzzed names may repeat, and may repeat the signed ones.
    pairs = list(base.items()) + headers
    response = await client.post(hook_path(hook), data=PAYLOAD, headers=pairs)
    await check_answer(response)


# Bodies: raw bytes, broken UTF-8, deep nesting, huge numbers, non-JSON literals, BOMs.
def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


BODIES = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda b: b"\xef\xbb\xbf" + b, st.sampled_from([PAYLOAD, b"{}", b"[]"])),
    st.sampled_from(
        [
            b"",
            b" ",
            b"null",
            b"NaN",
            b'{"n": NaN}',
            b'{"n": Infinity}',
            b'{"pull_request": {"number": 1e999}}',
            b'{"pull_request": {"title": ' + b"9" * 400 + b"}}",
            b'{"a": "\xff\xfe"}',
            b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
            b'{"a": "\\ud800"}',  # an escaped lone surrogate
            b'{"pull_request": {"title": "nul\\u0000"}}',
            b'{"a": 1,}',
            b'{"a": 1}{"b": 2}',
            b"[" * 5000,
        ]
    ),
    st.integers(1, 3000).map(_nested),
    st.recursive(  # well-formed JSON of every shape (floats: NaN and infinities become null)
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(),
            st.text(max_size=20),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=30,
    ).map(orjson.dumps),
)


@FUZZ
@given(body=BODIES)
async def test_malformed_signed_bodies_get_a_clear_answer(
    client: Any, hook: dict[str, Any], body: bytes
) -> None:
    response = await client.post(hook_path(hook), data=body, headers=signed(hook, body))
    answer = await check_answer(response)
    assert response.status in (202, 400, 413, 422), (response.status, answer)


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "APPLICATION/JSON",
            "application/vnd.github+json",
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/json;;;",
            ";",
            "",
        ]
    ),
    st.text(_HEADER_CHARS, max_size=60),
)
FORM_BODIES = st.sampled_from(
    [
        b"",
        b"payload=",
        b"other=1",
        b"payload=%7B%7D",
        b"payload=" + PAYLOAD.replace(b'"', b"%22"),
        b"payload=%ZZ",
        b"payload=%FF%FE",
        b"payload=\xff",
        b"&&&=&",
        b"payload=" + b"%5B" * 300,
    ]
)


@FUZZ
@given(content_type=CONTENT_TYPES, body=st.one_of(FORM_BODIES, st.just(PAYLOAD)))
async def test_content_types_and_form_bodies_get_a_clear_answer(
    client: Any, hook: dict[str, Any], content_type: str, body: bytes
) -> None:
    headers = signed(hook, body)
    headers["Content-Type"] = content_type
    response = await client.post(hook_path(hook), data=body, headers=headers)
    answer = await check_answer(response)
    assert response.status in (202, 400, 415, 422), (response.status, answer)


ENCODED = {
    "gzip": gzip.compress(PAYLOAD),
    "deflate": zlib.compress(PAYLOAD),
    "identity": PAYLOAD,
    "garbage": b"\x1f\x8b\x08\x00not really gzip",
}


ENCODING_CASES = [
    (encoding, body, signed_over)
    for encoding in ("gzip", "deflate", "br", "zstd", "identity", "compress", "x-unknown")
    for body in sorted(ENCODED)
    for signed_over in ("sent", "decoded")
]


@pytest.mark.parametrize(("encoding", "body", "signed_over"), ENCODING_CASES)
async def test_content_encodings_get_a_clear_answer(
    client: Any, hook: dict[str, Any], encoding: str, body: str, signed_over: str
) -> None:
    # The signature covers the bytes sent, and a small compressed body can expand past the
    # limit: anything but identity is refused before the body is read, naming the encoding.
    sent = ENCODED[body]
    headers = signed(hook, sent if signed_over == "sent" else PAYLOAD)
    headers["Content-Encoding"] = encoding
    response = await client.post(hook_path(hook), data=sent, headers=headers, compress=None)
    answer = await check_answer(response)
    if encoding == "identity":
        # identity: the body as sent is what is verified and parsed.
        if body == "identity":
            expected = 202
        else:  # compressed bytes: signed over them, they are not JSON; signed over others, 401
            expected = 400 if signed_over == "sent" else 401
        assert response.status == expected, answer
    else:
        assert response.status == 415, answer
        assert answer["message"] == (
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
        )


async def _chunks(size: int, chunk: int = 1000) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        part = min(chunk, size - sent)
        yield b" " * part
        sent += part


@pytest.mark.parametrize("delta", [-1, 0, 1, 1000, 10 * MAX_BODY])
@pytest.mark.parametrize("chunked", [False, True])
async def test_sizes_around_the_body_limit(
    client: Any, hook: dict[str, Any], db: Any, config: Config, delta: int, chunked: bool
) -> None:
    # A valid payload padded with whitespace to exactly MAX_BODY + delta bytes.
    size = MAX_BODY + delta
    body = PAYLOAD + b" " * (size - len(PAYLOAD))
    delivery = str(uuid.uuid4())
    headers = signed(hook, body, delivery=delivery)
    if chunked:

        async def stream() -> AsyncIterator[bytes]:
            yield PAYLOAD
            async for part in _chunks(size - len(PAYLOAD)):
                yield part

        response = await client.post(hook_path(hook), data=stream(), headers=headers)
    else:
        response = await client.post(hook_path(hook), data=body, headers=headers)
    answer = await check_answer(response)
    if size <= MAX_BODY:
        assert response.status == 202, answer
        runs = await fetch(
            config.database.dsn, "SELECT id FROM pipeline_runs WHERE delivery_id = $1", delivery
        )
        assert [str(r["id"]) for r in runs] == [answer["run_id"]]
    else:
        assert response.status == 413, answer
        assert str(MAX_BODY) in answer["message"]


@pytest.mark.parametrize(
    "extra",
    [
        [("X-Hub-Signature", "a" * 9000)],  # a field over aiohttp's 8190-byte limit
        [("Content-Type", "application/json")],  # a second Content-Type
    ],
    ids=["huge-header", "duplicate-content-type"],
)
async def test_requests_the_http_parser_refuses_get_a_400(
    client: Any, hook: dict[str, Any], extra: list[tuple[str, str]]
) -> None:
    # aiohttp's HTTP parser refuses these before any handler runs, with its own plain-text 400
    # (not the JSON error shape; see the reliability notes): never a 5xx or a hang.
    pairs = list(signed(hook, PAYLOAD).items()) + extra
    response = await client.post(hook_path(hook), data=PAYLOAD, headers=pairs)
    assert response.status == 400, await response.text()


@pytest.mark.parametrize("number", [b"-1e30", b'"' + b"9" * 30 + b'"'])
async def test_an_integer_variable_wider_than_64_bits_is_a_422(
    client: Any, hook: dict[str, Any], number: bytes
) -> None:
    # The seed hook's pull_request_id is an integer variable read from pull_request.number.
    body = b'{"pull_request": {"number": ' + number + b"}}"
    response = await client.post(hook_path(hook), data=body, headers=signed(hook, body))
    answer = await check_answer(response)
    assert response.status == 422, answer
    assert list(answer["errors"]) == ["pull_request_id"]


async def unsigned_hook_reading_data(
    client: Any, admin_headers: dict[str, str], kind: str
) -> dict[str, Any]:
    """A hook without a secret whose one variable, ``data``, is of type ``kind``."""
    pipeline = await new_pipeline(client, admin_headers)
    settings = {"variables": [{"name": "data", "type": kind}]}
    return await create_hook(
        client, admin_headers, pipeline, requires_secret=False, settings=settings
    )


@pytest.mark.parametrize(("container", "depth"), [("object", 65), ("object", 300), ("array", 1000)])
async def test_a_variable_nested_too_deep_to_store_is_a_recorded_422(
    client: Any, admin_headers: dict[str, str], database_dsn: str, container: str, depth: int
) -> None:
    # orjson parses 1,024 levels but stores 254, and a recursive walk died at ~500: a 500 and
    # no history row, on every retry.
    hook = await unsigned_hook_reading_data(client, admin_headers, container)
    opening, closing = (b'{"a":', b"}") if container == "object" else (b"[", b"]")
    body = b'{"data":' + opening * depth + b"1" + closing * depth + b"}"
    response = await client.post(hook_path(hook), data=body, headers=JSON_HEADERS)
    answer = await check_answer(response)
    assert response.status == 422
    assert answer["errors"] == {
        "data": ["is nested more than 64 levels deep, which cannot be stored"]
    }
    rows = await fetch(
        database_dsn,
        "SELECT outcome, status_code FROM hook_requests WHERE hook_id = $1",
        uuid.UUID(hook["id"]),
    )
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("rejected", 422)]


async def test_a_variable_nested_64_levels_is_stored(
    client: Any, admin_headers: dict[str, str], database_dsn: str
) -> None:
    hook = await unsigned_hook_reading_data(client, admin_headers, "array")
    body = b'{"data":' + b"[" * 64 + b"]" * 64 + b"}"
    response = await client.post(hook_path(hook), data=body, headers=JSON_HEADERS)
    assert response.status == 202, await response.text()


async def test_an_unexpected_error_is_a_json_500_with_a_request_id(
    client: Any, hook: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a bug in evaluation must not surface as aiohttp's bare-text 500.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("gateway.ingest.trigger.evaluate", broken)
    response = await client.post(hook_path(hook), data=PAYLOAD, headers=signed(hook, PAYLOAD))
    assert response.status == 500 and response.content_type == "application/json"
    assert await response.json() == {
        "message": "the request could not be handled; see the gateway log",
        "errors": None,
    }
    assert len(response.headers["X-Request-Id"]) == 32
