"""What every meta-learner offers the trainer and test-time fitting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..config import Config
from ..fields import Field
from ..functional import LearningRates, Params, field_params


@dataclass(frozen=True)
class LearnerConfig(Config):
    """Settings of a meta-learner (the field is configured separately)."""

    kind: str = "maml"
    """learner: maml | fomaml | metasgd | reptile | transinr | gradncp"""
    inner_steps: int = 3
    """inner-loop steps K per signal during meta-training"""
    inner_lr: float = 1e-2
    """inner-loop step size alpha (Meta-SGD: its initial value)"""
    first_order: bool = False
    """detach inner gradients (set for fomaml; optional for metasgd)"""
    inner_optimizer: str = "sgd"
    """reptile: sgd | adam for the inner loop"""
    batching: str = "loop"
    """how the meta-batch runs: loop (per-signal backward, least memory) | vmap"""
    image_size: int = 0
    """transinr: side of the input images (0: set from the data)"""
    patch_size: int = 0
    """transinr: patch side (0: the smallest divisor of image_size giving at most 8 patches a side)"""
    hyper_dim: int = 128
    """transinr: token width of the transformer"""
    hyper_depth: int = 4
    """transinr: transformer layers"""
    hyper_heads: int = 4
    """transinr: attention heads"""
    n_groups: int = 32
    """transinr: weight tokens per layer (at most the layer's output width)"""
    chunk_coords: int = 16384
    """coordinates per chunk in full-signal passes outside the inner loop (outer loss, scoring, bootstrap)"""
    keep_ratio: float = 0.25
    """gradncp: fraction gamma of the context kept for each inner step"""
    prune: str = "gradnorm"
    """gradncp: how the kept context is chosen: gradnorm (the paper) | random (ablation)"""
    boot_steps: int = 5
    """gradncp: first-order full-context steps L that make the bootstrap target"""
    boot_lr: float = 5e-2
    """gradncp: step size of the bootstrap steps"""
    boot_weight: float = 100.0
    """gradncp: weight lambda of ||stopgrad(theta_boot) - theta_K|| in the outer loss"""
    test_rescale: bool = True
    """gradncp: rescale test-time gradients to the pruned-gradient norm"""



@dataclass(frozen=True)
class TestRule:
    """How a learned init is fitted at test time."""

    optimizer: Literal["sgd", "adam"]
    lrs: LearningRates
    rescale: float = 0.0
    """GradNCP test-time rescaling: keep ratio gamma of the pruned gradient (0: plain steps)"""


Context = Union[None, Tensor, Sequence[Tensor]]
"""Which coordinates an inner loop may see: None (all), one index tensor (M,) shared by the
meta-batch, or one index tensor per signal. The outer loss always uses every coordinate."""


def signal_context(context: Context, b: int) -> Optional[Tensor]:
    """The context indices of signal ``b`` of a meta-batch (None: all coordinates)."""
    if context is None or isinstance(context, Tensor):
        return context
    return context[b]


class Learner(nn.Module):
    """A meta-learner owns the field (whose parameters are the meta-learned init) and its math.

    Subclasses implement :meth:`meta_gradient`; the trainer applies the returned gradients with
    its outer optimiser. Everything the trainer optimises is ``self.named_parameters()``.
    """

    def __init__(self, field: Field, config: LearnerConfig) -> None:
        super().__init__()
        if config.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {config.inner_steps}")
        if config.batching not in ("loop", "vmap"):
            raise ValueError(f"batching must be 'loop' or 'vmap', got {config.batching!r}")
        self.field = field
        self.config = config

    def init_params(self) -> Params:
        """The meta-learned initialisation (live parameters, differentiable)."""
        return field_params(self.field)

    def signal_init(self, coords: Tensor, values: Tensor) -> Params:
        """Where fitting of each signal starts: the shared learned init (unbatched) by default;
        a hypernetwork returns one init per signal (name -> (B, *shape)).

        coords: (N, d); values: (B, N, C). The result is detached, ready for :func:`metainr.fit`.
        """
        return {n: p.detach() for n, p in self.init_params().items()}

    def inner_lrs(self) -> LearningRates:
        """Step size(s) of the inner loop: a float, or a tensor per parameter."""
        return self.config.inner_lr

    def test_rule(self) -> TestRule:
        """The optimiser and step size(s) to fit new signals from this init."""
        lrs = self.inner_lrs()
        if not isinstance(lrs, float):
            lrs = {n: t.detach().clone() for n, t in lrs.items()}
        return TestRule("sgd", lrs)

    def meta_gradient(self, coords: Tensor, values: Tensor,
                      context: Context = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        """One meta-batch -> (stats, gradient for every name in ``named_parameters()``).

        coords: (N, d) shared by the batch; values: (B, N, C); context: the coordinates the
        inner loop sees (see :data:`Context`), e.g. a few CT views of a dense sinogram.
        """
        raise NotImplementedError

    def _zero_grads(self) -> dict[str, Tensor]:
        return {n: torch.zeros_like(p) for n, p in self.named_parameters()}
