"""Context policies, the bootstrap correction and test-time gradient rescaling (GradNCP's parts),
as small pieces that any gradient learner and any task compose with.

- A context policy picks, before every inner step, which observations the step sees:
  ``all``, ``random`` (a fraction gamma, drawn afresh) or ``gradnorm`` (the top gamma by the norm
  of the last layer's gradient of each observation's loss, GradNCP's score).
- The bootstrap correction (Tack et al. 2023): L first-order full-context steps from theta_K give
  theta_boot; the outer loss gains ``lambda * ||stopgrad(theta_boot) - theta_K||``.
- Test-time rescaling: fitting steps along the full gradient with the pruned gradient's norm.

The score is ``||e|| * sqrt(||h||^2 + 1)`` in closed form (e the residual, h the penultimate
features, from one forward pass) when a task observes its field directly; for any other forward
model it is computed with ``torch.func``: the Jacobian of the observations with respect to a
perturbation ``(dW, db)`` of the last layer (``jacfwd``), contracted with the residuals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config import Config
from ..functional import Params, coordinate_chunks, field_function, global_norm
from ..inner_loop import Select, take_steps
from ..tasks.base import Batch, Task

POLICIES = ("all", "random", "gradnorm")


@dataclass(frozen=True)
class ContextConfig(Config):
    """Which observations each inner step sees, the bootstrap correction and test-time rescaling."""

    policy: str = "all"
    """all | random (a fraction keep_ratio drawn each step) | gradnorm (GradNCP's top keep_ratio)"""
    keep_ratio: float = 0.25
    """fraction gamma of the context an inner step keeps (random, gradnorm)"""
    boot_steps: int = 0
    """bootstrap correction: first-order full-context steps L from theta_K (0: off)"""
    boot_lr: float = 5e-2
    """bootstrap correction: step size of those steps"""
    boot_weight: float = 100.0
    """bootstrap correction: weight lambda of ||stopgrad(theta_boot) - theta_K||"""
    test_rescale: bool = False
    """fit new signals with the full gradient rescaled to the norm of the top-keep_ratio gradient"""
    seed: int = 0
    """seed of the random policy"""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"context policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0 < self.keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.boot_steps < 0 or self.boot_weight < 0:
            raise ValueError(f"boot_steps and boot_weight must be >= 0, got {self.boot_steps}, {self.boot_weight}")


GRADNCP = ContextConfig(policy="gradnorm", keep_ratio=0.25, boot_steps=5, boot_lr=5e-2, boot_weight=100.0,
                        test_rescale=True)
"""The GradNCP paper's settings (gamma 0.25, L = 5, lr_boot 5e-2, lambda 100, test-time rescaling)."""


def kept_count(n: int, keep_ratio: float) -> int:
    """How many of ``n`` observations a keep ratio gamma keeps: ceil(gamma * n), at least 1."""
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


def observes_directly(task: Task) -> bool:
    """True when the task's forward model is the identity (its ``observe`` is the base one)."""
    return type(task).observe is Task.observe


@torch.no_grad()
def closed_form_scores(field: nn.Module, params: Mapping[str, Tensor], query: Tensor, values: Tensor,
                       chunk: int = 16384) -> Tensor:
    """``||e|| * sqrt(||h||^2 + 1)`` per observation of a directly observed field (no autograd):
    query (N, d), values (N, C) -> (N,), in chunks of ``chunk`` rows. For a field whose row is
    P outputs of one head (features (N, P, F), e.g. NeRV's frames) the exact norm of
    ``sum_p e_p [h_p, 1]^T`` instead."""
    parts = []
    for rows in coordinate_chunks(query.shape[0], chunk):
        pred, h = functional_call(field, dict(params), (query[rows],), {"return_features": True})
        err = pred - values[rows]
        if h.dim() == 2:  # one head output per row: the gradient e [h, 1]^T is rank one
            parts.append(err.norm(dim=-1) * (h.pow(2).sum(dim=-1) + 1).sqrt())
        else:  # a row is P outputs of one shared head (a frame-valued field): sum_p e_p [h_p, 1]^T
            e = err.view(h.shape[0], h.shape[1], -1)  # (M, P, C)
            grad_w = torch.einsum("mpc,mpf->mcf", e, h)
            parts.append((grad_w.pow(2).sum(dim=(1, 2)) + e.sum(dim=1).pow(2).sum(dim=-1)).sqrt())
    return torch.cat(parts)


def general_scores(task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor, values: Tensor,
                   chunk: int = 16384) -> Tensor:
    """Norm of the gradient of each observation's ``0.5 ||e||^2`` with respect to the field's
    (effective) last layer, through ``task.observe``: query (N, d), values (N, C) -> (N,).

    The last layer is perturbed as ``out + h @ dW.T + db``; ``jacfwd`` gives the Jacobian of the
    observations with respect to ``(dW, db)`` at zero, ``P = C (F + 1)`` tangents, swept over rows
    in chunks of about ``chunk / P``.
    """
    params = {n: p.detach() for n, p in params.items()}
    c = int(field.config.out_dim)  # the field's output channels; observations may have others (views: rgb of 4)
    with torch.no_grad():  # the width of the features the last layer reads, from one probe point
        probe = values.new_zeros(1, field.config.in_dim)
        width = functional_call(field, params, (probe,), {"return_features": True})[1].shape[-1]
    n_pert = c * (width + 1)

    def observe(z: Tensor, rows_query: Tensor) -> tuple[Tensor, Tensor]:
        dw, db = z[: c * width].view(c, width), z[c * width:]

        def perturbed(p: Mapping[str, Tensor], x: Tensor) -> Tensor:
            out, h = functional_call(field, dict(p), (x,), {"return_features": True})
            return out + h @ dw.T + db

        pred = task.observe(perturbed, params, rows_query)
        return pred, pred

    zero = torch.zeros(n_pert, dtype=values.dtype, device=values.device)
    parts = []
    for rows in coordinate_chunks(query.shape[0], max(1, chunk // n_pert)):
        jac, pred = torch.func.jacfwd(observe, has_aux=True)(zero, query[rows])  # (M, C, P), (M, C)
        err = (pred - values[rows]).detach()
        parts.append(torch.einsum("mc,mcp->mp", err, jac.detach()).norm(dim=-1))
    return torch.cat(parts)


def context_scores(task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor, values: Tensor,
                   chunk: int = 16384) -> Tensor:
    """GradNCP's score of every observation of ONE signal (N,): the closed form where the task
    observes its field directly, the general ``torch.func`` path otherwise."""
    if observes_directly(task):
        return closed_form_scores(field, params, query, values, chunk)
    return general_scores(task, field, params, query, values, chunk)


def select_context(scores: Tensor, keep_ratio: float, method: str = "gradnorm",
                   generator: torch.Generator | None = None) -> Tensor:
    """Indices of the kept observations of ONE signal: the ``ceil(gamma N)`` highest scores
    (``topk``, not a full sort) or, for ``method="random"``, as many uniformly at random
    (drawn on the CPU generator, then moved to the scores' device). scores: (N,) -> (k,) long."""
    k = kept_count(scores.shape[0], keep_ratio)
    if method == "gradnorm":
        return torch.topk(scores, k, sorted=False).indices
    if method == "random":
        return torch.randperm(scores.shape[0], generator=generator)[:k].to(scores.device)
    raise ValueError(f"context method must be 'gradnorm' or 'random', got {method!r}")


class ContextPolicy:
    """Chooses the observations of each inner step (see :class:`ContextConfig`)."""

    def __init__(self, config: ContextConfig) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)

    @property
    def prunes(self) -> bool:
        """False for the ``all`` policy (every inner step sees the whole context)."""
        return self.config.policy != "all"

    def select(self, task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor, values: Tensor,
               chunk: int = 16384) -> Tensor | None:
        """Row indices (k,) of ONE signal's context for the next inner step at ``params``; None: all."""
        if self.config.policy == "all":
            return None
        if self.config.policy == "random":
            return select_context(query.new_empty(query.shape[0]), self.config.keep_ratio, "random", self.generator)
        scores = context_scores(task, field, params, query, values, chunk)
        return select_context(scores, self.config.keep_ratio)

    def selector(self, task: Task, field: nn.Module, chunk: int = 16384) -> Select | None:
        """:meth:`select` as :func:`~metainr.inner_loop.take_steps` calls it,
        ``(params, query (M, d), values (M, C)) -> rows | None``; None for the ``all`` policy."""
        if not self.prunes:
            return None
        return lambda params, query, values: self.select(task, field, params, query, values, chunk)


def bootstrap_target(task: Task, field: nn.Module, fast: Mapping[str, Tensor], query: Tensor, values: Tensor,
                     config: ContextConfig, chunk: int | None = None, first_grads: Mapping[str, Tensor] | None = None,
                     functional: bool = False) -> Params:
    """theta_boot of ONE signal: ``boot_steps`` first-order SGD steps of size ``boot_lr`` on every row
    (query (N, d), values (N, C)) from stopgrad(theta_K) = ``fast``; detached. ``first_grads``: the
    full-context gradient at theta_K when the caller has it (saves one pass); ``functional``: under
    ``vmap`` (``torch.func`` gradients)."""
    return take_steps(task, field, fast, query, values, config.boot_steps, lr=config.boot_lr, order=0,
                      chunk=chunk, first_grads=first_grads, functional=functional)


def bootstrap_correction(task: Task, field: nn.Module, fast: Mapping[str, Tensor], query: Tensor, values: Tensor,
                         config: ContextConfig, chunk: int,
                         first_grad: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Params]:
    """``lambda * ||stopgrad(theta_boot) - theta_K||`` and its gradient w.r.t. theta_K, theta_boot
    being :func:`bootstrap_target` (steps in row chunks of ``chunk``).

    ``first_grad``, the full-context gradient at theta_K when the caller has it (the outer loss
    needs exactly that), saves one of the L passes.
    """
    boot = bootstrap_target(task, field, fast, query, values, config, chunk, first_grad)
    diff = {n: p.detach() - boot[n] for n, p in fast.items()}
    distance = global_norm(diff)
    # d||x|| / dx = x / ||x||; (+1e-20: a finite gradient, 0, when theta_boot == theta_K)
    scale = config.boot_weight / torch.sqrt(distance.pow(2) + 1e-20)
    return config.boot_weight * distance, {n: d * scale for n, d in diff.items()}


class GradientRescaling:
    """GradNCP's test-time rescaling as a ``fit`` gradient transform: every signal steps along its
    full gradient scaled to the norm of its gradient on the top-``keep_ratio`` observations."""

    def __init__(self, task: Task, field: nn.Module, keep_ratio: float, chunk: int = 16384) -> None:
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"rescaling needs a keep ratio in (0, 1], got {keep_ratio}")
        self.task, self.field, self.keep_ratio, self.chunk = task, field, keep_ratio, chunk

    def __call__(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], batch: Batch) -> Params:
        """params, grads: name -> (b, *shape) for the b signals of ``batch`` -> rescaled grads."""
        fn = field_function(self.field)
        norms = []
        for b in range(len(batch)):
            one = {n: p[b].detach() for n, p in params.items()}
            query, values = batch.query_of(b), batch.values[b]
            keep = select_context(context_scores(self.task, self.field, one, query, values, self.chunk),
                                  self.keep_ratio)
            leaves = {n: p.requires_grad_(True) for n, p in one.items()}
            with torch.enable_grad():
                loss = self.task.loss(self.task.observe(fn, leaves, query[keep]), values[keep])
                pruned = torch.autograd.grad(loss, list(leaves.values()))
            norms.append(global_norm(pruned))
        factor = torch.stack(norms) / global_norm(grads, batched=True).clamp_min(1e-30)
        return {n: g * factor.view(-1, *[1] * (g.dim() - 1)) for n, g in grads.items()}
