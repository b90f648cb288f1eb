"""Variable definitions: validation, coercion and extraction against real payloads."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.variables import (
    MAX_VARIABLES,
    VARIABLE_TYPES,
    CoercionError,
    VariableExtractionError,
    VariableExtractor,
    VariableSpec,
    coerce,
    parse_variable_specs,
)
from tests.seed import SEED_VARIABLES

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def extractor(variables: list[dict[str, Any]]) -> VariableExtractor:
    specs, errors = parse_variable_specs(variables)
    assert errors == {}
    return VariableExtractor(specs)


def same(actual: Any, expected: Any) -> bool:
    """Equality that also compares types, so 1 == 1.0 == True do not pass for each other."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(actual)
    return bool(actual == expected)


# --- coercion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        ("main", "string", "main"),
        ("", "string", ""),
        (" padded ", "string", " padded "),
        (42, "string", "42"),
        (-7, "string", "-7"),
        (2.5, "string", "2.5"),
        (2.0, "string", "2.0"),
        (1e16, "string", "1e+16"),
        (True, "string", "true"),
        (False, "string", "false"),
        (42, "integer", 42),
        (-3, "integer", -3),
        (2.0, "integer", 2),
        (-0.0, "integer", 0),
        ("42", "integer", 42),
        (" +42 ", "integer", 42),
        ("-0007", "integer", -7),
        (2**63 - 1, "integer", 2**63 - 1),
        (-(2**63), "integer", -(2**63)),
        (str(2**63 - 1), "integer", 2**63 - 1),
        (-9.223372036854776e18, "integer", -(2**63)),
        (42, "number", 42),
        (2.5, "number", 2.5),
        (2.0, "number", 2.0),
        ("42", "number", 42),
        ("-42", "number", -42),
        (2**64 - 1, "number", 2**64 - 1),  # what orjson hands over for a JSON integer
        ("9" * 30, "number", 1e30),  # beyond 64 bits: a float, as a JSON number that large
        (str(2**64 - 1), "number", 2**64 - 1),  # as orjson parses the same JSON integer
        (str(2**64), "number", 1.8446744073709552e19),
        ("2.5", "number", 2.5),
        (" 2.0 ", "number", 2.0),
        (".5", "number", 0.5),
        ("5.", "number", 5.0),
        ("1e3", "number", 1000.0),
        ("-1.5E-2", "number", -0.015),
        (True, "boolean", True),
        (False, "boolean", False),
        ("true", "boolean", True),
        ("TRUE", "boolean", True),
        (" Yes ", "boolean", True),
        ("1", "boolean", True),
        ("false", "boolean", False),
        ("No", "boolean", False),
        ("0", "boolean", False),
        (1, "boolean", True),
        (0, "boolean", False),
        ([], "array", []),
        ([1, "a", None], "array", [1, "a", None]),
        ({}, "object", {}),
        ({"a": [1]}, "object", {"a": [1]}),
    ],
)
def test_coerce(value: Any, type_: str, expected: Any) -> None:
    result = coerce(value, type_)
    assert same(result, expected), (result, expected)


def test_coerce_does_not_copy_containers() -> None:
    value = {"a": [1]}
    assert coerce(value, "object") is value
    assert coerce(value["a"], "array") is value["a"]


