"""Optional capabilities a task opts into by defining the method (structural protocols).

The :class:`~metainr.tasks.Task` base holds only what every verb uses. A capability with a single
consumer lives here instead: ``metainr render`` needs :class:`Renderable`, the TransINR
hypernetwork :class:`Tokenizable`, ``metainr fit`` of a file whose geometry fixes the task
:class:`FileDependent`, a frame-valued field (NeRV) :class:`FrameRows`. A task that defines the
method has the capability (``isinstance`` checks the method's presence); the consumer refuses
others in one line (:func:`require`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from ..fields.mlp import FRAME_FIELDS
from ..functional import FieldFn

if TYPE_CHECKING:
    from .base import Batch, Task

__all__ = ["FileDependent", "FrameRows", "Renderable", "Tokenizable", "field_dims", "for_field", "require"]


@runtime_checkable
class Renderable(Protocol):
    """A task whose fields ``metainr render`` can show as a strip of frames."""

    def render(self, field_fn: FieldFn, params: Mapping[str, Tensor], n_views: int) -> Tensor:
        """(n_views, H, W, 3) frames showing ONE signal's field (params name -> tensor): views from
        cameras turning around it (views, sdf3d), or a clip's frames evenly spread in time (video)."""


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


@runtime_checkable
class FrameRows(Protocol):
    """A task that can present whole frames as its query rows, for frame-valued fields (NeRV)."""

    def frame_rows(self) -> "Task":
        """This task with one query row per frame (time (T, 1) -> the frame's values flattened)."""

    def frame_shape(self) -> tuple[int, int] | None:
        """(H, W) of the frames when the rows are frames, else None."""


Capability = TypeVar("Capability")

_WHAT = {Renderable: "has nothing to render (no cameras, no frames)",
         Tokenizable: "has no tokenizer for a hypernetwork",
         FileDependent: "does not depend on a file's geometry",
         FrameRows: "cannot present whole frames as rows (a frame-valued field needs video)"}


def require(task: object, capability: type[Capability]) -> Capability:
    """``task`` itself if it has ``capability``, else a one-line ValueError saying what it lacks."""
    if not isinstance(task, capability):
        raise ValueError(f"task {getattr(task, 'name', type(task).__name__)!r} "
                         f"{_WHAT.get(capability, 'lacks ' + capability.__name__)}")
    return task


def field_dims(task: "Task") -> dict[str, int]:
    """The field settings a task fixes: ``in_dim``, ``out_dim`` and, when its rows are whole
    frames, ``frame_height`` and ``frame_width``."""
    dims = {"in_dim": task.in_dim, "out_dim": task.out_dim}
    shape = task.frame_shape() if isinstance(task, FrameRows) else None
    if shape is not None:
        dims.update(frame_height=shape[0], frame_width=shape[1])
    return dims


def for_field(task: "Task", kind: str) -> "Task":
    """``task`` as a field of ``kind`` sees it: rows of whole frames for a frame-valued kind
    (NeRV); a task already presenting frames refuses any other kind (one-line ValueError)."""
    if kind in FRAME_FIELDS:
        return require(task, FrameRows).frame_rows()
    if isinstance(task, FrameRows) and task.frame_shape() is not None:
        raise ValueError(f"task {task.name!r} presents whole frames as rows (rows=frames): it needs a frame-valued "
                         f"field ({', '.join(sorted(FRAME_FIELDS))}), not {kind!r}")
    return task
