"""Reptile (Nichol et al. 2018): move the init towards each signal's fitted params."""
from __future__ import annotations

import torch
from torch import Tensor

from ..fields import Field
from ..fit import fit
from .base import Context, Learner, LearnerConfig, TestRule


class Reptile(Learner):
    """K plain fitting steps per signal; the outer "gradient" is ``theta - mean_b theta_K^(b)``.

    The inner loop is SGD (lr ``inner_lr``) or Adam, run for the whole meta-batch at once; the
    trainer hands the returned gradient to its outer optimiser (Adam in the learnit setting).
    """

    def __init__(self, field: Field, config: LearnerConfig | None = None, **overrides) -> None:
        if config is None:
            config = LearnerConfig(kind="reptile", **overrides)
        elif overrides:
            raise TypeError("pass either a LearnerConfig or keyword arguments, not both")
        if config.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"reptile inner_optimizer must be 'sgd' or 'adam', got {config.inner_optimizer!r}")
        super().__init__(field, config)

    def test_rule(self) -> TestRule:
        return TestRule(self.config.inner_optimizer, self.config.inner_lr)  # type: ignore[arg-type]

    def meta_gradient(self, coords: Tensor, values: Tensor,
                      context: Context = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        init = {n: p.detach() for n, p in self.init_params().items()}
        rule = self.test_rule()
        if context is None or isinstance(context, Tensor):  # one shared context: the whole batch at once
            ctx = slice(None) if context is None else context
            groups = [(slice(None), ctx)]
        else:
            groups = [(slice(b, b + 1), c) for b, c in enumerate(context)]
        fitted, mse = [], []
        for rows, ctx in groups:
            result = fit(self.field, init, coords[ctx], values[rows][:, ctx], self.config.inner_steps,
                         optimizer=rule.optimizer, lr=rule.lrs, record=[self.config.inner_steps])
            fitted.append(result.params)
            mse.append(result.final_mse)
        grads = {f"field.{n}": init[n] - torch.cat([f[n] for f in fitted]).mean(dim=0) for n in init}
        return {"loss": float(torch.cat(mse).mean())}, grads