@pytest.mark.parametrize(
    ("value", "type_", "message"),
    [
        ({"a": 1}, "string", "expected a string, got an object"),
        ([1], "string", "expected a string, got an array"),
        (None, "string", "expected a string, got null"),
        (math.nan, "string", "expected a string, got nan"),
        (math.inf, "string", "expected a string, got inf"),
        pytest.param(10**5000, "string", "expected a string, got an integer", id="huge-int"),
        (True, "integer", "expected an integer, got true"),
        (2.5, "integer", "expected an integer, got 2.5"),
        (math.inf, "integer", "expected an integer, got inf"),
        (math.nan, "integer", "expected an integer, got nan"),
        ("2.0", "integer", "expected an integer, got '2.0'"),
        ("42abc", "integer", "expected an integer, got '42abc'"),
        ("", "integer", "expected an integer, got ''"),
        ("1_000", "integer", "expected an integer, got '1_000'"),
        ("١٢", "integer", "expected an integer, got '١٢'"),  # non-ASCII digits
        pytest.param("9" * 5000, "integer", "expected an integer, got '9999", id="5000-digits"),
        # Integers are stored and handed to executors as signed 64-bit values.
        ("9" * 30, "integer", "expected an integer that fits in 64 bits, got '9999"),
        (str(2**63), "integer", "expected an integer that fits in 64 bits, got '9223372"),
        (2**63, "integer", "expected an integer that fits in 64 bits, got 9223372"),
        (-1e30, "integer", "expected an integer that fits in 64 bits, got -1e+30"),
        ([1], "integer", "expected an integer, got an array"),
        (None, "integer", "expected an integer, got null"),
        (False, "number", "expected a number, got false"),
        (math.nan, "number", "expected a number, got nan"),
        (-math.inf, "number", "expected a number, got -inf"),
        ("nan", "number", "expected a number, got 'nan'"),
        ("inf", "number", "expected a number, got 'inf'"),
        ("1e999", "number", "expected a number, got '1e999'"),
        ("1,5", "number", "expected a number, got '1,5'"),
        ("0x10", "number", "expected a number, got '0x10'"),
        (".", "number", "expected a number, got '.'"),
        pytest.param("9" * 5000, "number", "expected a number, got '9999", id="5000-digits-n"),
        ({}, "number", "expected a number, got an object"),
        (2, "boolean", "expected a boolean, got 2"),
        (-1, "boolean", "expected a boolean, got -1"),
        (1.0, "boolean", "expected a boolean, got 1.0"),
        ("on", "boolean", "expected a boolean, got 'on'"),
        ("", "boolean", "expected a boolean, got ''"),
        (None, "boolean", "expected a boolean, got null"),
        ([], "boolean", "expected a boolean, got an array"),
        ("[1]", "array", "expected an array, got '[1]'"),
        ({"a": 1}, "array", "expected an array, got an object"),
        (None, "array", "expected an array, got null"),
        ([], "object", "expected an object, got an array"),
        ("{}", "object", "expected an object, got '{}'"),
        (1, "object", "expected an object, got 1"),
        ("x", "datetime", "unknown type 'datetime'; must be one of: array, boolean"),
    ],
)
def test_coerce_errors(value: Any, type_: str, message: str) -> None:
    with pytest.raises(CoercionError) as info:
        coerce(value, type_)
    assert str(info.value).startswith(message)


def test_coercion_error_message_truncates_long_strings() -> None:
    with pytest.raises(CoercionError) as info:
        coerce("x" * 1000, "integer")
    assert str(info.value) == "expected an integer, got '" + "x" * 40 + "...'"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, type_=st.sampled_from(sorted(VARIABLE_TYPES)))
def test_coerce_is_total_and_idempotent(value: Any, type_: str) -> None:
    try:
        result = coerce(value, type_)
    except CoercionError:
        return
    expected_types = {
        "string": (str,),
        "integer": (int,),
        "number": (int, float),
        "boolean": (bool,),
        "array": (list,),
        "object": (dict,),
    }[type_]
    assert isinstance(result, expected_types)
    assert type_ in ("boolean",) or not isinstance(result, bool)
    assert same(coerce(result, type_), result)


# --- validation of settings.variables --------------------------------------------------------


def test_seed_variables_validate() -> None:
    specs, errors = parse_variable_specs(copy.deepcopy(SEED_VARIABLES))
    assert errors == {}
    assert specs == [
        VariableSpec("source_type", "source_type", "string", False, "branch", True),
        VariableSpec("source_ref", "pull_request.head.ref", "string", False, "main", True),
        VariableSpec("pull_request_id", "pull_request.number", "integer", False, None, False),
        VariableSpec("pull_request_title", "pull_request.title", "string", False, None, False),
        VariableSpec("commit_hash", "pull_request.head.sha", "string", False, None, False),
    ]
    assert specs[0].to_json() == {
        "name": "source_type",
        "path": "source_type",
        "type": "string",
        "required": False,
        "default_value": "branch",
    }


def test_empty_list_is_valid() -> None:
    assert parse_variable_specs([]) == ([], {})


