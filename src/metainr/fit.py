"""Test-time fitting: optimise a field's params for each signal of a task's batch, from any init.

One fit for every task: the loss and metrics are the task's, the forward model is the task's
``observe``, and a gradient transform (e.g. GradNCP's test-time rescaling) plugs in from outside,
so nothing here knows which task, learner or method runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from .functional import LearningRates, Params, field_function
from .inner_loop import Step, loss_and_grads, signal_groups, take_steps
from .tasks.base import Batch, Task

GradientTransform = Callable[[Params, Params, Batch], Params]
"""``transform(params, grads, batch) -> grads`` for the b signals of ``batch`` (name -> (b, *shape))."""


@dataclass
class FitResult:
    """Fitted params per signal and the per-signal metrics recorded on the way."""

    params: Params
    """name -> (B, *shape): one fitted copy of every parameter per signal"""
    steps: list[int]
    """the steps at which ``metrics`` were recorded"""
    metrics: dict[str, Tensor]
    """name -> (B, len(steps)) per-signal metrics (the task's, e.g. PSNR in dB)"""
    final_loss: Tensor
    """(B,) per-signal loss at the last recorded step"""

    @property
    def psnr(self) -> Tensor:
        """(B, len(steps)) per-signal PSNR (dB)."""
        return self.metrics["psnr"]


def per_signal(p: Tensor, shape: torch.Size, batch: int) -> Tensor:
    """A (B, *shape) copy of a shared (``shape``) or per-signal (``(B, *shape)``) init tensor."""
    p = p.detach()
    if p.shape == shape:
        return p.unsqueeze(0).expand(batch, *shape).clone()
    if p.shape == (batch, *shape):
        return p.clone()
    raise ValueError(f"init tensor of shape {tuple(p.shape)} fits neither {tuple(shape)} nor {(batch, *shape)}")


def fit(
    task: Task,
    field: nn.Module,
    init: Mapping[str, Tensor],
    batch: Batch,
    steps: int,
    *,
    optimizer: Literal["sgd", "adam"] = "adam",
    lr: LearningRates = 1e-3,
    record: Sequence[int] | None = None,
    metrics: Sequence[str] = ("psnr",),
    chunk_coords: int = 8192,
    transform: GradientTransform | None = None,
) -> FitResult:
    """Fit every signal of ``batch`` independently, starting each from ``init``.

    Args:
        task: the signal type (forward model, loss, metrics).
        field: the field architecture; its own parameters are not touched.
        init: name -> tensor, the shared starting point (a learned or a random init), or
            name -> (B, *shape), one starting point per signal (a hypernetwork's output).
        batch: the signals' query rows and observations (its context is ignored: a fit sees all).
        steps: number of optimisation steps.
        optimizer: "sgd" (``theta -= lr * g``; lr may be a tensor per parameter, as Meta-SGD
            learns) or "adam" (standard Adam, the usual choice from a random init).
        lr: a scalar, or name -> tensor per-parameter step sizes (sgd only).
        record: steps (0 = before any update) at which to record the task's metrics (default: the last).
        metrics: which of the task's metrics to record.
        chunk_coords: signals are processed in groups of about this many observations in total
            (at least one signal); a signal with more rows than this is swept in row slices, so
            memory stays bounded at any resolution.
        transform: ``transform(params, grads, batch) -> grads`` applied to every step's gradients
            (e.g. :class:`metainr.meta.GradientRescaling`).

    The loss is the SUM over signals of each signal's loss, so every signal's gradient, and
    Adam's per-element state, are exactly those of fitting it alone. The steps are
    :func:`metainr.inner_loop.take_steps` (batched, nothing differentiable); recording is its
    ``on_step`` hook, ``transform`` its gradient transform (called per group of signals).
    """
    n_signals, n_rows = len(batch), batch.values.shape[1]
    record = sorted({min(max(int(s), 0), steps) for s in (record if record is not None else [steps])})
    shapes = {n: p.shape for n, p in field.named_parameters()}
    params = {n: per_signal(p, shapes[n], n_signals) for n, p in init.items()}
    groups = signal_groups(n_signals, n_rows, chunk_coords)
    fn = field_function(field)
    curves: dict[str, list[Tensor]] = {}
    final_loss = batch.values.new_full((n_signals,), float("nan"))

    def record_metrics(step: Step) -> None:
        nonlocal final_loss
        if step.index not in record:
            return
        final_loss = step.loss if step.loss is not None else loss_and_grads(
            task, field, step.params, batch.query, batch.values, chunk_coords, batched=True, need_grads=False)[0]
        with torch.no_grad():
            scores = [task.metrics(fn, {n: p[g] for n, p in step.params.items()}, batch.signals(g), metrics)
                      for g in groups]
        for name in scores[0]:
            curves.setdefault(name, []).append(torch.cat([s[name] for s in scores]))

    def transform_groups(step: Step) -> Params:
        parts = [transform({n: p[g] for n, p in step.params.items()}, {n: t[g] for n, t in step.grads.items()},
                           batch.signals(g)) for g in groups]  # type: ignore[misc, union-attr]
        return parts[0] if len(parts) == 1 else {n: torch.cat([part[n] for part in parts]) for n in parts[0]}

    params = take_steps(task, field, params, batch.query, batch.values, steps, optimizer=optimizer, lr=lr,
                        chunk=chunk_coords, batched=True, transform=transform_groups if transform else None,
                        on_step=record_metrics)
    return FitResult(params, record, {k: torch.stack(v, dim=1) for k, v in curves.items()}, final_loss)
