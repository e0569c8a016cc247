"""Optional capabilities a task opts into by defining the method (structural protocols).

The :class:`~metainr.tasks.Task` base holds only what every verb uses. A capability with a single
consumer lives here instead: ``metainr render`` needs :class:`Renderable`, the TransINR
hypernetwork :class:`Tokenizable`, ``metainr fit`` of a file whose geometry fixes the task
:class:`FileDependent`. A task that defines the method has the capability (``isinstance`` checks
the method's presence); the consumer refuses others in one line (:func:`require`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from ..functional import FieldFn

if TYPE_CHECKING:
    from .base import Batch, Task

__all__ = ["FileDependent", "Renderable", "Tokenizable", "require"]


@runtime_checkable
class Renderable(Protocol):
    """A task with cameras: ``metainr render`` shows its fields from around them."""

    def turntable(self, field_fn: FieldFn, params: Mapping[str, Tensor], n_views: int) -> Tensor:
        """(n_views, H, W, 3) renders of ONE signal's field (params name -> tensor) from cameras
        turning around it."""


@runtime_checkable
class Tokenizable(Protocol):
    """A task a hypernetwork (TransINR) can read: its signals as sequences of tokens."""

    def tokens(self, batch: "Batch") -> Tensor:
        """(B, T, F) input tokens of the batch's signals."""


@runtime_checkable
class FileDependent(Protocol):
    """A task whose geometry a user's file fixes (e.g. a CT scan's detector count)."""

    def for_file(self, path: str | Path) -> "Task":
        """This task as it must be to read ``path``."""


Capability = TypeVar("Capability")

_WHAT = {Renderable: "has no cameras to render from", Tokenizable: "has no tokenizer for a hypernetwork",
         FileDependent: "does not depend on a file's geometry"}


def require(task: object, capability: type[Capability]) -> Capability:
    """``task`` itself if it has ``capability``, else a one-line ValueError saying what it lacks."""
    if not isinstance(task, capability):
        raise ValueError(f"task {getattr(task, 'name', type(task).__name__)!r} "
                         f"{_WHAT.get(capability, 'lacks ' + capability.__name__)}")
    return task