def test_minimal_item_and_stored_defaults_are_coerced() -> None:
    specs, errors = parse_variable_specs(
        [
            {"name": "n", "type": "integer", "default_value": "42"},
            {"name": "flag", "type": "boolean", "default_value": "yes", "required": True},
            {"name": "p", "type": "string", "path": None, "required": None, "default_value": None},
            {"name": "q", "type": "object", "path": "$.a[0]['b']"},
        ]
    )
    assert errors == {}
    assert specs[0] == VariableSpec("n", "n", "integer", False, 42, True)
    assert specs[1] == VariableSpec("flag", "flag", "boolean", True, True, True)
    assert specs[2] == VariableSpec("p", "p", "string", False, None, False)
    assert specs[3].path == "$.a[0]['b']"


def test_round_trip_through_to_json() -> None:
    specs, _ = parse_variable_specs(copy.deepcopy(SEED_VARIABLES))
    again, errors = parse_variable_specs([spec.to_json() for spec in specs])
    assert errors == {}
    assert again == specs


F = "settings.variables"
TYPES_MSG = "must be one of: array, boolean, integer, number, object, string"


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (None, {F: ["must be a list"]}),
        ({"name": "x"}, {F: ["must be a list"]}),
        ("[]", {F: ["must be a list"]}),
        (
            [{"name": f"v{i}", "type": "string"} for i in range(MAX_VARIABLES + 1)],
            {F: ["must not have more than 100 items"]},
        ),
        (["x"], {f"{F}.0": ["must be an object"]}),
        ([None], {f"{F}.0": ["must be an object"]}),
        (
            [{"name": "a", "type": "string", "default": "x", "Path": "y"}],
            {f"{F}.0.default": ["unknown field"], f"{F}.0.Path": ["unknown field"]},
        ),
        ([{"type": "string"}], {f"{F}.0.name": ["is required"]}),
        ([{"name": 5, "type": "string"}], {f"{F}.0.name": ["must be a string"]}),
        (
            [{"name": "", "type": "string"}],
            {
                f"{F}.0.name": [
                    "must start with a letter or '_' and contain only letters, digits and '_'"
                ]
            },
        ),
        (
            [{"name": "a" * 61, "type": "string"}],
            {f"{F}.0.name": ["must not be longer than 60 characters"]},
        ),
        (
            [{"name": "1abc", "type": "string", "path": "x"}],
            {
                f"{F}.0.name": [
                    "must start with a letter or '_' and contain only letters, digits and '_'"
                ]
            },
        ),
        (
            [{"name": "source-ref", "type": "string", "path": "x"}],
            {
                f"{F}.0.name": [
                    "must start with a letter or '_' and contain only letters, digits and '_'"
                ]
            },
        ),
        (
            [
                {"name": "source_ref", "type": "string"},
                {"name": "other", "type": "string"},
                {"name": "Source_Ref", "type": "string"},
            ],
            {f"{F}.2.name": [f"duplicates the name of {F}.0 (names are case-insensitive)"]},
        ),
        ([{"name": "a"}], {f"{F}.0.type": ["is required"]}),
        ([{"name": "a", "type": "str"}], {f"{F}.0.type": [TYPES_MSG]}),
        ([{"name": "a", "type": "String"}], {f"{F}.0.type": [TYPES_MSG]}),
        ([{"name": "a", "type": ["string"]}], {f"{F}.0.type": [TYPES_MSG]}),
        (
            [{"name": "a", "type": "string", "path": "a..b"}],
            {
                f"{F}.0.path": [
                    "invalid path 'a..b': empty segment at position 1 "
                    "(recursive descent needs JSONPath, e.g. '$..name')"
                ]
            },
        ),
        (
            [{"name": "a", "type": "string", "path": "$["}],
            {f"{F}.0.path": ["invalid JSONPath '$[': Parse error near the end of string!"]},
        ),
        (
            [{"name": "a", "type": "string", "path": ""}],
            {f"{F}.0.path": ["path is empty"]},
        ),
        (
            [{"name": "a", "type": "string", "path": 3}],
            {f"{F}.0.path": ["path must be a string, got int"]},
        ),
        (
            [{"name": "a", "type": "string", "required": "yes"}],
            {f"{F}.0.required": ["must be a boolean"]},
        ),
        (
            [{"name": "a", "type": "string", "required": 1}],
            {f"{F}.0.required": ["must be a boolean"]},
        ),
        (
            [{"name": "a", "type": "integer", "default_value": "main"}],
            {
                f"{F}.0.default_value": [
                    "does not match type integer: expected an integer, got 'main'"
                ]
            },
        ),
        (
            [{"name": "a", "type": "string", "default_value": {"x": 1}}],
            {
                f"{F}.0.default_value": [
                    "does not match type string: expected a string, got an object"
                ]
            },
        ),
        (
            [{"name": "a", "type": "array", "default_value": "x,y"}],
            {f"{F}.0.default_value": ["does not match type array: expected an array, got 'x,y'"]},
        ),
        (
            # every problem of one item, and problems in several items, are all reported
            [
                {"name": "ok", "type": "string"},
                {"name": "bad name", "type": "nope", "path": "a b", "required": 0, "x": 1},
                {"name": "OK", "type": "integer", "default_value": 1.5},
            ],
            {
                f"{F}.1.x": ["unknown field"],
                f"{F}.1.name": [
                    "must start with a letter or '_' and contain only letters, digits and '_'"
                ],
                f"{F}.1.type": [TYPES_MSG],
                f"{F}.1.path": [
                    "invalid path 'a b': segment 'a b' may contain only letters, digits, '_',"
                    " '-' and '@'; use JSONPath for other keys, e.g. $['a key']"
                ],
                f"{F}.1.required": ["must be a boolean"],
                f"{F}.2.name": [f"duplicates the name of {F}.0 (names are case-insensitive)"],
                f"{F}.2.default_value": [
                    "does not match type integer: expected an integer, got 1.5"
                ],
            },
        ),
    ],
)
def test_validation_errors(raw: Any, errors: dict[str, list[str]]) -> None:
    specs, got = parse_variable_specs(raw)
    assert got == errors
    assert len(specs) < (len(raw) if isinstance(raw, list) else 1)


