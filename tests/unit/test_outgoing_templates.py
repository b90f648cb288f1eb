"""Outgoing hook templates: validation at create time, text/header/URL/JSON rendering."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dispatcher.templates import (
    MAX_RENDERED_BODY,
    MAX_RENDERED_HEADER,
    MAX_RENDERED_URL,
    MAX_TEMPLATE_LENGTH,
    JsonTemplate,
    RenderError,
    TemplateError,
    TextTemplate,
    compile_body,
    compile_url,
    lookup,
    to_text,
)

CONTEXT: dict[str, Any] = {
    "event": "run.completed",
    "run": {
        "id": "0b6f7c1e-6a51-4c0e-9a52-1f0a8e3f2b11",
        "pipeline_id": 7,
        "status": "completed",
        "previous_status": "in-progress",
        "attempt": 1,
        "message": 'line "one"\nline two',
        "exit_code": None,
        "variables": {
            "pull_request_id": 42,
            "source_ref": "feature/a b&c",
            "ratio": 0.5,
            "draft": False,
            "labels": ["x", "y"],
            "head": {"sha": "abc"},
        },
        "triggered_from": {"type": "incoming_hook", "hook_id": "h", "request_id": "r"},
    },
    "pipeline": {"id": 7, "name": "Deploy app", "action_type": "deploy"},
    "hook": {"id": "hook-1", "name": "PR comment"},
    "delivery": {"id": "d-1", "attempt": 2},
}


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{{ run.nope }}", "unknown placeholder '{{ run.nope }}': run has no 'nope'"),
        ("{{ foo }}", "unknown placeholder '{{ foo }}': the context has no 'foo'"),
        ("a {{ run.status", "unclosed '{{' at position 2"),
        ("{{ }}", "empty placeholder"),
        ("{{ run.status | upper }}", "run has no 'status | upper'"),
        ("{{ pipeline.name.first }}", "pipeline.name has no 'first'"),
        ("{{ run.variables.a b }}", "bad name 'a b'"),
        ("{{ __import__('os') }}", "the context has no"),
    ],
)
def test_invalid_placeholders_are_rejected_naming_them(source: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        TextTemplate.compile(source)
    assert fragment in str(caught.value)


def test_every_bad_placeholder_is_reported() -> None:
    with pytest.raises(TemplateError) as caught:
        TextTemplate.compile("{{ run.a }} and {{ hook.b }} and {{ run.status }}")
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize(
    "source",
    [
        "{{ run.variables.anything_at_all }}",
        "{{run.variables.nested.0.key-name}}",
        "{{ event }}{{ run }}{{ pipeline.action_type }}{{ hook.id }}{{ delivery.id }}",
        "literal }} braces",
    ],
)
def test_valid_templates_compile(source: str) -> None:
    TextTemplate.compile(source)


# --- text and headers ------------------------------------------------------------------------


def test_text_rendering_rules() -> None:
    template = TextTemplate.compile(
        "{{ run.status }}|{{ run.variables.pull_request_id }}|{{ run.variables.ratio }}|"
        "{{ run.variables.draft }}|{{ run.variables.missing }}|{{ run.exit_code }}|"
        "{{ run.variables.labels }}|{{ run.variables.labels.1 }}|{{ event }}"
    )
    assert template.render(CONTEXT) == 'completed|42|0.5|false|||["x","y"]|y|run.completed'


def test_header_values_cannot_inject_lines() -> None:
    template = TextTemplate.compile("Bearer {{ run.message }}")
    assert template.render_header(CONTEXT) == 'Bearer line "one" line two'


# --- bounded rendering --------------------------------------------------------------------

# A few kilobytes of variables, and templates that name them as often as their length allows:
# unbounded, 64 KiB of `{{ run.variables }}` over the 1 MiB an ingested body may be renders 4 GB
# in the dispatcher (here a few megabytes, just past each bound).
BIG_VALUE = "v" * 5000
BIG = {"run": {"variables": {"blob": BIG_VALUE}}}


def _repeated(placeholder: str, times: int, separator: str = "") -> str:
    return separator.join([placeholder] * times)


def test_a_text_body_rendering_past_its_bound_is_refused() -> None:
    template = compile_body(_repeated("{{ run.variables }}", MAX_TEMPLATE_LENGTH // 20))
    assert isinstance(template, TextTemplate)
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_BODY} characters"):
        template.render(BIG, MAX_RENDERED_BODY)


@pytest.mark.parametrize("placeholder", ["{{ run.variables }}", "{{ run.variables.blob }}"])
def test_a_json_body_of_whole_values_rendering_past_its_bound_is_refused(placeholder: str) -> None:
    # Whole-value placeholders put references into the tree: only its serialisation builds the
    # copies, so they are counted by their JSON size before it.
    times = MAX_RENDERED_BODY // len(BIG_VALUE) + 1
    template = compile_body([placeholder] * times)
    assert isinstance(template, JsonTemplate)
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_BODY} bytes"):
        template.render(BIG)


def test_a_json_body_of_text_values_rendering_past_its_bound_is_refused() -> None:
    times = MAX_RENDERED_BODY // len(BIG_VALUE) + 1
    template = compile_body({"text": _repeated("{{ run.variables.blob }}", times, " ")})
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_BODY} bytes"):
        template.render(BIG)


def test_a_json_body_whose_escaping_takes_it_past_its_bound_is_refused() -> None:
    # Counted as characters while rendering, the body is measured again once serialised.
    quotes = {"run": {"variables": {"q": '"' * (MAX_RENDERED_BODY // 2 + 1)}}}
    template = compile_body({"q": "{{ run.variables.q }}!"})
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_BODY} bytes"):
        template.render(quotes)


def test_a_url_or_header_value_rendering_past_its_bound_is_refused() -> None:
    times = MAX_RENDERED_URL // len(BIG_VALUE) + 1
    url = compile_url("https://api.example.com/" + _repeated("{{ run.variables.blob }}", times))
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_URL} characters"):
        url.render_url(BIG)
    # Percent-encoding counts: a third of the bound in characters that each take three.
    slashes = {"run": {"variables": {"path": "/" * (MAX_RENDERED_URL // 3 + 1)}}}
    with pytest.raises(RenderError, match="more than"):
        compile_url("https://api.example.com/{{ run.variables.path }}").render_url(slashes)
    times = MAX_RENDERED_HEADER // len(BIG_VALUE) + 1
    header = TextTemplate.compile(_repeated("{{ run.variables.blob }}", times))
    with pytest.raises(RenderError, match=f"more than {MAX_RENDERED_HEADER} characters"):
        header.render_header(BIG)


def test_renderings_within_their_bounds_are_whole() -> None:
    body = compile_body({"a": "{{ run.variables }}", "b": "{{ run.variables.blob }}"})
    assert orjson.loads(body.render(BIG)) == {"a": {"blob": BIG_VALUE}, "b": BIG_VALUE}
    url = compile_url("https://api.example.com/{{ run.variables.blob }}")
    assert url.render_url(BIG) == "https://api.example.com/" + BIG_VALUE
    assert TextTemplate.compile("{{ run.variables.blob }}").render_header(BIG) == BIG_VALUE


# --- URLs ------------------------------------------------------------------------------------


def test_url_values_are_percent_encoded_in_path_and_query() -> None:
    template = compile_url(
        "https://api.example.com/repos/{{ run.variables.source_ref }}/comments"
        "?pr={{ run.variables.pull_request_id }}&missing={{ run.variables.none }}"
    )
    assert template.render_url(CONTEXT) == (
        "https://api.example.com/repos/feature%2Fa%20b%26c/comments?pr=42&missing="
    )


@pytest.mark.parametrize("value", [".", "..", "...."])
def test_a_dot_segment_in_the_path_is_refused_but_not_in_the_query(value: str) -> None:
    context = {"run": {"variables": {"ref": value}}}
    in_query = compile_url("https://api.example.com/x?ref={{ run.variables.ref }}")
    assert in_query.render_url(context) == f"https://api.example.com/x?ref={value}"
    in_path = compile_url("https://api.example.com/{{ run.variables.ref }}/status")
    with pytest.raises(RenderError, match="dot-segment"):
        in_path.render_url(context)
    # Dots inside a longer value are an ordinary segment.
    context["run"]["variables"]["ref"] = f"v{value}1"
    assert in_path.render_url(context) == f"https://api.example.com/v{value}1/status"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("example.com/x", "http:// or https://"),
        ("https://{{ run.variables.host }}/x", "only appear after scheme://host"),
        ("https://example.com{{ run.id }}", "only appear after scheme://host"),
        ("https://user:pw@example.com/", "must not contain credentials"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https:///path", "must name a host"),
        ("https://example.com/{{ run.bad }}", "run has no 'bad'"),
        ("https://example.com/a b", "contains ' ': a URL is printable ASCII without spaces"),
        ("https://example.com/x\r\nX-Injected: 1", "contains '\\r'"),
        ("https://example.com/\tx", "contains '\\t'"),
        ("https://bücher.example/", "contains 'ü'"),
        ("https://example.com/{{ run.id }}/ö", "punycode"),
        # Legacy numeric IPv4 forms: aiohttp refuses to connect to them (every delivery would
        # fail), so they are refused here, with the form to write instead.
        ("http://2130706433/x", "dotted-quad"),
        ("http://127.1:8080/x", "dotted-quad"),
        ("http://0177.0.0.1/x", "dotted-quad"),
        ("http://8.8.8.8./x", "dotted-quad"),
        ("http://1.2.3.256/x", "dotted-quad"),
    ],
)
def test_bad_urls_are_rejected(source: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_url(source)
    assert fragment in str(caught.value)


def test_placeholder_in_query_right_after_host_is_allowed() -> None:
    template = compile_url("https://example.com?id={{ run.id }}")
    assert template.render_url(CONTEXT).endswith("?id=0b6f7c1e-6a51-4c0e-9a52-1f0a8e3f2b11")


# --- JSON bodies -----------------------------------------------------------------------------


def test_json_object_body_gets_json_correct_values() -> None:
    template = compile_body(
        {
            "pr": "{{ run.variables.pull_request_id }}",
            "ref": "{{ run.variables.source_ref }}",
            "draft": "{{ run.variables.draft }}",
            "missing": "{{ run.variables.nope }}",
            "labels": "{{ run.variables.labels }}",
            "body": "Deploy of {{ pipeline.name }} is {{ run.status }}: {{ run.message }}",
            "nested": [{"{{ hook.name }}": 1}, True, None, 1.5],
        }
    )
    assert isinstance(template, JsonTemplate)
    rendered = orjson.loads(template.render(CONTEXT))
    assert rendered == {
        "pr": 42,
        "ref": "feature/a b&c",
        "draft": False,
        "missing": None,
        "labels": ["x", "y"],
        "body": 'Deploy of Deploy app is completed: line "one"\nline two',
        "nested": [{"PR comment": 1}, True, None, 1.5],
    }


def test_string_body_that_is_json_is_a_json_template() -> None:
    template = compile_body('{"body": "status: {{ run.status }}", "n": "{{ run.attempt }}"}')
    assert isinstance(template, JsonTemplate)
    assert orjson.loads(template.render(CONTEXT)) == {"body": "status: completed", "n": 1}


def test_string_body_with_bare_placeholders_is_rejected() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_body('{"n": {{ run.attempt }}}')
    assert "unquoted placeholders" in str(caught.value)


def test_plain_text_body_renders_text() -> None:
    template = compile_body("[deploy] {{ pipeline.name }} {{ run.status }} {{ run.variables.x }}")
    assert isinstance(template, TextTemplate)
    assert template.render(CONTEXT) == "[deploy] Deploy app completed "


def test_body_errors_name_every_bad_placeholder() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_body({"a": "{{ run.nope }}", "{{ bad }}": "x", "c": ["{{ run.status"]})
    assert len(caught.value.problems) == 3


def test_body_of_wrong_type_is_rejected() -> None:
    with pytest.raises(TemplateError):
        compile_body(12)


def test_no_body_means_default() -> None:
    assert compile_body(None) is None


def test_large_ints_and_odd_floats_still_give_valid_json() -> None:
    template = JsonTemplate.compile(
        {"a": "{{ run.variables.big }}", "b": "{{ run.variables.nan }}"}
    )
    context = {"run": {"variables": {"big": 2**80, "nan": float("nan")}}}
    assert json.loads(template.render(context)) == {"a": 2**80, "b": None}


# --- properties ------------------------------------------------------------------------------

_names = st.sampled_from(
    [
        "event",
        "run",
        "run.id",
        "run.status",
        "run.attempt",
        "run.variables",
        "run.variables.a",
        "run.variables.b.0",
        "pipeline.name",
        "hook.id",
    ]
)
_placeholder = _names.map(lambda n: "{{ " + n + " }}")
# Literal text without braces: every generated template is valid, so rendering is what is tested.
_literal = st.text(st.characters(exclude_characters="{}"), max_size=8)
_text = st.lists(st.one_of(_literal, _placeholder), max_size=6).map("".join)
# URLs: the literal text a URL may hold (printable ASCII, no space).
_url_literal = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="{}"), max_size=8
)
_url_text = st.lists(st.one_of(_url_literal, _placeholder), max_size=6).map("".join)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**90), max_value=2**90),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Lo"]), max_size=4),
)
_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
_templates = st.recursive(
    # A string scalar holding "{{" is not literal text but an unclosed placeholder: compiling
    # refuses it (test_compiling_arbitrary_text_fails_cleanly_or_renders covers that).
    st.one_of(_text, _json_scalars.filter(lambda v: not (isinstance(v, str) and "{{" in v))),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_text, children, max_size=4)
    ),
    max_leaves=12,
)
_contexts = st.fixed_dictionaries(
    {
        "event": _values,
        "run": st.fixed_dictionaries(
            {"id": _values, "status": _values, "attempt": _values, "variables": _values}
        ),
        "pipeline": _values,
        "hook": _values,
    }
)


@settings(max_examples=300, deadline=None)
@given(document=_templates, context=_contexts)
def test_json_rendering_never_crashes_and_is_always_valid_json(document: Any, context: Any) -> None:
    rendered = JsonTemplate.compile(document).render(context)
    json.loads(rendered, parse_constant=_reject_constant)


@settings(max_examples=300, deadline=None)
@given(source=st.text(max_size=40), context=_contexts)
def test_compiling_arbitrary_text_fails_cleanly_or_renders(source: str, context: Any) -> None:
    try:
        template = TextTemplate.compile(source)
    except TemplateError:
        return
    template.render(context)
    assert "\n" not in template.render_header(context)
    try:
        body = compile_body(source)
    except TemplateError:
        return
    if isinstance(body, JsonTemplate):
        json.loads(body.render(context), parse_constant=_reject_constant)


@settings(max_examples=200, deadline=None)
@given(source=_url_text, context=_contexts)
def test_url_values_never_add_path_or_query_structure(source: str, context: Any) -> None:
    template = compile_url("https://example.com/x/" + source)
    literal = "".join(p for p in template.parts if isinstance(p, str))
    try:
        rendered = template.render_url(context)
    except RenderError:
        # Only a path value that is all dots is refused (a dot-segment).
        values = [to_text(lookup(context, p)) for p in template.placeholders]
        assert any(v and not v.strip(".") for v in values)
        return
    for char in "/?#&=":
        assert rendered.count(char) == literal.count(char)


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"invalid JSON constant {name}")


@pytest.mark.parametrize("index", ["9" * 4301, "²", "0" * 19 + "1"])
def test_an_index_no_array_can_have_is_missing_not_an_error(index: str) -> None:
    # int() refuses 4,300 digits and more, and "²" (isdigit() but not a decimal): a ValueError
    # from a hook's template, raised while rendering every delivery of the hook.
    path = ("run", "variables", "items", index)
    assert lookup({"run": {"variables": {"items": [1, 2]}}}, path) is lookup({}, ("x",))


def test_the_sequence_is_a_placeholder_and_stays_a_number() -> None:
    template = JsonTemplate.compile({"seq": "{{ sequence }}", "status": "{{ run.status }}"})
    rendered = template.render({**CONTEXT, "sequence": 9_000_000_001})
    assert json.loads(rendered) == {"seq": 9_000_000_001, "status": "completed"}
