"""The shared behaviour of the frozen config dataclasses: JSON round trip with strict keys."""
from __future__ import annotations

import math
import typing
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
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _fits(hints.get(name, Any), value):
                raise ValueError(f"{cls.__name__}.{name} cannot be {value!r}")
        return cls(**values)


def _fits(tp: Any, value: Any) -> bool:
    """Whether a JSON value is of a config field's type (finite numbers only)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return any(_fits(t, value) for t in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is tuple:
        item = (typing.get_args(tp) or (Any,))[0]
        return isinstance(value, tuple) and all(_fits(item, v) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return True
