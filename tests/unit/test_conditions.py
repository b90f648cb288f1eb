"""trigger_when.conditions: validation, type-aware matching and skip reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.conditions import (
    MAX_ACCEPTED_VALUES,
    MAX_CONDITIONS,
    ConditionSet,
    parse_trigger_when,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def conditions(*items: dict[str, Any]) -> ConditionSet:
    parsed, errors = parse_trigger_when({"conditions": list(items)})
    assert errors == {}
    assert len(parsed) == len(items)
    return parsed


MERGED = {"path": "pull_request.merged", "accepted_values": [True]}


# --- real payloads ---------------------------------------------------------------------------


def test_merged_condition_on_closed_vs_closed_merged() -> None:
    closed = load("github/pull_request.closed.json")
    merged = load("github/pull_request.closed.merged.json")
    assert closed["action"] == merged["action"] == "closed"  # only `merged` tells them apart
    only_merged = conditions(MERGED)
    assert only_merged.evaluate(merged) is None
    assert only_merged.evaluate(closed) == (
        "condition 0: value at 'pull_request.merged' is false, accepted: [true]"
    )


def test_all_conditions_must_match() -> None:
    merged = load("github/pull_request.closed.merged.json")
    both = conditions(
        {"path": "action", "accepted_values": ["closed"]},
        MERGED,
        {"path": "$.pull_request.base.ref", "accepted_values": ["main", "master"]},
    )
    assert both.evaluate(merged) is None
    wrong_base = conditions(
        {"path": "action", "accepted_values": ["closed"]},
        MERGED,
        {"path": "pull_request.base.ref", "accepted_values": ["main", "release"]},
    )
    assert wrong_base.evaluate(merged) == (
        'condition 2: value at \'pull_request.base.ref\' is "master", accepted: ["main", "release"]'
    )


def test_opened_pull_request_is_not_a_merge() -> None:
    opened = load("github/pull_request.opened.json")
    assert conditions({"path": "action", "accepted_values": ["closed"]}, MERGED).evaluate(
        opened
    ) == ('condition 0: value at \'action\' is "opened", accepted: ["closed"]')


def test_missing_value() -> None:
    push = load("github/push.json")
    assert conditions(MERGED).evaluate(push) == (
        "condition 0: value at 'pull_request.merged' is missing, accepted: [true]"
    )


def test_wildcard_matches_if_any_value_is_accepted() -> None:
    opened = load("github/pull_request.opened.json")
    labels = "$.pull_request.labels[*].name"
    assert conditions({"path": labels, "accepted_values": ["bug"]}).evaluate(opened) is None
    assert conditions({"path": labels, "accepted_values": ["deploy"]}).evaluate(opened) == (
        'condition 0: values at \'$.pull_request.labels[*].name\' are ["bug"], accepted: ["deploy"]'
    )
    several = {"pull_request": {"labels": [{"name": "bug"}, {"name": "deploy"}, {}]}}
    assert conditions({"path": labels, "accepted_values": ["deploy"]}).evaluate(several) is None
    assert conditions({"path": labels, "accepted_values": ["x"]}).evaluate(several) == (
        'condition 0: values at \'$.pull_request.labels[*].name\' are ["bug", "deploy"], '
        'accepted: ["x"]'
    )
    assert conditions({"path": "$.none[*]", "accepted_values": [None]}).evaluate(opened) == (
        "condition 0: value at '$.none[*]' is missing, accepted: [null]"
    )


def test_gitlab_and_bitbucket_merges() -> None:
    gitlab = load("gitlab/merge_request.docs.json")
    bitbucket = load("bitbucket/pullrequest_fulfilled.json")
    gl = conditions(
        {"path": "object_kind", "accepted_values": ["merge_request"]},
        {"path": "object_attributes.action", "accepted_values": ["merge"]},
    )
    assert gl.evaluate(gitlab) == (
        'condition 1: value at \'object_attributes.action\' is "open", accepted: ["merge"]'
    )
    bb = conditions({"path": "pullrequest.state", "accepted_values": ["MERGED"]})
    assert bb.evaluate(bitbucket) is None


# --- type-aware equality ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "value", "matches"),
    [
        ([True], True, True),
        ([True], 1, False),
        ([1], True, False),
        ([0], False, False),
        ([False], 0, False),
        ([1], 1, True),
        ([1], 1.0, True),
        ([1.0], 1, True),
        ([0], -0.0, True),
        ([2.5], 2.5, True),
        ([1], "1", False),
        (["1"], 1, False),
        (["main"], "main", True),
        (["main"], "Main", False),
        (["main"], "main ", False),
        ([None], None, True),
        ([None], "null", False),
        ([None], False, False),
        ([None], 0, False),
        (["null"], None, False),
        ([""], "", True),
        ([""], None, False),
        ([1, "a", None], "a", True),
        (["a"], ["a"], False),
        ([1], [1], False),
        (["a"], {"a": 1}, False),
        ([9007199254740993], 9007199254740992.0, False),  # exact, not float-rounded
    ],
)
def test_type_aware_matching(accepted: list[Any], value: Any, matches: bool) -> None:
    cs = conditions({"path": "v", "accepted_values": accepted})
    assert (cs.evaluate({"v": value}) is None) is matches


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (False, "false"),
        (None, "null"),
        (3, "3"),
        (2.5, "2.5"),
        ("x" * 100, json.dumps("x" * 60 + "...")),
        ({"a": 1}, "an object"),
        ([1, 2], "an array"),
        ("é", '"é"'),
    ],
)
def test_reason_renders_values_compactly(value: Any, shown: str) -> None:
    cs = conditions({"path": "v", "accepted_values": [True]})
    assert cs.evaluate({"v": value}) == f"condition 0: value at 'v' is {shown}, accepted: [true]"


def test_reason_lists_at_most_ten_accepted_values() -> None:
    cs = conditions({"path": "v", "accepted_values": list(range(12))})
    assert cs.evaluate({"v": 99}) == (
        "condition 0: value at 'v' is 99, accepted: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... 2 more]"
    )


# --- empty and normalized forms -------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}, {"conditions": []}, {"conditions": None}])
def test_absent_or_empty_always_matches(raw: Any) -> None:
    cs, errors = parse_trigger_when(raw)
    assert errors == {}
    assert len(cs) == 0
    payloads: list[Any] = [{}, None, [], "x", load("github/push.json")]
    for payload in payloads:
        assert cs.evaluate(payload) is None
    assert cs.to_json() == {"conditions": []}


def test_to_json_and_from_json_round_trip() -> None:
    raw = {
        "conditions": [
            {"accepted_values": [True], "path": "pull_request.merged"},
            {"path": "$.ref", "accepted_values": ["refs/heads/main", None, 1.5]},
        ]
    }
    cs, errors = parse_trigger_when(raw)
    assert errors == {}
    stored = cs.to_json()
    assert stored == {
        "conditions": [
            {"path": "pull_request.merged", "accepted_values": [True]},
            {"path": "$.ref", "accepted_values": ["refs/heads/main", None, 1.5]},
        ]
    }
    again = ConditionSet.from_json(json.loads(json.dumps(stored)))
    assert again.to_json() == stored
    assert again.evaluate({"pull_request": {"merged": True}, "ref": None}) is None


def test_from_json_rejects_invalid_storage() -> None:
    with pytest.raises(ValueError, match="invalid stored trigger_when"):
        ConditionSet.from_json({"conditions": [{"path": "a..b", "accepted_values": [1]}]})


def test_extra_keys_are_left_to_the_caller() -> None:
    raw = {"events": ["run.completed"], "conditions": [MERGED]}
    assert parse_trigger_when(raw)[1] == {"trigger_when.events": ["unknown field"]}
    cs, errors = parse_trigger_when(raw, extra_keys={"events"})
    assert errors == {}
    assert len(cs) == 1
    assert len(ConditionSet.from_json(raw, extra_keys=("events",))) == 1
    with pytest.raises(ValueError, match=r"trigger_when\.events"):
        ConditionSet.from_json(raw)


# --- validation ------------------------------------------------------------------------------

T = "trigger_when"
C = "trigger_when.conditions"
SCALAR_MSG = "must be a string, a finite number, a boolean or null"


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        ([], {T: ["must be an object"]}),
        ("x", {T: ["must be an object"]}),
        ({"condition": []}, {f"{T}.condition": ["unknown field"]}),
        ({"conditions": {}}, {C: ["must be a list"]}),
        ({"conditions": "a"}, {C: ["must be a list"]}),
        (
            {"conditions": [MERGED] * (MAX_CONDITIONS + 1)},
            {C: [f"must not have more than {MAX_CONDITIONS} items"]},
        ),
        ({"conditions": [None]}, {f"{C}.0": ["must be an object"]}),
        ({"conditions": [MERGED, ["x"]]}, {f"{C}.1": ["must be an object"]}),
        (
            {"conditions": [{"accepted_values": [1]}]},
            {f"{C}.0.path": ["is required"]},
        ),
        (
            {"conditions": [{"path": "a..b", "accepted_values": [1]}]},
            {
                f"{C}.0.path": [
                    "invalid path 'a..b': empty segment at position 1 "
                    "(recursive descent needs JSONPath, e.g. '$..name')"
                ]
            },
        ),
        (
            {"conditions": [{"path": "$[", "accepted_values": [1]}]},
            {f"{C}.0.path": ["invalid JSONPath '$[': Parse error near the end of string!"]},
        ),
        (
            {"conditions": [{"path": 1, "accepted_values": [1]}]},
            {f"{C}.0.path": ["path must be a string, got int"]},
        ),
        ({"conditions": [{"path": "a"}]}, {f"{C}.0.accepted_values": ["must be a non-empty list"]}),
        (
            {"conditions": [{"path": "a", "accepted_values": []}]},
            {f"{C}.0.accepted_values": ["must be a non-empty list"]},
        ),
        (
            {"conditions": [{"path": "a", "accepted_values": True}]},
            {f"{C}.0.accepted_values": ["must be a non-empty list"]},
        ),
        (
            {
                "conditions": [
                    {"path": "a", "accepted_values": list(range(MAX_ACCEPTED_VALUES + 1))}
                ]
            },
            {f"{C}.0.accepted_values": [f"must not have more than {MAX_ACCEPTED_VALUES} items"]},
        ),
        (
            {"conditions": [{"path": "a", "accepted_values": ["ok", [1], {"a": 1}, float("nan")]}]},
            {
                f"{C}.0.accepted_values.1": [SCALAR_MSG],
                f"{C}.0.accepted_values.2": [SCALAR_MSG],
                f"{C}.0.accepted_values.3": [SCALAR_MSG],
            },
        ),
        (
            {"conditions": [{"path": "a", "accepted_values": [float("inf")]}]},
            {f"{C}.0.accepted_values.0": [SCALAR_MSG]},
        ),
        (
            {"conditions": [{"path": "a", "accepted_values": [1], "value": 1, "op": "=="}]},
            {f"{C}.0.value": ["unknown field"], f"{C}.0.op": ["unknown field"]},
        ),
        (
            {"x": 1, "conditions": [MERGED, {"path": "", "accepted_values": None}]},
            {
                f"{T}.x": ["unknown field"],
                f"{C}.1.path": ["path is empty"],
                f"{C}.1.accepted_values": ["must be a non-empty list"],
            },
        ),
    ],
)
def test_validation_errors(raw: Any, errors: dict[str, list[str]]) -> None:
    _, got = parse_trigger_when(raw)
    assert got == errors


def test_custom_field_prefix() -> None:
    _, errors = parse_trigger_when({"conditions": [{"path": "a"}]}, field="outgoing.trigger_when")
    assert errors == {
        "outgoing.trigger_when.conditions.0.accepted_values": ["must be a non-empty list"]
    }


# --- property: evaluate never raises ------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=10,
)
SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
CONDITION_SET = conditions(
    {"path": "a", "accepted_values": [1, True, None, "x"]},
    {"path": "a.b.0", "accepted_values": [False]},
    {"path": "$..c", "accepted_values": ["x", 2.5]},
    {"path": "$.a[?@.b > 1]", "accepted_values": [1]},
    {"path": "$.a.`sorted`", "accepted_values": ["y"]},
)


@settings(max_examples=300, deadline=None)
@given(payload=JSON_VALUES)
def test_evaluate_never_raises(payload: Any) -> None:
    reason = CONDITION_SET.evaluate(payload)
    assert reason is None or reason.startswith("condition ")


@settings(max_examples=200, deadline=None)
@given(value=SCALARS, accepted=st.lists(SCALARS, min_size=1, max_size=4))
def test_matching_agrees_with_typed_equality(value: Any, accepted: list[Any]) -> None:
    def kind(v: Any) -> str:
        return "bool" if isinstance(v, bool) else type(v).__name__

    expected = any(kind(value) == kind(a) and value == a for a in accepted)
    cs = conditions({"path": "v", "accepted_values": accepted})
    assert (cs.evaluate({"v": value}) is None) is expected
