"""Test-time fitting: optimise a field's params for each signal of a task's batch, from any init.

One fit for every task: the loss and metrics are the task's, the forward model is the task's
``observe``, and a gradient transform (e.g. GradNCP's test-time rescaling) plugs in from outside,
so nothing here knows which task, learner or method runs.

Held-out stopping (``holdout``): a seeded random fraction of every signal's observations is held
back, the fit sees the rest, the held-out loss is taken at every step and each signal gets the
params of its step with the lowest held-out loss (not a refit on every row to that step: a refit
would cost a second fit, and the chosen params are what the held-out rows judged).
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
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
    """name -> (B, *shape): one fitted copy of every parameter per signal (with ``holdout``: each
    signal's params at its chosen step)"""
    steps: list[int]
    """the steps at which ``metrics`` were recorded"""
    metrics: dict[str, Tensor]
    """name -> (B, len(steps)) per-signal metrics (the task's, e.g. PSNR in dB)"""
    final_loss: Tensor
    """(B,) per-signal loss of ``params``: on every row (the last step's), or with ``holdout`` on
    the held-out rows (the chosen step's)"""
    chosen_step: Tensor | None = None
    """(B,) with ``holdout``: the step (0..K) whose params ``params`` are, per signal; None without"""
    holdout_loss: Tensor | None = None
    """(B, K + 1) with ``holdout``: the held-out loss at steps 0..K, per signal; None without"""
    chosen_metrics: dict[str, Tensor] = dataclass_field(default_factory=dict)
    """name -> (B,) with ``holdout``: the metrics of ``params`` (each signal's chosen step)"""

    @property
    def psnr(self) -> Tensor:
        """(B, len(steps)) per-signal PSNR (dB)."""
        return self.metrics["psnr"]

    def final(self, name: str = "psnr") -> Tensor | None:
        """(B,) metric ``name`` of the returned params: at the chosen steps with ``holdout``, else at
        the last recorded step (None when it was not recorded)."""
        if self.chosen_step is not None:
            return self.chosen_metrics.get(name)
        curve = self.metrics.get(name)
        return None if curve is None else curve[:, -1]


def per_signal(p: Tensor, shape: torch.Size, batch: int) -> Tensor:
    """A (B, *shape) copy of a shared (``shape``) or per-signal (``(B, *shape)``) init tensor."""
    p = p.detach()
    if p.shape == shape:
        return p.unsqueeze(0).expand(batch, *shape).clone()
    if p.shape == (batch, *shape):
        return p.clone()
    raise ValueError(f"init tensor of shape {tuple(p.shape)} fits neither {tuple(shape)} nor {(batch, *shape)}")


def holdout_split(n_rows: int, fraction: float, seed: int = 0,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(kept (n_rows - k,), held (k,)) sorted row indices, disjoint and covering ``range(n_rows)``:
    ``k = round(fraction * n_rows)`` rows (at least 1, at most ``n_rows - 1``) drawn without
    replacement by a CPU generator seeded ``seed``, so a split is the same on every machine."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {fraction}")
    if n_rows < 2:
        raise ValueError(f"holding out observations needs at least 2 of them, got {n_rows}")
    k = min(max(1, round(fraction * n_rows)), n_rows - 1)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(int(seed)))
    return order[k:].sort().values.to(device), order[:k].sort().values.to(device)


