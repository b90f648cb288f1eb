"""A 422 stays small whatever the body: ValidationFailed lists a bounded number of fields and
says how many more, and unknown keys are counted without being collected."""

from __future__ import annotations

from gateway.http import MAX_FIELD_NAME_CHARS, MAX_LISTED_FIELDS, ValidationFailed
from gateway.unknown_fields import MAX_LISTED_UNKNOWN, add_unknown_keys, unknown_keys


def test_validation_failed_lists_the_first_fields_and_counts_the_rest() -> None:
    errors = {f"f{i}": ["bad"] for i in range(MAX_LISTED_FIELDS + 70)}
    failed = ValidationFailed(errors, more=5)
    assert failed.errors is not None and list(failed.errors) == list(errors)[:MAX_LISTED_FIELDS]
    assert failed.message.endswith(", f49 and 75 more")


def test_validation_failed_shortens_a_huge_field_name() -> None:
    failed = ValidationFailed({"k" * 1_000_000: ["unknown field"]})
    assert failed.errors is not None
    [name] = failed.errors
    assert len(name) == MAX_FIELD_NAME_CHARS and name.endswith("…")
    assert len(failed.message) < 300


def test_few_problems_are_all_named_as_before() -> None:
    failed = ValidationFailed({"a": ["x"], "b": ["y"]})
    assert failed.message == "The given data was invalid: a, b"
    assert failed.errors == {"a": ["x"], "b": ["y"]}


def test_unknown_keys_names_the_first_and_counts_the_others() -> None:
    body = {"name": 1, **{f"k{i}": 0 for i in range(1000)}}
    names, more = unknown_keys(body, frozenset({"name", "path"}))
    assert names == [f"k{i}" for i in range(MAX_LISTED_UNKNOWN)]
    assert more == 1000 - MAX_LISTED_UNKNOWN
    assert unknown_keys({"name": 1}, frozenset({"name"})) == ([], 0)


def test_add_unknown_keys_sums_up_what_it_does_not_list() -> None:
    errors: dict[str, list[str]] = {}
    add_unknown_keys(errors, {f"k{i}": 0 for i in range(12)}, frozenset(), "settings.x")
    assert len(errors) == MAX_LISTED_UNKNOWN + 1
    assert errors["settings.x"] == ["2 more unknown fields not listed"]