def test_valid_items_are_still_returned_next_to_errors() -> None:
    specs, errors = parse_variable_specs(
        [{"name": "good", "type": "string"}, {"name": "bad", "type": "nope"}]
    )
    assert [s.name for s in specs] == ["good"]
    assert list(errors) == [f"{F}.1.type"]


def test_custom_field_prefix() -> None:
    _, errors = parse_variable_specs([{"name": "a"}], field="variables")
    assert errors == {"variables.0.type": ["is required"]}


# Definitions that are well formed but for their name's uniqueness: without them, a drawn
# list was never accepted unless empty, and the checks under "if not errors" never ran.
WELL_FORMED_VARIABLES = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["ref", "Ref", "sha", "n", "_x"]),
            "path": st.sampled_from(["ref", "a.b", "$.commits[0].id", "n"]),
            "type": st.sampled_from(["string", "integer", "number", "boolean", "array"]),
        },
        optional={"required": st.booleans()},
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(
        st.dictionaries(
            st.sampled_from(["name", "path", "type", "required", "default_value", "other"]),
            JSON_VALUES,
        ),
        max_size=4,
    )
    | WELL_FORMED_VARIABLES
    | JSON_VALUES
)
def test_validation_never_raises(raw: Any) -> None:
    specs, errors = parse_variable_specs(raw)
    assert all(key.startswith(F) for key in errors)
    assert all(msgs and all(isinstance(m, str) for m in msgs) for msgs in errors.values())
    names = [spec.name.upper() for spec in specs]
    assert len(names) == len(set(names))
    if not errors:
        assert isinstance(raw, list)
        assert len(specs) == len(raw)
    VariableExtractor(specs)  # every returned spec compiles


# --- extraction ------------------------------------------------------------------------------


def test_seed_variables_on_github_pull_request_opened() -> None:
    payload = load("github/pull_request.opened.json")
    variables = extractor(copy.deepcopy(SEED_VARIABLES)).extract(payload)
    assert variables == {
        "source_type": "branch",  # not in the payload: the default
        "source_ref": "changes",
        "pull_request_id": 2,
        "pull_request_title": "Update the README with new information.",
        "commit_hash": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
    }
    assert type(variables["pull_request_id"]) is int
    assert list(variables) == [v["name"] for v in SEED_VARIABLES]


