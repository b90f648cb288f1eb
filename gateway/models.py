"""Plain domain records shared by storage, the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str
    is_admin: bool
    created_at: datetime
    disabled_at: datetime | None = None  # set: the user can neither log in nor use a token

    @classmethod
    def from_row(cls, row: Any) -> User:
        return cls(
            row["id"],
            row["email"],
            row["name"],
            row["is_admin"],
            row["created_at"],
            row["disabled_at"],
        )

    @property
    def is_active(self) -> bool:
        return self.disabled_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "is_admin": self.is_admin,
            "is_active": self.is_active,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def to_json(self) -> dict[str, Any]:
        return {
            "token_type": "Bearer",
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }
