"""GradNCP (Tack et al., NeurIPS 2023): MAML whose inner steps see only the most informative part
of each signal, corrected by a bootstrapped target, so meta-learning scales to large signals.

Three pieces, each a plain function of a params dict so they compose with any field:

- :func:`context_scores`: per-coordinate norm of the last layer's gradient, in closed form
  ``||e|| * sqrt(||h||^2 + 1)`` (e = residual, h = penultimate features) from ONE forward pass
  without autograd, in coordinate chunks;
- :func:`select_context`: ``topk`` of those scores per signal (or a random subset, the ablation);
- the bootstrap target: L first-order full-context steps from theta_K (:meth:`GradNCP.bootstrap`).

Test-time gradient rescaling lives in :func:`metainr.fit.fit` (``rescale=gamma``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..fields import Field
from ..functional import Params, chunked_mse_grad, coordinate_chunks, predict_with_features, sgd_step, signal_mse
from .base import LearnerConfig, TestRule
from .maml import MAML

PRUNE_METHODS = ("gradnorm", "random")


def kept_count(n: int, keep_ratio: float) -> int:
    """How many of ``n`` coordinates a keep ratio gamma keeps: ceil(gamma * n), at least 1."""
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


@torch.no_grad()
def context_scores(field: nn.Module, params: Params, coords: Tensor, values: Tensor,
                   chunk: int = 16384) -> Tensor:
    """Norm of the last layer's gradient of each coordinate's squared error (up to the factor 2
    of ``d||e||^2``): ``||e|| * sqrt(||h||^2 + 1)`` with e = f(x) - y and h the penultimate
    features (the head is W h + b, so dW = e h^T and db = e).

    coords: (N, d); values: (N, C) -> scores (N,). Runs in chunks of ``chunk`` coordinates, so
    nothing larger than (chunk, width) is materialised; no autograd.
    """
    scores = torch.empty(coords.shape[0], dtype=values.dtype)
    for idx in coordinate_chunks(coords.shape[0], chunk):
        pred, h = predict_with_features(field, params, coords[idx])
        scores[idx] = (pred - values[idx]).norm(dim=-1) * (h.pow(2).sum(dim=-1) + 1).sqrt()
    return scores


def select_context(scores: Tensor, keep_ratio: float, method: str = "gradnorm",
                   generator: torch.Generator | None = None) -> Tensor:
    """Indices of the kept coordinates of ONE signal: the ``ceil(gamma N)`` highest scores
    (``topk``, not a full sort) or, for ``method="random"``, as many uniformly at random.

    scores: (N,) -> (ceil(gamma N),) long.
    """
    k = kept_count(scores.shape[0], keep_ratio)
    if method == "gradnorm":
        return torch.topk(scores, k, sorted=False).indices
    if method == "random":
        return torch.randperm(scores.shape[0], generator=generator)[:k]
    raise ValueError(f"prune must be one of {PRUNE_METHODS}, got {method!r}")


class GradNCP(MAML):
    """MAML with gradient-norm context pruning before every inner step and a bootstrapped
    correction of the outer loss (``kind="gradncp"``).

    Inner: at the current fast weights, keep the top ``keep_ratio`` of the context by
    :func:`context_scores` and take a (second-order) SGD step on those only. Outer (per signal):
    ``MSE(theta_K; full) + boot_weight * ||stopgrad(theta_boot) - theta_K||_2``, where theta_boot is
    ``boot_steps`` first-order full-context steps of size ``boot_lr`` from theta_K. The full-context
    passes (scores, bootstrap, outer loss) run in chunks of ``chunk_coords``; only the pruned
    inner steps keep a graph, so memory follows ``K * gamma * N`` instead of ``K * N``.
    """

    def __init__(self, field: Field, config: LearnerConfig | None = None, **overrides) -> None:
        if config is None:
            config = LearnerConfig(**{"kind": "gradncp", **overrides})
        elif overrides:
            raise TypeError("pass either a LearnerConfig or keyword arguments, not both")
        if not 0 < config.keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {config.keep_ratio}")
        if config.prune not in PRUNE_METHODS:
            raise ValueError(f"prune must be one of {PRUNE_METHODS}, got {config.prune!r}")
        if config.boot_steps < 0:
            raise ValueError(f"boot_steps must be >= 0, got {config.boot_steps}")
        if config.batching != "loop":
            raise ValueError("gradncp selects a different context per signal: it needs batching='loop'")
        super().__init__(field, config)
        self._generator = torch.Generator().manual_seed(0)

    def test_rule(self) -> TestRule:
        rule = super().test_rule()
        return TestRule(rule.optimizer, rule.lrs, self.config.keep_ratio if self.config.test_rescale else 0.0)

    def select(self, params: Params, coords: Tensor, values: Tensor) -> Tensor:
        """Kept context indices (M,) of ONE signal at ``params``."""
        if self.config.prune == "random":
            return select_context(torch.empty(coords.shape[0]), self.config.keep_ratio, "random", self._generator)
        detached = {n: p.detach() for n, p in params.items()}
        scores = context_scores(self.field, detached, coords, values, self.config.chunk_coords)
        return select_context(scores, self.config.keep_ratio)

    def adapt(self, coords: Tensor, values: Tensor, trace: list[Tensor] | None = None) -> Params:
        """K pruned inner steps of ONE signal from the init (differentiable w.r.t. the init).

        With ``trace`` (a list), the kept indices of every step are appended to it, and one more
        selection at theta_K (K + 1 in all), for pictures of what the inner loop looks at.
        """
        params = self.init_params()
        for _ in range(self.config.inner_steps):
            keep = self.select(params, coords, values)
            if trace is not None:
                trace.append(keep)
            loss = signal_mse(self.field, params, coords[keep], values[keep])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not self.config.first_order)
            params = sgd_step(params, dict(zip(params, grads)), self.inner_lrs())
        if trace is not None:
            trace.append(self.select(params, coords, values))
        return params

    def bootstrap(self, fast: Params, coords: Tensor, values: Tensor, first_grad: Params | None = None) -> Params:
        """theta_boot: ``boot_steps`` first-order full-context SGD steps from theta_K (no graph).

        ``first_grad``, the full-context gradient at theta_K when the caller has it already (the
        outer loss needs exactly that), saves one of the L passes.
        """
        boot = {n: p.detach() for n, p in fast.items()}
        for step in range(self.config.boot_steps):
            if step == 0 and first_grad is not None:
                grads = first_grad
            else:
                _, grads = chunked_mse_grad(self.field, boot, coords, values, self.config.chunk_coords)
            boot = sgd_step(boot, grads, self.config.boot_lr)
        return boot

    def outer_gradient(self, fast: Params, coords: Tensor, values: Tensor) -> tuple[Tensor, Params]:
        mse, grads = super().outer_gradient(fast, coords, values)
        if self.config.boot_weight == 0 or self.config.boot_steps == 0:
            return mse, grads
        target = self.bootstrap(fast, coords, values, first_grad=grads)  # a constant: the stop-gradient
        leaves = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
        with torch.enable_grad():
            # (+1e-20: a finite gradient, 0, when theta_boot == theta_K)
            distance = torch.sqrt(sum(((target[n] - p) ** 2).sum() for n, p in leaves.items()) + 1e-20)
            reg = self.config.boot_weight * distance
            reg_grads = torch.autograd.grad(reg, list(leaves.values()))
        return mse + reg.detach(), {n: grads[n] + g for n, g in zip(leaves, reg_grads)}
