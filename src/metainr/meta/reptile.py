"""Reptile (Nichol et al. 2018): move the init towards each signal's fitted params."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import Config
from ..functional import Adam, Params, field_function, sgd_step
from ..tasks.base import Batch, Task
from .base import Learner, TestRule, signal_rows
from .context import bootstrap_correction


@dataclass(frozen=True)
class ReptileConfig(Config):
    """Reptile's inner loop."""

    inner_steps: int = 3
    """plain fitting steps K per signal"""
    inner_lr: float = 1e-2
    """inner step size (also the test-time step size)"""
    inner_optimizer: str = "sgd"
    """sgd | adam for the inner loop (and at test time)"""
    chunk_coords: int = 16384
    """observations per chunk in full-signal passes (bootstrap correction, scores)"""

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"reptile inner_optimizer must be 'sgd' or 'adam', got {self.inner_optimizer!r}")


class Reptile(Learner):
    """K plain fitting steps per signal; the outer "gradient" is ``theta - mean_b theta_K^(b)``
    (+ the first-order gradient of the bootstrap correction at theta_K, when on).

    Without a pruning context policy, and with one context shared by the batch, the whole batch
    runs at once (``vmap``); otherwise signal by signal, each step on the rows the policy keeps.
    The trainer hands the result to its outer optimiser (Adam in the learnit setting).
    """

    Config = ReptileConfig
    name = "reptile"

    def test_rule(self) -> TestRule:
        return TestRule(self.config.inner_optimizer, self.config.inner_lr, self._rescale())  # type: ignore[arg-type]

    def _step(self, optimizer: Adam | None, params: Params, grads: Params) -> Params:
        return optimizer.step(params, grads) if optimizer is not None else sgd_step(params, grads, self.config.inner_lr)

    def _new_optimizer(self) -> Adam | None:
        return Adam(self.config.inner_lr) if self.config.inner_optimizer == "adam" else None

    def _fit_together(self, task: Task, init: Params, batch: Batch) -> tuple[Params, Tensor]:
        """Every signal's K steps at once: (params name -> (B, *shape), losses (B,))."""
        fn = field_function(self.field)
        ctx = slice(None) if batch.context is None else batch.context
        q_dim = 0 if batch.per_signal_query else None
        # a vmapped forward and one backward of the summed losses: each signal's gradient is that of
        # its own loss (measured 20% faster than vmap(grad) here)
        losses_of = torch.vmap(lambda p, q, v: task.loss(task.observe(fn, p, q), v), in_dims=(0, q_dim, 0))
        query, values = batch.query[..., ctx, :], batch.values[:, ctx]
        params = {n: p.expand(len(batch), *p.shape).clone() for n, p in init.items()}
        optimizer, losses = self._new_optimizer(), values.new_zeros(len(batch))
        for _ in range(self.config.inner_steps):
            leaves = {n: p.requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                losses = losses_of(leaves, query, values)
                grads = dict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values()))))
            params = self._step(optimizer, {n: p.detach() for n, p in leaves.items()}, grads)
            losses = losses.detach()
        return params, losses

    def _fit_one(self, task: Task, init: Params, query: Tensor, values: Tensor) -> tuple[Params, Tensor]:
        """One signal's K steps, each on the rows the context policy keeps: (params, last loss)."""
        fn = field_function(self.field)
        params, optimizer, loss = dict(init), self._new_optimizer(), values.new_zeros(())
        for _ in range(self.config.inner_steps):
            rows = self.policy.select(task, self.field, params, query, values, self.config.chunk_coords)
            q, v = (query, values) if rows is None else (query[rows], values[rows])
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                loss = task.loss(task.observe(fn, leaves, q), v)
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            params = self._step(optimizer, {n: p.detach() for n, p in leaves.items()}, grads)
            loss = loss.detach()
        return params, loss

    def meta_gradient(self, task: Task, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        init = {n: p.detach() for n, p in self.init_params().items()}
        shared = batch.context is None or isinstance(batch.context, Tensor)
        if shared and not self.policy.prunes:
            fitted, losses = self._fit_together(task, init, batch)
        else:
            runs = []
            for b in range(len(batch)):
                query, values, ctx = signal_rows(batch, b)
                runs.append(self._fit_one(task, init, query if ctx is None else query[ctx],
                                          values if ctx is None else values[ctx]))
            fitted = {n: torch.stack([r[0][n] for r in runs]) for n in init}
            losses = torch.stack([r[1] for r in runs])
        grads = {n: init[n] - fitted[n].mean(dim=0) for n in init}
        if self.context.boot_steps and self.context.boot_weight:
            for b in range(len(batch)):
                query, values, _ = signal_rows(batch, b)
                fast = {n: p[b] for n, p in fitted.items()}
                _, reg = bootstrap_correction(task, self.field, fast, query, values, self.context,
                                              self.config.chunk_coords)
                for n in grads:
                    grads[n] = grads[n] + reg[n] / len(batch)
        return {"loss": losses.detach().mean()}, {f"field.{n}": g for n, g in grads.items()}


