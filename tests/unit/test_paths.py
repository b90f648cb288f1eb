"""Compiled paths: dot-path fast path, JSONPath via jsonpath-ng ext, and the CTS subset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng import Child, Fields, Index
from jsonpath_ng.ext import parse as ng_parse

from gateway.ingest.paths import (
    MAX_PATH_LENGTH,
    PathSyntaxError,
    compile_path,
    regular_expression_errors,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CTS = json.loads((FIXTURES / "jsonpath" / "cts-subset.json").read_text(encoding="utf-8"))
CTS_TESTS = CTS["tests"]


def ng_find(path: str, document: Any) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [m.value for m in ng_parse(path).find(document)]


# --- CTS subset --------------------------------------------------------------------------


def test_cts_subset_is_the_expected_file() -> None:
    # Guards the parametrized test below against silently running on an empty/other list.
    assert CTS["jsonpath_ng_version"] == "1.16.0"
    assert len(CTS_TESTS) == 67
    assert sum(t["jsonpath_ng_ok"] for t in CTS_TESTS) == 65
    assert sum(bool(t["jsonpath_ng_matches_result"]) for t in CTS_TESTS) == 62


@pytest.mark.parametrize("case", CTS_TESTS, ids=[t["name"] for t in CTS_TESTS])
def test_cts_subset(case: dict[str, Any]) -> None:
    if not case["jsonpath_ng_ok"]:
        with pytest.raises(PathSyntaxError) as info:
            compile_path(case["selector"])
        assert case["selector"] in str(info.value)
        return
    compiled = compile_path(case["selector"])
    found = compiled.find(case["document"])
    assert found == case["jsonpath_ng_result"]
    if case["jsonpath_ng_matches_result"]:
        assert found == case["result"]
    assert compiled.first(case["document"]) == ((True, found[0]) if found else (False, None))


# --- dot paths ---------------------------------------------------------------------------

DOC = {
    "source_type": "branch",
    "pull_request": {"head": {"ref": "changes", "sha": "abc"}, "merged": False, "body": None},
    "commits": [{"id": "c0"}, {"id": "c1", "tags": ["x", "y"]}],
    "map": {"0": "zero", "01": "zero-one", "a-b": 1, "@t": 2, "é": 3},
    "text": "hello",
    "n": 5,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("source_type", ["branch"]),
        ("pull_request.head.ref", ["changes"]),
        ("pull_request.merged", [False]),
        ("pull_request.body", [None]),  # null is found (the caller decides what null means)
        ("pull_request", [DOC["pull_request"]]),
        ("commits.0.id", ["c0"]),
        ("commits.1.tags.1", ["y"]),
        ("commits.2.id", []),  # index out of range
        ("commits.01.id", []),  # non-canonical index is a key, and lists have no keys
        ("commits.id", []),  # key on a list
        ("map.0", ["zero"]),  # numeric segment on an object is a key
        ("map.01", ["zero-one"]),
        ("map.a-b", [1]),
        ("map.@t", [2]),
        ("map.é", [3]),
        ("text.0", []),  # strings are not indexable
        ("text.length", []),
        ("n.x", []),
        ("missing", []),
        ("missing.deeper.still", []),
        ("pull_request.body.x", []),  # into null
    ],
)
def test_dot_path(path: str, expected: list[Any]) -> None:
    compiled = compile_path(path)
    assert compiled.singular
    assert compiled.expression is None
    assert compiled.find(DOC) == expected
    assert compiled.first(DOC) == ((True, expected[0]) if expected else (False, None))


@pytest.mark.parametrize("document", [None, 1, "s", True, [], {}, [1, 2], 2.5])
def test_dot_path_on_non_container_documents(document: Any) -> None:
    assert compile_path("a.b").find(document) == []
    assert compile_path("0").find(document) == ([1] if document == [1, 2] else [])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "path is empty"),
        ("a..b", "invalid path 'a..b': empty segment at position 1"),
        (".a", "invalid path '.a': empty segment at position 0"),
        ("a.", "invalid path 'a.': empty segment at position 1"),
        ("a b", "segment 'a b' may contain only"),
        (" a", "segment ' a' may contain only"),
        ("a.[0]", "segment '[0]' may contain only"),
        ("a.*", "segment '*' may contain only"),
        ("a['b']", "segment \"a['b']\" may contain only"),
        ("$[", "invalid JSONPath '$[': Parse error near the end of string!"),
        ("$..[?(", "invalid JSONPath '$..[?(': Parse error"),
        ("$.", "invalid JSONPath '$.'"),
        ("$.where", "invalid JSONPath '$.where': Parse error at 1:2 near token where"),
        ("$.☺", "invalid JSONPath '$.☺': Error on line 1, col 2"),
        ("$a", "invalid JSONPath '$a'"),
        ("x" * (MAX_PATH_LENGTH + 1), f"longer than {MAX_PATH_LENGTH} characters"),
    ],
)
def test_unparseable_paths(path: str, message: str) -> None:
    with pytest.raises(PathSyntaxError) as info:
        compile_path(path)
    assert message in str(info.value)


@pytest.mark.parametrize("path", [None, 3, ["a"], {"a": 1}])
def test_non_string_path(path: Any) -> None:
    with pytest.raises(PathSyntaxError, match="path must be a string"):
        compile_path(path)


def test_path_syntax_error_is_a_value_error() -> None:
    assert issubclass(PathSyntaxError, ValueError)


# --- JSONPath ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("$", ()),
        ("$.a.b", (("a", None), ("b", None))),
        ("$['a'][\"b\"]", (("a", None), ("b", None))),
        ("$.commits[0].id", (("commits", None), (None, 0), ("id", None))),
        ("$.commits[-1]", (("commits", None), (None, -1))),
        ("$.commits.0", (("commits", None), ("0", None))),  # jsonpath-ng: '.0' is a name
    ],
)
def test_simple_jsonpath_uses_fast_path(path: str, steps: tuple[Any, ...]) -> None:
    compiled = compile_path(path)
    assert compiled.singular
    assert compiled.steps == steps


@pytest.mark.parametrize(
    "path",
    [
        "$.a[*]",
        "$.*",
        "$..id",
        "$.a[0,1]",
        "$.a[0:2]",
        "$.a,b",
        "$['*']",
        "$..a[*].b",
        "$.a..b[::-1]",
    ],
)
def test_structural_jsonpath_is_evaluated_without_jsonpath_ng(path: str) -> None:
    compiled = compile_path(path)
    assert not compiled.singular
    assert compiled.select is not None and compiled.expression is not None


@pytest.mark.parametrize(
    "path", ["$.a | $.b", "$[?@.a]", "$.a.`len`", "$..a[?@.b]", "$.a..`len`", "$.a.`parent`"]
)
def test_other_jsonpath_uses_jsonpath_ng(path: str) -> None:
    compiled = compile_path(path)
    assert not compiled.singular
    assert compiled.expression is not None and compiled.select is None


def test_fast_path_never_calls_jsonpath_ng(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compile_path("$.commits[1]['tags'][0]")
    structural = compile_path("$..commits[*]['id','tags'][-1:]")
    slow = compile_path("$.commits[?@.id=='c1'].id")
    calls: list[str] = []

    def spy(self: Any, datum: Any) -> list[Any]:
        calls.append(type(self).__name__)
        return []

    for node in (Child, Fields, Index):
        monkeypatch.setattr(node, "find", spy)
    assert compiled.find(DOC) == ["x"]
    assert compile_path("commits.1.tags.0").first(DOC) == (True, "x")
    assert structural.find(DOC) == ["y"]
    assert calls == []
    assert slow.find(DOC) == []  # the spy is effective for non-simple paths
    assert calls == ["Child"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.commits[*].id", ["c0", "c1"]),
        ("$..id", ["c0", "c1"]),
        ("$.commits[?@.id=='c1'].tags[*]", ["x", "y"]),
        ("$.commits[-1].id", ["c1"]),
        ("$.commits[-3].id", []),
        ("$.map[0]", []),  # index on an object: jsonpath-ng finds nothing
        ("$.commits.0", []),  # name on an array: jsonpath-ng finds nothing
        ("$.text[0]", []),
        ("$.missing[*]", []),
    ],
)
def test_jsonpath_find(path: str, expected: list[Any]) -> None:
    assert compile_path(path).find(DOC) == expected
    assert ng_find(path, DOC) == expected


def test_jsonpath_errors_at_evaluation_are_no_match() -> None:
    path = "$.n.`sorted`"
    with pytest.raises(TypeError):  # jsonpath-ng itself raises on an integer
        ng_find(path, DOC)
    assert compile_path(path).find(DOC) == []
    assert compile_path(path).first(DOC) == (False, None)
    assert compile_path(path).find({"n": [3, 1, 2]}) == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("$.items[?(@.name =~ '(a+)+$')].name", "'=~'"),
        ("$.items[?(@.x > 1 && @.name =~ 'a')].name", "'=~'"),
        ("$..a[?(@.b =~ 'x')]", "'=~'"),
        ("$.n.`sub(/(a+)+$/, y)`", "sub(/regex/, ...)"),
    ],
)
def test_regular_expressions_are_refused_for_new_definitions(path: str, named: str) -> None:
    # Backtracking regexes on sender-controlled text: '(a+)+$' against 27 bytes held a worker's
    # event loop for about 5 seconds (every hook, /healthz included, waited).
    errors = regular_expression_errors([("f", path), ("g", "$.plain[0]"), ("h", "a.b"), ("i", 5)])
    assert list(errors) == ["f"]
    assert named in errors["f"][0] and "is not supported" in errors["f"][0]
    # A hook stored before the rule still compiles (and so keeps answering).
    assert compile_path(path).expression is not None


def test_compile_is_cached() -> None:
    assert compile_path("pull_request.head.ref") is compile_path("pull_request.head.ref")


# --- property tests: fast path == jsonpath-ng ---------------------------------------------

# Keys jsonpath-ng's lexer reads as one identifier (`where`/`wherenot` are its keywords).
KEYS = st.sampled_from(["a", "b", "id", "ref", "x-y", "_", "A1", "true", "null", "len", "@k"])
LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)
SEGMENTS = st.lists(KEYS | st.integers(0, 4), min_size=1, max_size=5)


@settings(max_examples=400, deadline=None)
@given(document=DOCS, segments=SEGMENTS)
def test_dot_path_matches_jsonpath_ng(document: Any, segments: list[str | int]) -> None:
    dot = ".".join(str(s) for s in segments)
    # Integer segments are array indexes in dot paths, i.e. `[n]` in JSONPath. Object keys
    # here are never digit strings, so the translation is exact.
    jsonpath = "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in segments)
    expected = ng_find(jsonpath, document)
    assert len(expected) <= 1
    assert compile_path(dot).find(document) == expected
    assert compile_path(dot).first(document) == ((True, expected[0]) if expected else (False, None))


@settings(max_examples=400, deadline=None)
@given(
    document=DOCS,
    segments=st.lists(KEYS | st.integers(-5, 5), max_size=5),
    quoted=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_simple_jsonpath_fast_path_matches_jsonpath_ng(
    document: Any, segments: list[str | int], quoted: list[bool]
) -> None:
    parts = []
    for segment, quote in zip(segments, quoted, strict=False):
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        else:
            parts.append(f"['{segment}']" if quote else f".{segment}")
    path = "$" + "".join(parts)
    compiled = compile_path(path)
    assert compiled.singular
    assert compiled.find(document) == ng_find(path, document)


# Structural JSONPath (names, indexes, wildcards, slices, recursive descent): evaluated by
# plain functions that must give exactly jsonpath-ng's results, in its order.
SELECTORS = st.one_of(
    KEYS.map(lambda k: f".{k}"),
    KEYS.map(lambda k: f"['{k}']"),
    st.lists(KEYS, min_size=2, max_size=3).map(
        lambda ks: "[" + ",".join(f"'{k}'" for k in ks) + "]"
    ),
    st.integers(-4, 4).map(lambda i: f"[{i}]"),
    st.lists(st.integers(-4, 4), min_size=2, max_size=3).map(
        lambda xs: f"[{','.join(map(str, xs))}]"
    ),
    st.just("[*]"),
    st.just(".*"),
    st.tuples(
        st.none() | st.integers(-4, 4),
        st.none() | st.integers(-4, 4),
        st.none() | st.integers(-3, 3),
    ).map(lambda t: "[" + ":".join("" if x is None else str(x) for x in t) + "]"),
)
DESCENT = st.one_of(
    KEYS.map(lambda k: f"..{k}"), st.just("..*"), st.integers(-2, 2).map(lambda i: f"..[{i}]")
)


@settings(max_examples=600, deadline=None)
@given(document=DOCS, parts=st.lists(SELECTORS | DESCENT, min_size=1, max_size=5))
def test_structural_jsonpath_matches_jsonpath_ng(document: Any, parts: list[str]) -> None:
    path = "$" + "".join(parts)
    compiled = compile_path(path)
    if compiled.singular:  # only names and single indexes: the fast path (tested above)
        return
    assert compiled.select is not None, path
    assert compiled.find(document) == ng_find(path, document)


def test_recursive_descent_on_a_large_payload_finds_what_jsonpath_ng_finds() -> None:
    # The case that held the event loop for seconds in jsonpath-ng: 60,000 small objects.
    document = {"items": [{"a": i, "b": {"c": i, "d": [i, {"c": -i}]}} for i in range(2_000)]}
    for path in ("$..c", "$..b", "$.items[*].b.d[1].c", "$..d[-1:]", "$..[0]", "$..*"):
        assert compile_path(path).find(document) == ng_find(path, document), path
