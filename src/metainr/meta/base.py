"""What every meta-learner offers the trainer and test-time fitting.

A learner owns a field (whose parameters are the meta-learned init) and its math: it maps a
task's batch to an outer gradient, and says how new signals are fitted from its init. It never
knows which task it runs, and never touches optimisers, devices or files (the trainer's job).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from ..config import Config
from ..fields import Field
from ..functional import LearningRates, Params, field_params
from ..tasks.base import Batch, Task
from .context import ContextConfig, ContextPolicy, GradientRescaling


@dataclass(frozen=True)
class TestRule:
    """How a learned init is fitted at test time."""

    optimizer: Literal["sgd", "adam"]
    lrs: LearningRates
    rescale: float = 0.0
    """GradNCP test-time rescaling: keep ratio gamma of the pruned gradient (0: plain steps)"""

    def fit_options(self, task: Task, field: nn.Module) -> dict[str, Any]:
        """Keyword arguments of :func:`metainr.fit` that apply this rule on ``task``."""
        transform = GradientRescaling(task, field, self.rescale) if self.rescale else None
        return {"optimizer": self.optimizer, "lr": self.lrs, "transform": transform}


def split_overrides(overrides: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Keyword arguments split by which config dataclass has a field of that name."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in overrides.items():
        for part, cls in zip(parts, classes):
            if key in {f.name for f in dataclasses.fields(cls)}:
                part[key] = value
                break
        else:
            raise TypeError(f"unknown option {key!r} for {', '.join(c.__name__ for c in classes)}")
    return parts


class Learner(nn.Module):
    """Base of the meta-learners. Subclasses set ``Config`` and implement :meth:`meta_gradient`.

    ``Learner(field, config=None, context=None, **options)``: options are fields of the learner's
    config or of :class:`ContextConfig`. Everything the trainer optimises is ``named_parameters()``.
    """

    Config: ClassVar[type] = Config
    name: str = ""

    def __init__(self, field: Field, config: Any = None, context: ContextConfig | None = None,
                 **options: Any) -> None:
        super().__init__()
        own, ctx = split_overrides(options, self.Config, ContextConfig)
        config = dataclasses.replace(config, **own) if config is not None else self.Config(**own)
        context = dataclasses.replace(context, **ctx) if context is not None else ContextConfig(**ctx)
        self.field = field
        self.config = config
        self.context = context
        self.policy = ContextPolicy(context)

    def spec(self) -> dict[str, Any]:
        """Registry name + configs: what a checkpoint stores to rebuild this learner."""
        return {"name": self.name, "config": self.config.to_dict(), "context": self.context.to_dict()}

    def init_params(self) -> Params:
        """The meta-learned initialisation (live parameters, differentiable)."""
        return field_params(self.field)

    def signal_init(self, task: Task, batch: Batch) -> Params:
        """Where fitting of each signal starts: the shared learned init (unbatched) by default;
        a hypernetwork returns one init per signal (name -> (B, *shape)). Detached."""
        return {n: p.detach() for n, p in self.init_params().items()}

    def inner_lrs(self) -> LearningRates:
        """Step size(s) of the inner loop: a float, or a tensor per parameter."""
        return self.config.inner_lr

    def test_rule(self) -> TestRule:
        """The optimiser and step size(s) to fit new signals from this init."""
        lrs = self.inner_lrs()
        if not isinstance(lrs, float):
            lrs = {n: t.detach().clone() for n, t in lrs.items()}
        return TestRule("sgd", lrs, self._rescale())

    def _rescale(self) -> float:
        return self.context.keep_ratio if self.context.test_rescale else 0.0

    def meta_gradient(self, task: Task, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One meta-batch -> (stats, gradient for every name in ``named_parameters()``).

        Stats are 0-dim tensors (``"loss"``: the mean outer loss); nothing here syncs with the host.
        """
        raise NotImplementedError

    def _zero_grads(self) -> dict[str, Tensor]:
        return {n: torch.zeros_like(p) for n, p in self.named_parameters()}


def signal_rows(batch: Batch, b: int) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(query (N, d), values (N, C), context indices or None) of signal ``b``."""
    return batch.query_of(b), batch.values[b], batch.context_of(b)