def rows_of(batch: Batch, rows: Tensor) -> Batch:
    """The batch restricted to observations ``rows`` (k,), the same rows of every signal (its
    context dropped: a fit sees every row it is given; the reference kept for metrics)."""
    query = batch.query[..., rows, :]
    return type(batch)(**{**batch.__dict__, "query": query, "values": batch.values[:, rows], "context": None})


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
    holdout: float = 0.0,
    holdout_seed: int = 0,
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
        holdout: 0 (every observation is fitted, the last step's params returned), or a fraction
            in (0, 1): the rows :func:`holdout_split` holds back (the same rows of every signal,
            so a shared query stays shared) are never fitted; their loss is taken at steps 0..K and
            each signal's params at its lowest held-out loss are returned (ties: the earliest
            step), with :attr:`FitResult.chosen_step`, :attr:`FitResult.holdout_loss` and the
            metrics of the returned params (:attr:`FitResult.chosen_metrics`). Costs one forward
            pass over the held-out rows a step.
        holdout_seed: the seed of the held-out rows.

    The loss is the SUM over signals of each signal's loss, so every signal's gradient, and
    Adam's per-element state, are exactly those of fitting it alone. The steps are
    :func:`metainr.inner_loop.take_steps` (batched, nothing differentiable); recording and the
    held-out loss are its ``on_step`` hook, ``transform`` its gradient transform (per group of signals).
    """
    n_signals, n_rows = len(batch), batch.values.shape[1]
    record = sorted({min(max(int(s), 0), steps) for s in (record if record is not None else [steps])})
    shapes = {n: p.shape for n, p in field.named_parameters()}
    params = {n: per_signal(p, shapes[n], n_signals) for n, p in init.items()}
    seen, held = batch, None
    if holdout:
        kept_rows, held_rows = holdout_split(n_rows, holdout, holdout_seed, batch.device)
        seen, held = rows_of(batch, kept_rows), rows_of(batch, held_rows)
    groups = signal_groups(n_signals, n_rows, chunk_coords)
    fn = field_function(field)
    curves: dict[str, list[Tensor]] = {}
    final_loss = batch.values.new_full((n_signals,), float("nan"))
    held_losses: list[Tensor] = []
    best: dict[str, Tensor] = {}
    best_loss = batch.values.new_full((n_signals,), float("inf"))
    chosen = torch.zeros(n_signals, dtype=torch.long, device=batch.device)

    def scores(p: Params) -> dict[str, Tensor]:
        if not metrics:
            return {}
        with torch.no_grad():
            parts = [task.metrics(fn, {n: t[g] for n, t in p.items()}, batch.signals(g), metrics) for g in groups]
        return {name: torch.cat([s[name] for s in parts]) for name in parts[0]}

    def on_step(step: Step) -> None:
        nonlocal final_loss, best_loss
        if held is not None:
            loss = loss_and_grads(task, field, step.params, held.query, held.values, chunk_coords, batched=True,
                                  need_grads=False)[0]
            held_losses.append(loss)
            better = loss < best_loss  # NaN never is: a diverging step is never chosen
            best_loss = torch.where(better, loss, best_loss)
            chosen[better] = step.index
            best.update({n: p.clone() if n not in best else torch.where(
                better.view(-1, *[1] * (p.dim() - 1)), p, best[n]) for n, p in step.params.items()})
        elif step.index == steps:
            final_loss = loss_and_grads(task, field, step.params, batch.query, batch.values, chunk_coords,
                                        batched=True, need_grads=False)[0]
        if step.index not in record:
            return
        for name, value in scores(step.params).items():
            curves.setdefault(name, []).append(value)

    def transform_groups(step: Step) -> Params:
        parts = [transform({n: p[g] for n, p in step.params.items()}, {n: t[g] for n, t in step.grads.items()},
                           seen.signals(g)) for g in groups]  # type: ignore[misc, union-attr]
        return parts[0] if len(parts) == 1 else {n: torch.cat([part[n] for part in parts]) for n in parts[0]}

    params = take_steps(task, field, params, seen.query, seen.values, steps, optimizer=optimizer, lr=lr,
                        chunk=chunk_coords, batched=True, transform=transform_groups if transform else None,
                        on_step=on_step)
    result = FitResult(params, record, {k: torch.stack(v, dim=1) for k, v in curves.items()}, final_loss)
    if held is not None:
        result.params, result.final_loss, result.chosen_step = best, best_loss, chosen
        result.holdout_loss = torch.stack(held_losses, dim=1)
        steps_chosen = set(chosen.tolist())
        same = len(steps_chosen) == 1 and next(iter(steps_chosen)) in record  # recorded already: no second pass
        result.chosen_metrics = ({k: v[:, record.index(next(iter(steps_chosen)))] for k, v in result.metrics.items()}
                                 if same else scores(best))
    return result
