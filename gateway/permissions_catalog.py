"""The permission strings a role may grant, and which permissions imply which (pure).

Roles are sets of ``resource:verb`` strings. A role must be *closed* under the implication
rules below: naming ``hook:delete`` without ``hook:update`` is rejected rather than silently
widened, so what an administrator reads in a role is exactly what it grants.

Rules (each permission needs the ones listed; the relation is transitive):

- ``<resource>:create`` and ``<resource>:update`` need ``<resource>:read``;
  ``<resource>:delete`` needs ``<resource>:update`` (for ``pipeline`` and ``hook``).
- ``run:execute`` needs ``run:read``.
- Every permission other than ``environment:read`` needs ``environment:read``: acting on
  anything inside an environment presupposes seeing the environment. Together with "a role is
  never empty", a team linked to an environment always grants ``environment:read`` there, so
  "the environment is visible to the user" (404 otherwise) and "the user holds
  ``environment:read``" are the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ENVIRONMENT_READ = "environment:read"

# Declaration order is the order used in messages and listings.
PERMISSIONS: tuple[str, ...] = (
    ENVIRONMENT_READ,
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
)
_ORDER = {p: i for i, p in enumerate(PERMISSIONS)}

# Direct requirements only; ``implied_by`` follows them transitively.
_NEEDS: Mapping[str, tuple[str, ...]] = {
    "pipeline:create": ("pipeline:read",),
    "pipeline:update": ("pipeline:read",),
    "pipeline:delete": ("pipeline:update",),
    "hook:create": ("hook:read",),
    "hook:update": ("hook:read",),
    "hook:delete": ("hook:update",),
    "run:execute": ("run:read",),
}


def _direct_needs(permission: str) -> tuple[str, ...]:
    base = () if permission == ENVIRONMENT_READ else (ENVIRONMENT_READ,)
    return base + _NEEDS.get(permission, ())


def sort_permissions(permissions: Iterable[str]) -> list[str]:
    """Known permissions in catalogue order (duplicates removed)."""
    return sorted(set(permissions), key=lambda p: _ORDER.get(p, len(_ORDER)))


def implied_by(permission: str) -> list[str]:
    """Every permission ``permission`` needs, transitively (itself excluded), in catalogue order."""
    seen: set[str] = set()
    pending = list(_direct_needs(permission))
    while pending:
        needed = pending.pop()
        if needed not in seen:
            seen.add(needed)
            pending.extend(_direct_needs(needed))
    return sort_permissions(seen)


def closure(permissions: Iterable[str]) -> list[str]:
    """The given permissions plus everything they imply, in catalogue order."""
    given = set(permissions)
    for permission in list(given):
        given.update(implied_by(permission))
    return sort_permissions(given)


# Duplicates are tolerated (and removed), so a role may list a few more items than there are
# permissions, but not without bound.
MAX_ROLE_ITEMS = 100


def validate_role_permissions(raw: object) -> tuple[list[str], list[str]]:
    """(normalised permissions, error messages) for a role's ``permissions`` field.

    Errors name every unknown string (with the allowed ones) and every missing implied
    permission (with the permission that needs it); duplicates are tolerated and removed.
    """
    if not isinstance(raw, list):
        return [], ["must be an array of permission strings"]
    if len(raw) > MAX_ROLE_ITEMS:  # else one message per item: megabytes of 422
        return [], [
            f"must have at most {MAX_ROLE_ITEMS} items (there are {len(PERMISSIONS)} permissions)"
        ]
    errors: list[str] = []
    if not raw:
        errors.append(f"must name at least one permission (e.g. {ENVIRONMENT_READ!r})")
    not_strings = [item for item in raw if not isinstance(item, str)]
    if not_strings:
        errors.append("every permission must be a string")
    strings = [item for item in raw if isinstance(item, str)]
    unknown = [p for p in dict.fromkeys(strings) if p not in _ORDER]
    if unknown:  # one message, the allowed ones once
        named = ", ".join(repr(p[:100]) for p in unknown[:10])
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        plural = "s" if len(unknown) > 1 else ""
        errors.append(
            f"unknown permission{plural} {named}{more}; allowed: {', '.join(PERMISSIONS)}"
        )
    known = sort_permissions(p for p in strings if p in _ORDER)
    held = set(known)
    for permission in known:
        missing = [p for p in implied_by(permission) if p not in held]
        if missing:
            errors.append(
                f"{permission!r} requires {', '.join(repr(p) for p in missing)}; "
                "add the implied permission(s) to the role"
            )
    return known, errors
