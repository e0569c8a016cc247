"""A linear layer with optional random weight factorization (Wang et al.).

With factorization the weight is ``W = diag(exp(s)) @ V``: ``s`` (one scale per output unit)
and ``V`` are the trained parameters, so meta-learning and fitting act on ``(s, V)``. We train
``s`` in log space as in the paper (the jaxpi code trains ``g = exp(s)`` directly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class RWF:
    """Random weight factorization settings."""

    mu: float = 1.0
    """mean of the initial log-scales s"""
    sigma: float = 0.1
    """standard deviation of the initial log-scales s"""


class Linear(nn.Module):
    """``y = x @ W.T + b`` where W is a plain matrix or ``diag(exp(s)) @ V``.

    Args:
        in_dim, out_dim: feature sizes.
        weight_init: fills a ``(out_dim, in_dim)`` tensor in place with the plain weight.
        rwf: factorize the weight; the function at init equals the plain layer's.
        generator: random source for the initial weights (reproducible fields).
        scale_generator: random source for the RWF log-scales; kept apart from ``generator`` so a
            factorized field with the same seed computes exactly the plain field's function.
        masked: keep a 0/1 ``mask`` buffer (all ones at first) that multiplies the weight in every
            forward pass, so pruned weights stay zero in inner loops and in test-time fitting.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        weight_init: Callable[[Tensor, torch.Generator | None], None] | None = None,
        rwf: RWF | None = None,
        generator: torch.Generator | None = None,
        scale_generator: torch.Generator | None = None,
        masked: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.factorized = in_dim, out_dim, rwf is not None
        weight = torch.empty(out_dim, in_dim)
        bound = 1.0 / math.sqrt(in_dim)
        if weight_init is None:
            weight.uniform_(-bound, bound, generator=generator)
        else:
            weight_init(weight, generator)
        bias = torch.empty(out_dim).uniform_(-bound, bound, generator=generator)
        if rwf is None:
            self.weight = nn.Parameter(weight)
        else:
            s = torch.randn(out_dim, 1, generator=scale_generator) * rwf.sigma + rwf.mu
            self.s = nn.Parameter(s)
            self.v = nn.Parameter(weight / torch.exp(s))
        self.bias = nn.Parameter(bias)
        self.mask: Tensor | None
        self.register_buffer("mask", torch.ones(out_dim, in_dim) if masked else None)

    def effective_weight(self) -> Tensor:
        """The ``(out_dim, in_dim)`` weight the layer applies (masked where a mask is kept)."""
        weight = torch.exp(self.s) * self.v if self.factorized else self.weight
        return weight if self.mask is None else weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return nn.functional.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, out_dim={self.out_dim}, factorized={self.factorized}, "
                f"masked={self.mask is not None}")


def uniform_init(bound: float) -> Callable[[Tensor, torch.Generator | None], None]:
    """A weight initialiser drawing from U(-bound, bound)."""

    def init(weight: Tensor, generator: torch.Generator | None) -> None:
        weight.uniform_(-bound, bound, generator=generator)

    return init


def rwf_settings(config) -> RWF | None:
    """The RWF of a field config (its ``rwf``, ``rwf_mu``, ``rwf_sigma``), None when it has none."""
    return RWF(config.rwf_mu, config.rwf_sigma) if config.rwf else None


def init_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Weight and RWF-scale random streams of a field seeded ``seed`` (kept apart, so a factorized
    field computes exactly the plain field's function at init)."""
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1_000_003)
