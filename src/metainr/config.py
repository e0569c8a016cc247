"""The shared behaviour of the frozen config dataclasses: JSON round trip with strict keys."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


class Config:
    """Mixin for frozen dataclasses that are saved as JSON next to every checkpoint."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable fields."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ValueError (strict loading)."""
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        # JSON has no tuples: a tuple-valued field comes back as a list
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
