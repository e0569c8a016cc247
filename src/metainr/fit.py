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

from .functional import Adam, LearningRates, Params, coordinate_chunks, field_function, sgd_step
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


def _loss_and_grads(task: Task, field: nn.Module, params: Params, batch: Batch, chunk_rows: int,
                    need_grads: bool) -> tuple[Tensor, Params | None]:
    """Per-signal loss (b,) of the b signals of ``batch`` and, if asked, the gradient of their SUM
    for every param, swept over query rows so at most ``chunk_rows`` rows are alive at once."""
    fn = field_function(field)
    q_dim = 0 if batch.per_signal_query else None
    errors = torch.vmap(lambda p, q, v: task.errors(task.observe(fn, p, q), v).sum(), in_dims=(0, q_dim, 0))
    n = batch.values.shape[1]
    leaves = {k: p.detach().requires_grad_(need_grads) for k, p in params.items()}
    loss = batch.values.new_zeros(len(batch))
    grads = None
    for rows in coordinate_chunks(n, chunk_rows):
        with torch.set_grad_enabled(need_grads):
            part = errors(leaves, batch.query[..., rows, :], batch.values[:, rows]) / n
        if need_grads:
            g = torch.autograd.grad(part.sum(), list(leaves.values()))
            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
        loss += part.detach()
    return loss, (dict(zip(leaves, grads)) if grads is not None else None)


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
    Adam's per-element state, are exactly those of fitting it alone.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if optimizer == "adam" and not isinstance(lr, (int, float)):
        raise ValueError("adam takes a scalar learning rate")
    n_signals, n_rows = len(batch), batch.values.shape[1]
    record = sorted({min(max(int(s), 0), steps) for s in (record if record is not None else [steps])})
    shapes = {n: p.shape for n, p in field.named_parameters()}
    params = {n: per_signal(p, shapes[n], n_signals) for n, p in init.items()}
    adam = Adam(float(lr)) if optimizer == "adam" else None
    per_group = max(1, chunk_coords // max(n_rows, 1))
    groups = [slice(i, min(i + per_group, n_signals)) for i in range(0, n_signals, per_group)]
    fn = field_function(field)
    curves: dict[str, list[Tensor]] = {}
    final_loss = batch.values.new_full((n_signals,), float("nan"))
    for step in range(steps + 1):
        if step == steps and step not in record:
            break
        need_grads = step < steps
        losses, grad_parts = [], []
        for g in groups:
            part = {n: p[g] for n, p in params.items()}
            sub = batch.signals(g)
            loss, grads = _loss_and_grads(task, field, part, sub, chunk_coords, need_grads)
            if grads is not None and transform is not None:
                grads = transform(part, grads, sub)
            losses.append(loss)
            grad_parts.append(grads)
        if step in record:
            final_loss = torch.cat(losses)
            with torch.no_grad():
                scores = [task.metrics(fn, {n: p[g] for n, p in params.items()}, batch.signals(g), metrics)
                          for g in groups]
            for name in scores[0]:
                curves.setdefault(name, []).append(torch.cat([s[name] for s in scores]))
        if not need_grads:
            break
        grads = {n: torch.cat([gp[n] for gp in grad_parts]) for n in params}
        with torch.no_grad():
            params = adam.step(params, grads) if adam is not None else sgd_step(params, grads, lr)
    return FitResult(params, record, {k: torch.stack(v, dim=1) for k, v in curves.items()}, final_loss)