def test_seed_variables_on_a_push_use_defaults_and_none() -> None:
    # A push has no pull_request: defaults where given, None for the optional rest.
    variables = extractor(copy.deepcopy(SEED_VARIABLES)).extract(load("github/push.json"))
    assert variables == {
        "source_type": "branch",
        "source_ref": "main",
        "pull_request_id": None,
        "pull_request_title": None,
        "commit_hash": None,
    }


def test_gitlab_merge_request() -> None:
    payload = load("gitlab/merge_request.docs.json")
    variables = extractor(
        [
            {"name": "kind", "path": "object_kind", "type": "string", "required": True},
            {"name": "mr_iid", "path": "object_attributes.iid", "type": "integer"},
            {"name": "mr_id", "path": "$.object_attributes.id", "type": "string"},
            {"name": "title", "path": "object_attributes.title", "type": "string"},
            {"name": "source_ref", "path": "object_attributes.source_branch", "type": "string"},
            {"name": "target_ref", "path": "object_attributes.target_branch", "type": "string"},
            {"name": "commit_hash", "path": "object_attributes.last_commit.id", "type": "string"},
            {"name": "draft", "path": "object_attributes.work_in_progress", "type": "boolean"},
            {"name": "project", "path": "project.path_with_namespace", "type": "string"},
            {"name": "labels", "path": "$.labels[*].title", "type": "array"},
            {"name": "first_label", "path": "$.labels[*].title", "type": "string"},
            {"name": "changes", "path": "changes", "type": "object"},
        ]
    ).extract(payload)
    assert variables == {
        "kind": "merge_request",
        "mr_iid": 1,
        "mr_id": "99",
        "title": "MS-Viewport",
        "source_ref": "ms-viewport",
        "target_ref": "master",
        "commit_hash": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "draft": False,
        "project": "gitlabhq/gitlab-test",
        "labels": ["API"],
        "first_label": "API",
        "changes": payload["changes"],
    }


def test_bitbucket_pullrequest_fulfilled() -> None:
    payload = load("bitbucket/pullrequest_fulfilled.json")
    variables = extractor(
        [
            {"name": "pull_request_id", "path": "pullrequest.id", "type": "integer"},
            {"name": "title", "path": "pullrequest.title", "type": "string"},
            {"name": "state", "path": "pullrequest.state", "type": "string"},
            {"name": "source_ref", "path": "pullrequest.source.branch.name", "type": "string"},
            {"name": "target_ref", "path": "pullrequest.destination.branch.name", "type": "string"},
            {"name": "commit_hash", "path": "pullrequest.merge_commit.hash", "type": "string"},
            {"name": "repository", "path": "$['repository']['full_name']", "type": "string"},
        ]
    ).extract(payload)
    assert variables == {
        "pull_request_id": 6,
        "title": "[Feat] Integrate branch gmacario/dev03",
        "state": "MERGED",
        "source_ref": "gmacario/dev03",
        "target_ref": "main",
        "commit_hash": "6ca069123978",
        "repository": "arolgroup/j0664-ns2-firmware",
    }


def test_every_missing_and_uncoercible_variable_is_reported() -> None:
    payload = load("github/pull_request.opened.json")
    ext = extractor(
        [
            {"name": "pull_request_id", "path": "pull_request.number", "type": "integer"},
            {
                "name": "deploy_env",
                "path": "inputs.environment",
                "type": "string",
                "required": True,
            },
            {"name": "release", "path": "release.tag_name", "type": "string", "required": True},
            {
                "name": "merged_by",
                "path": "pull_request.merged_by",
                "type": "object",
                "required": True,
            },  # JSON null counts as missing
            {"name": "title_as_int", "path": "pull_request.title", "type": "integer"},
            {
                "name": "labels",
                "path": "pull_request.labels",
                "type": "object",
                "default_value": {},
            },  # present: the default is not a fallback for bad types
        ]
    )
    with pytest.raises(VariableExtractionError) as info:
        ext.extract(payload)
    assert info.value.errors == {
        "deploy_env": ["is required but missing at path 'inputs.environment'"],
        "release": ["is required but missing at path 'release.tag_name'"],
        "merged_by": ["is required but missing at path 'pull_request.merged_by'"],
        "title_as_int": [
            "invalid value at path 'pull_request.title': "
            "expected an integer, got 'Update the README with new information.'"
        ],
        "labels": ["invalid value at path 'pull_request.labels': expected an object, got an array"],
    }
    message = str(info.value)
    assert message.startswith("5 variable(s) could not be extracted: deploy_env: is required")
    for name in ("deploy_env", "release", "merged_by", "title_as_int", "labels"):
        assert f"{name}: " in message


