"""Fitted fields as files: one signal's field (its architecture, its params and the task it was
fitted for) written and read back strictly, so Python users and the CLI (``fit --save-field``,
``render``) share one format.

A file is safetensors + JSON (:mod:`metainr.disk`): the params under their own names and
``{"field": FieldConfig, "task": task spec or null, ...info}``; a sparse field can be written
compactly instead (:mod:`metainr.compact`: alive weights + packed masks). Loading rebuilds the
field from its config and refuses any tensor that does not match it. A checkpoint holds a
learner, not one signal's field: load it with :func:`metainr.load_learner`.
"""
from __future__ import annotations

from dataclasses import dataclass, field as _field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .compact import compact_field, export_compact
from .errors import MetaINRError
from .fields import FieldConfig, build_field
from .functional import field_function, predict
from .disk import load_tensors, save_tensors
from .tasks import Batch, Task, build_task


@dataclass
class FittedField:
    """One signal's field: call it on coordinates, or reconstruct the signal on a task's batch."""

    field: nn.Module
    params: dict[str, Tensor]
    """name -> tensor of this one signal (no batch dimension)"""
    task: Task | None = None
    """the task it was fitted for (None when the file names none)"""
    info: dict[str, Any] = _field(default_factory=dict)
    """what else the file records (source file, steps, ...)"""

    def __call__(self, coords: Tensor) -> Tensor:
        """coords (N, in_dim) -> values (N, out_dim)."""
        return predict(self.field, self.params, coords)

    def reconstruct(self, batch: Batch) -> Tensor:
        """The signal in its task's layout, on the query rows of ``batch`` (a batch of one signal)."""
        if self.task is None:
            raise MetaINRError("this field names no task: call it on coordinates instead")
        with torch.no_grad():
            return self.task.reconstruct(field_function(self.field), {n: p[None] for n, p in self.params.items()},
                                         batch)[0]

    def to(self, device: torch.device | str) -> "FittedField":
        """The same field on ``device``."""
        return FittedField(self.field.to(device), {n: p.to(device) for n, p in self.params.items()}, self.task,
                           self.info)


def save_field(path: str | Path, field: nn.Module, params: Mapping[str, Tensor], task: Task | None = None,
               compact: bool = False, **info: Any) -> int:
    """Write one signal's fitted ``params`` (name -> tensor, unbatched) of ``field`` atomically, with
    the field's config, ``task``'s spec and ``info`` (JSON values); ``compact``: alive weights and
    packed masks of a sparse field. Returns the file's size in bytes."""
    meta = {"task": task.spec() if task is not None else None, **info}
    one = {n: p.detach().cpu() for n, p in params.items()}
    if compact:
        return export_compact(path, field.cpu(), one, meta)
    return save_tensors(path, one, {"field": field.config.to_dict(), **meta})


def load_field(path: str | Path, device: torch.device | str = "cpu") -> FittedField:
    """A fitted field written by :func:`save_field` (plain or compact) on ``device``; a file that is
    a checkpoint, names no field, or whose tensors do not match its field's config is a one-line
    :class:`MetaINRError`."""
    tensors, meta = load_tensors(path)
    if meta.get("learner"):
        raise MetaINRError(f"{path} is a checkpoint (a learner), not a fitted field: load it with load_learner")
    if meta.get("compact"):
        try:
            field, params = compact_field(tensors, meta)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise MetaINRError(f"{path}: a damaged compact field ({type(exc).__name__}: {exc})") from None
    else:
        if not isinstance(meta.get("field"), dict):
            raise MetaINRError(f"{path} is not a fitted field (no field config)")
        try:
            field = build_field(FieldConfig.from_dict(meta["field"]))
        except (ValueError, TypeError) as exc:
            raise MetaINRError(f"{path}: unusable field config ({exc})") from None
        names = dict(field.named_parameters())
        if set(names) != set(tensors) or any(tensors[n].shape != p.shape for n, p in names.items()):
            raise MetaINRError(f"{path}: its tensors do not match the field its config describes")
        params = {n: tensors[n] for n in names}
    task = None
    if meta.get("task"):
        try:
            task = build_task(meta["task"])
        except (ValueError, TypeError) as exc:
            raise MetaINRError(f"{path}: unusable task spec ({exc})") from None
    info = {k: v for k, v in meta.items() if k not in ("field", "task", "compact", "version")}
    return FittedField(field, params, task, info).to(device)
