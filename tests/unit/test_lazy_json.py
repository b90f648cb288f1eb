"""Lazy (simdjson) reads give what the orjson tree gives, for every singular path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import lazy_json
from gateway.ingest.paths import compile_path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PAYLOADS = sorted(
    p for d in ("github", "gitlab", "bitbucket") for p in (FIXTURES / d).glob("*.json")
)


def dot_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every dot path in a document (keys the dot syntax can spell), containers included."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return
    for key, child in items:
        if not key or not all(c.isalnum() or c in "_-@" for c in key):
            continue
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from dot_paths(child, path)


def same_reads(body: bytes, paths: list[str]) -> None:
    tree = orjson.loads(body)
    document = lazy_json.parse(body, lazy=True)
    assert isinstance(document, lazy_json.LazyDocument)
    try:
        for path in paths:
            compiled = compile_path(path)
            assert compiled.first(document) == compiled.first(tree), path
            assert compiled.find(document) == compiled.find(tree), path
    finally:
        document.release()


@pytest.mark.parametrize("fixture", PAYLOADS, ids=lambda p: p.name)
def test_every_dot_path_of_real_payloads_reads_the_same(fixture: Path) -> None:
    body = fixture.read_bytes()
    paths = list(dot_paths(orjson.loads(body)))
    assert len(paths) > 100
    same_reads(body, [*paths, "no.such.path", "pull_request.head.ref.deeper", "commits.99"])


def test_simple_jsonpath_forms_read_the_same() -> None:
    body = b'{"a": [1, {"b": [true, null, 2.5]}, "x"], "c d": {"0": "zero"}, "n": null}'
    same_reads(
        body,
        ["$.a[-1]", "$.a[-4]", "$.a[1].b[2]", "$['c d']['0']", "$['c d'][0]", "$.a", "$.n",
         "a.1.b", "a.01", "c", "n", "$"],
    )  # fmt: skip


def test_an_index_past_any_machine_integer_is_not_found() -> None:
    # Accepted at create time; simdjson raised OverflowError (a 500 on every request).
    same_reads(
        b'{"commits": [{"id": "c1"}]}',
        ["commits.99999999999999999999.id", "$.commits[-9223372036854775809].id",
         "$.commits[18446744073709551616]"],
    )  # fmt: skip


def test_containers_come_back_as_python_values() -> None:
    document = lazy_json.parse(b'{"a": {"b": [1, {"c": "d"}]}, "e": []}', lazy=True)
    try:
        assert compile_path("a").first(document) == (True, {"b": [1, {"c": "d"}]})
        found, value = compile_path("a.b").first(document)
        assert found and value == [1, {"c": "d"}] and type(value) is list
        assert compile_path("e").first(document) == (True, [])
    finally:
        document.release()


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1,]", b'{"a":1} x', b"\xff", b'{"a":"\xc3"}', b'"\x01"', b"1e400",
     b'{"a":"\\ud800"}', b"NaN", b"{'a': 1}", b"[" * 2000 + b"]" * 2000,
     b'\xef\xbb\xbf{"a": 1}'],  # a UTF-8 byte order mark: simdjson skips it, orjson refuses
)  # fmt: skip
def test_invalid_json_is_refused_with_orjsons_message(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError) as expected:
        orjson.loads(body)
    with pytest.raises(orjson.JSONDecodeError) as got:
        lazy_json.parse(body, lazy=True)
    assert str(got.value) == str(expected.value)


def test_what_simdjson_cannot_represent_falls_back_to_the_orjson_tree() -> None:
    body = b'{"big": 18446744073709551616, "neg": -9223372036854775809}'
    document = lazy_json.parse(body, lazy=True)
    assert document == orjson.loads(body)  # a plain tree: paths read it as before
    assert compile_path("big").first(document) == (True, 1.8446744073709552e19)


def test_a_document_still_referenced_does_not_block_the_next_parse() -> None:
    kept = lazy_json.parse(b'{"a": {"b": 1}}', lazy=True)
    try:
        other = lazy_json.parse(b'{"a": {"b": 2}}', lazy=True)  # a fresh parser takes over
        assert compile_path("a.b").first(other) == (True, 2)
        assert compile_path("a.b").first(kept) == (True, 1)
        other.release()
    finally:
        kept.release()


def test_not_lazy_is_plain_orjson() -> None:
    assert lazy_json.parse(b'{"a": 1}', lazy=False) == {"a": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "b", "0", "1", "x-y"]), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_document_reads_the_same_on_every_path(value: Any) -> None:
    body = json.dumps(value).encode()
    same_reads(body, [*dot_paths(value), "a.b.0", "0.a", "1", "x-y.a"])


def test_a_repeated_member_name_reads_its_first_occurrence() -> None:
    # Documented difference (RFC 8259 leaves repeated names undefined): orjson keeps the last.
    document = lazy_json.parse(b'{"a": 1, "a": 2}', lazy=True)
    try:
        assert compile_path("a").first(document) == (True, 1)
    finally:
        document.release()
