"""Checkpoints of a learner: tensors + the specs (task, field, learner, training) that rebuild it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..device import resolve_device
from ..errors import CheckpointMismatch
from ..fields import FieldConfig, build_field
from ..meta import Learner, learner_from_spec
from ..disk import load_strict, load_tensors, save_tensors
from ..tasks import Task, build_task
from ..zoo import resolve_checkpoint
from .config import TrainConfig


def checkpoint_tensors(learner: Learner, optimizer: torch.optim.Optimizer | None) -> dict[str, Tensor]:
    """Learner state + Adam state as one flat name -> tensor dict."""
    tensors = {f"learner/{k}": v for k, v in learner.state_dict().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in learner.named_parameters()}
        for p, state in optimizer.state.items():
            for key, value in state.items():
                tensors[f"adam/{names[id(p)]}/{key}"] = torch.as_tensor(value)
    return tensors


def save_checkpoint(path: str | Path, learner: Learner, optimizer: torch.optim.Optimizer | None, step: int,
                    task: Task | None = None, train: TrainConfig | None = None, data: dict | None = None,
                    extra: dict | None = None) -> None:
    """Atomically write a checkpoint that rebuilds ``learner`` and its task (and resumes ``optimizer``)."""
    meta = {
        "task": task.spec() if task is not None else None,
        "field": learner.field.config.to_dict(),
        "learner": learner.spec(),
        "train": train.to_dict() if train else None,
        "data": data,
        "step": step,
        **(extra or {}),
    }
    save_tensors(path, checkpoint_tensors(learner, optimizer), meta)


def task_from_meta(meta: dict[str, Any], path: str | Path = "checkpoint") -> Task | None:
    """The task a checkpoint was trained on (None when it names none)."""
    if not meta.get("task"):
        return None
    try:
        return build_task(meta["task"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointMismatch(f"{path}: unusable task in checkpoint ({exc})") from None


def load_learner(path: str | Path, device: str | torch.device | None = "cpu") -> tuple[Learner, dict[str, Any]]:
    """Rebuild the learner stored in a checkpoint on ``device`` (its own config decides the
    architecture); returns (learner, metadata). ``task_from_meta(metadata)`` gives its task.
    ``path`` may name a packaged init, ``"zoo:NAME"`` (see :mod:`metainr.zoo`)."""
    path = resolve_checkpoint(path)
    tensors, meta = load_tensors(path)
    try:
        field = build_field(FieldConfig.from_dict(meta["field"]))
        learner = learner_from_spec(field, meta["learner"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointMismatch(f"{path}: unusable config in checkpoint ({exc})") from None
    restore(learner, None, tensors, str(path))
    return learner.to(resolve_device(device)), meta


def restore(learner: Learner, optimizer: torch.optim.Optimizer | None, tensors: dict[str, Tensor],
            what: str) -> None:
    """Load checkpoint tensors into ``learner`` (strictly) and, if given, ``optimizer``'s state,
    onto the device each parameter lives on."""
    state = {k[len("learner/"):]: v for k, v in tensors.items() if k.startswith("learner/")}
    load_strict(learner.state_dict(keep_vars=True), state, f"checkpoint {what}")
    if optimizer is None:
        return
    for name, p in learner.named_parameters():
        prefix = f"adam/{name}/"
        st = {k[len(prefix):]: v.clone() if k.endswith("/step") else v.to(p.device)
              for k, v in tensors.items() if k.startswith(prefix)}
        for key, value in st.items():
            want = () if key == "step" else tuple(p.shape)
            if key not in ("step", "exp_avg", "exp_avg_sq") or tuple(value.shape) != want:
                raise CheckpointMismatch(f"checkpoint {what}: optimizer state {name}/{key} has shape "
                                         f"{tuple(value.shape)}, expected {want}")
        if st:
            optimizer.state[p] = st