def test_null_is_absent_and_default_applies() -> None:
    payload = load("github/push.json")  # tag deletion: head_commit is null
    assert payload["head_commit"] is None
    ext = extractor(
        [
            {"name": "head", "path": "head_commit", "type": "object", "default_value": {"id": ""}},
            {"name": "head_id", "path": "head_commit.id", "type": "string"},
            {"name": "deleted", "path": "deleted", "type": "boolean", "required": True},
            {"name": "commits", "path": "commits", "type": "array", "required": True},
        ]
    )
    assert ext.extract(payload) == {
        "head": {"id": ""},
        "head_id": None,
        "deleted": True,
        "commits": [],  # an empty array is a value, not "missing"
    }


def test_container_defaults_are_not_shared_between_requests() -> None:
    ext = extractor([{"name": "tags", "type": "array", "default_value": ["a"]}])
    first = ext.extract({})
    first["tags"].append("mutated")
    assert ext.extract({}) == {"tags": ["a"]}


def test_multiple_matches() -> None:
    payload = {"commits": [{"id": "c1", "n": "1"}, {"id": "c2", "n": "2"}], "empty": []}
    ext = extractor(
        [
            {"name": "ids", "path": "$.commits[*].id", "type": "array"},
            {"name": "first_id", "path": "$.commits[*].id", "type": "string"},
            {"name": "first_n", "path": "$..n", "type": "integer"},
            {"name": "commits", "path": "commits", "type": "array"},
            {"name": "commits_jp", "path": "$.commits", "type": "array"},
            {"name": "none", "path": "$.empty[*]", "type": "array", "default_value": ["d"]},
            {"name": "none_opt", "path": "$.empty[*].x", "type": "array"},
        ]
    )
    assert ext.extract(payload) == {
        "ids": ["c1", "c2"],
        "first_id": "c1",
        "first_n": 1,
        "commits": payload["commits"],  # a singular path yields the array itself
        "commits_jp": payload["commits"],
        "none": ["d"],  # no match at all is "absent"
        "none_opt": None,
    }


def test_empty_extractor() -> None:
    assert VariableExtractor([]).extract({"a": 1}) == {}


def test_extraction_error_is_not_a_value_error() -> None:
    # The ingest handler maps it to 422; it must not be caught as a generic ValueError.
    assert not issubclass(VariableExtractionError, ValueError)
    assert issubclass(CoercionError, ValueError)


ALL_KINDS: list[dict[str, Any]] = [
    {"name": f"{t}_{i}", "path": path, "type": t, "required": required}
    for i, (path, required) in enumerate(
        [("a", False), ("a.b", True), ("$.a[*]", False), ("$..b", True), ("$[0]", False)]
    )
    for t in sorted(VARIABLE_TYPES)
]


@settings(max_examples=300, deadline=None)
@given(
    payload=JSON_VALUES
    | st.dictionaries(st.sampled_from(["a", "b"]), JSON_VALUES)
    # Values the types coerce from text, where one level down a wrong result would show.
    | st.dictionaries(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["7", "-2", "2.5", "true", "false", "x"])
        | st.dictionaries(st.just("b"), st.sampled_from(["7", "2.5", "true"])),
    )
)
def test_extract_never_raises_anything_else(payload: Any) -> None:
    ext = extractor(ALL_KINDS)
    try:
        ext.extract(payload)
    except VariableExtractionError as exc:
        assert exc.errors
        assert set(exc.errors) <= {v["name"] for v in ALL_KINDS}
    # All kinds at once can never succeed ('a' and a required 'a.b' of every type): the values
    # are checked one definition at a time, which a payload can satisfy.
    for spec in ALL_KINDS:
        try:
            variables = extractor([spec]).extract(payload)
        except VariableExtractionError as exc:
            assert list(exc.errors) == [spec["name"]]
            continue
        assert list(variables) == [spec["name"]]
        value = variables[spec["name"]]
        assert value is None or same(coerce(value, spec["type"]), value)
