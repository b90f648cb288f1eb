"""The permission catalogue: known strings, implication rules, role validation."""

from __future__ import annotations

import pytest

from gateway.permissions_catalog import (
    PERMISSIONS,
    closure,
    implied_by,
    sort_permissions,
    validate_role_permissions,
)


def test_catalogue_is_exactly_the_documented_strings() -> None:
    assert set(PERMISSIONS) == {
        "environment:read",
        "application:read",
        "pipeline:create",
        "pipeline:read",
        "pipeline:update",
        "pipeline:delete",
        "hook:create",
        "hook:read",
        "hook:update",
        "hook:delete",
        "run:read",
        "run:execute",
    }
    assert len(PERMISSIONS) == len(set(PERMISSIONS))


@pytest.mark.parametrize(
    ("permission", "needs"),
    [
        ("environment:read", []),
        ("application:read", ["environment:read"]),
        ("run:read", ["environment:read"]),
        ("hook:read", ["environment:read"]),
        ("hook:create", ["environment:read", "hook:read"]),
        ("hook:update", ["environment:read", "hook:read"]),
        ("hook:delete", ["environment:read", "hook:read", "hook:update"]),
        ("pipeline:create", ["environment:read", "pipeline:read"]),
        ("pipeline:update", ["environment:read", "pipeline:read"]),
        ("pipeline:delete", ["environment:read", "pipeline:read", "pipeline:update"]),
        ("run:execute", ["environment:read", "run:read"]),
    ],
)
def test_implications(permission: str, needs: list[str]) -> None:
    assert implied_by(permission) == needs


def test_every_implied_permission_is_in_the_catalogue() -> None:
    for permission in PERMISSIONS:
        assert set(implied_by(permission)) <= set(PERMISSIONS)
        assert permission not in implied_by(permission)


def test_closure_of_the_seed_permissions() -> None:
    assert closure(["application:read", "hook:create"]) == [
        "environment:read",
        "application:read",
        "hook:create",
        "hook:read",
    ]


def test_closed_sets_validate_and_come_back_sorted() -> None:
    for permission in PERMISSIONS:
        given = list(reversed(closure([permission])))
        assert validate_role_permissions(given) == (closure([permission]), [])
    assert validate_role_permissions(list(PERMISSIONS)) == (list(PERMISSIONS), [])


def test_duplicates_are_tolerated() -> None:
    assert validate_role_permissions(["environment:read", "environment:read"]) == (
        ["environment:read"],
        [],
    )


def test_missing_implied_permission_is_named() -> None:
    _, errors = validate_role_permissions(["environment:read", "hook:create"])
    assert errors == [
        "'hook:create' requires 'hook:read'; add the implied permission(s) to the role"
    ]


def test_delete_without_update_names_both_missing() -> None:
    _, errors = validate_role_permissions(["hook:delete"])
    assert errors == [
        "'hook:delete' requires 'environment:read', 'hook:read', 'hook:update'; "
        "add the implied permission(s) to the role"
    ]


def test_run_execute_needs_run_read() -> None:
    _, errors = validate_role_permissions(["environment:read", "run:execute"])
    assert errors == [
        "'run:execute' requires 'run:read'; add the implied permission(s) to the role"
    ]


def test_unknown_permission_lists_the_allowed_ones() -> None:
    known, errors = validate_role_permissions(["environment:read", "hook:View", 7])
    assert known == ["environment:read"]
    assert errors[0] == "every permission must be a string"
    assert errors[1].startswith("unknown permission 'hook:View'; allowed: environment:read, ")
    assert all(p in errors[1] for p in PERMISSIONS)


def test_many_unknown_permissions_make_one_bounded_message() -> None:
    # 15,000 unknown strings gave 15,000 messages, each with the whole catalogue: 3.9 MB.
    _, errors = validate_role_permissions([f"p{i}" for i in range(12)])
    assert errors == [
        "unknown permissions 'p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8', 'p9' "
        f"(and 2 more); allowed: {', '.join(PERMISSIONS)}"
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must name at least one permission (e.g. 'environment:read')"),
        (["x"] * 101, f"must have at most 100 items (there are {len(PERMISSIONS)} permissions)"),
        ("hook:read", "must be an array of permission strings"),
        (None, "must be an array of permission strings"),
        ({"hook:read": True}, "must be an array of permission strings"),
    ],
)
def test_shape_errors(raw: object, message: str) -> None:
    assert validate_role_permissions(raw) == ([], [message])


def test_a_role_may_list_exactly_the_limit_of_items() -> None:
    # Duplicates are removed, so 100 items (the limit itself) are still accepted.
    raw = ["environment:read", "hook:read"] * 50
    assert len(raw) == 100
    assert validate_role_permissions(raw) == (["environment:read", "hook:read"], [])


def test_sort_permissions_puts_unknown_last() -> None:
    assert sort_permissions(["x:y", "hook:read", "environment:read"]) == [
        "environment:read",
        "hook:read",
        "x:y",
    ]
