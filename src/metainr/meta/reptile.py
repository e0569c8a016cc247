"""Reptile (Nichol et al. 2018): move the init towards each signal's fitted params."""
from __future__ import annotations

from torch import Tensor

from ..fields import Field
from ..fit import fit
from .base import Learner, LearnerConfig, TestRule


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

    def meta_gradient(self, coords: Tensor, values: Tensor) -> tuple[dict[str, float], dict[str, Tensor]]:
        init = {n: p.detach() for n, p in self.init_params().items()}
        rule = self.test_rule()
        result = fit(self.field, init, coords, values, self.config.inner_steps,
                     optimizer=rule.optimizer, lr=rule.lrs, record=[self.config.inner_steps])
        grads = {f"field.{n}": init[n] - result.params[n].mean(dim=0) for n in init}
        return {"loss": float(result.final_mse.mean())}, grads
