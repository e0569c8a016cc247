"""MAML (second order), first-order MAML and Meta-SGD: one learner, three settings, any context policy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..config import Config
from ..functional import LearningRates, Params, field_function, sgd_step
from ..tasks.base import Batch, Task
from .base import Learner, signal_rows
from .context import bootstrap_correction, loss_and_grad


@dataclass(frozen=True)
class MAMLConfig(Config):
    """MAML, first-order MAML and Meta-SGD."""

    inner_steps: int = 3
    """inner-loop SGD steps K per signal during meta-training"""
    inner_lr: float = 1e-2
    """inner-loop step size alpha (Meta-SGD: its initial value)"""
    first_order: bool = False
    """detach the inner gradients (first-order MAML)"""
    meta_sgd: bool = False
    """learn one inner step size per parameter (Meta-SGD)"""
    batching: str = "loop"
    """loop (one signal's graph alive at a time, least memory) | vmap (the meta-batch at once)"""
    chunk_coords: int = 16384
    """observations per chunk in full-signal passes (outer loss, scores, bootstrap)"""

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.batching not in ("loop", "vmap"):
            raise ValueError(f"batching must be 'loop' or 'vmap', got {self.batching!r}")


def _key(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "__")


class MAML(Learner):
    """Learned initialisation by gradient descent through K inner SGD steps per signal.

    Inner: ``theta_{k+1} = theta_k - alpha * grad l(theta_k; context_k)``, the context of each
    step chosen by the context policy among the task's inner-loop context; outer: the task's loss
    of ``theta_K`` on every observation (+ the bootstrap correction when on), averaged over the
    meta-batch. ``first_order`` detaches the inner gradients; ``meta_sgd`` learns alpha per parameter.

    ``batching="loop"``: each signal's outer gradient is a chunked first-order pass followed by one
    vector-Jacobian product through its inner loop, so one signal's graph is alive at a time;
    ``"vmap"`` runs the whole meta-batch at once with ``torch.func`` (every inner step on the whole
    shared context). Both give the same gradient.
    """

    Config = MAMLConfig

    def __init__(self, field: nn.Module, config: MAMLConfig | None = None, context=None, **options) -> None:
        super().__init__(field, config, context, **options)
        cfg = self.config
        if cfg.batching == "vmap" and (self.policy.prunes or self.context.boot_steps):
            raise ValueError("batching='vmap' runs every inner step on the whole context: use batching='loop' "
                             "with a pruning context policy or the bootstrap correction")
        self.name = "metasgd" if cfg.meta_sgd else ("fomaml" if cfg.first_order else "maml")
        self.lrs = None
        if cfg.meta_sgd:
            self.lrs = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.full_like(p, cfg.inner_lr)) for n, p in field.named_parameters()})

    def inner_lrs(self) -> LearningRates:
        if self.lrs is None:
            return self.config.inner_lr
        return {n: self.lrs[_key(n)] for n, _ in self.field.named_parameters()}

    def adapt(self, task: Task, query: Tensor, values: Tensor, trace: list[Tensor] | None = None) -> Params:
        """K inner steps of ONE signal from the init, differentiable w.r.t. the meta-parameters.

        query (M, d) and values (M, C) are the context the inner loop may see; before each step the
        context policy picks the rows it uses. With ``trace`` (a list), the kept indices of every
        step and one more selection at theta_K are appended (pictures of what the loop looks at).
        """
        fn, params = field_function(self.field), self.init_params()
        chunk = self.config.chunk_coords
        for _ in range(self.config.inner_steps):
            rows = self.policy.select(task, self.field, params, query, values, chunk)
            if trace is not None and rows is not None:
                trace.append(rows)
            q, v = (query, values) if rows is None else (query[rows], values[rows])
            loss = task.loss(task.observe(fn, params, q), v)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not self.config.first_order)
            params = sgd_step(params, dict(zip(params, grads)), self.inner_lrs())
        if trace is not None and self.policy.prunes:
            trace.append(self.policy.select(task, self.field, params, query, values, chunk))
        return params

    def outer_gradient(self, task: Task, fast: Mapping[str, Tensor], query: Tensor,
                       values: Tensor) -> tuple[Tensor, Params]:
        """Outer loss of ONE signal at its adapted params and its gradient w.r.t. them (first order,
        in row chunks), the bootstrap correction included when on."""
        chunk = self.config.chunk_coords
        loss, grads = loss_and_grad(task, self.field, fast, query, values, chunk)
        if self.context.boot_steps and self.context.boot_weight:
            reg, reg_grads = bootstrap_correction(task, self.field, fast, query, values, self.context, chunk, grads)
            loss, grads = loss + reg, {n: g + reg_grads[n] for n, g in grads.items()}
        return loss, grads

    def adapted_loss(self, task: Task, query: Tensor, values: Tensor, context: Tensor | None = None) -> Tensor:
        """Outer loss of ONE signal after K inner steps on its context (differentiable; a reference)."""
        ctx = slice(None) if context is None else context
        fast = self.adapt(task, query[ctx], values[ctx])
        return task.loss(task.observe(field_function(self.field), fast, query), values)

    def meta_gradient(self, task: Task, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        names, meta = zip(*self.named_parameters())
        if self.config.batching == "vmap":
            return self._vmap_gradient(task, batch, names, meta)
        total, loss, n = self._zero_grads(), batch.values.new_zeros(()), len(batch)
        for b in range(n):
            query, values, ctx = signal_rows(batch, b)
            cq, cv = (query, values) if ctx is None else (query[ctx], values[ctx])
            fast = self.adapt(task, cq, cv)
            signal_loss, outer = self.outer_gradient(task, fast, query, values)
            grads = torch.autograd.grad(list(fast.values()), meta, [outer[k] / n for k in fast], allow_unused=True)
            for name, g in zip(names, grads):
                if g is not None:
                    total[name] += g
            loss = loss + signal_loss / n
        return {"loss": loss}, total

    def _vmap_gradient(self, task: Task, batch: Batch, names, meta) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if batch.context is not None and not isinstance(batch.context, Tensor):
            raise ValueError("batching='vmap' needs one context shared by the meta-batch; use batching='loop'")
        ctx = slice(None) if batch.context is None else batch.context
        q_dim = 0 if batch.per_signal_query else None
        fn = field_function(self.field)
        grad_fn = torch.func.grad(lambda p, q, v: task.loss(task.observe(fn, p, q), v))

        def adapted_loss(query: Tensor, values: Tensor) -> Tensor:
            params = self.init_params()
            cq, cv = query[ctx], values[ctx]
            for _ in range(self.config.inner_steps):
                grads = grad_fn(params, cq, cv)
                if self.config.first_order:
                    grads = {k: g.detach() for k, g in grads.items()}
                params = sgd_step(params, grads, self.inner_lrs())
            return task.loss(task.observe(fn, params, query), values)

        losses = torch.vmap(adapted_loss, in_dims=(q_dim, 0))(batch.query, batch.values)
        grads = torch.autograd.grad(losses.mean(), meta, allow_unused=True)
        total = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, meta, grads)}
        return {"loss": losses.detach().mean()}, total


def MetaSGD(field: nn.Module, **options) -> MAML:
    """MAML with a learned per-parameter inner step size (Li et al. 2017)."""
    return MAML(field, meta_sgd=True, **options)


def FOMAML(field: nn.Module, **options) -> MAML:
    """MAML with the inner gradients detached (first order)."""
    return MAML(field, first_order=True, **options)
