"""Sparse fields (Meta-SparseINR, Lee et al., NeurIPS 2021): pruning masks as transformations of a field.

Masks live in the fields' linear layers (``FieldConfig(sparse=True)``) and multiply the weight in
every forward pass, so a pruned weight stays zero through inner loops and test-time fitting.
Pruning is global and unstructured over every weight matrix (first and last included); biases
are never pruned. The schedule that alternates pruning and meta-training is a trainer callback
(:mod:`metainr.train.pruning`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .config import FieldConfig
from .linear import Linear
from .mlp import Field, build_field, count_parameters


def named_masked_layers(field: Field) -> list[tuple[str, Linear]]:
    """(name, layer) of every linear layer; a field built without ``sparse=True`` raises."""
    layers = [(n, m) for n, m in field.named_modules() if isinstance(m, Linear)]
    if not layers or any(m.mask is None for _, m in layers):
        raise ValueError("pruning needs a field built with sparse=True (weight masks on every layer)")
    return layers


def masked_layers(field: Field) -> list[Linear]:
    """The field's masked linear layers, in order."""
    return [m for _, m in named_masked_layers(field)]


def density(field: Field) -> float:
    """Fraction of weight entries still alive (biases not counted)."""
    layers = masked_layers(field)
    return sum(float(m.mask.sum()) for m in layers) / sum(m.mask.numel() for m in layers)


def nonzero_parameters(field: Field) -> int:
    """Parameters a sparse field really has: alive weight entries plus every bias (and RWF scale)."""
    total = count_parameters(field)
    return total - sum(int((m.mask == 0).sum()) for m in masked_layers(field))


def _keep_count(field: Field, fraction: float | None, keep: int | None) -> int:
    alive = sum(int(m.mask.sum()) for m in masked_layers(field))
    if (fraction is None) == (keep is None):
        raise ValueError("give exactly one of fraction (of the alive weights to remove) or keep (weights to keep)")
    return min(alive, keep if keep is not None else int(round(alive * (1.0 - fraction))))


def _prune(field: Field, keep: int, scores: Tensor) -> int:
    """Keep the ``keep`` alive weights with the highest ``scores`` (flat, all layers); returns how many went."""
    layers = masked_layers(field)
    alive = torch.cat([m.mask.flatten() for m in layers]) > 0
    n_remove = int(alive.sum()) - keep
    if n_remove <= 0:
        return 0
    drop = torch.topk(scores.to(alive.device).masked_fill(~alive, math.inf), n_remove, largest=False).indices
    flat = alive.float()
    flat[drop] = 0.0
    with torch.no_grad():
        for m, chunk in zip(layers, torch.split(flat, [m.mask.numel() for m in layers])):
            m.mask.copy_(chunk.view_as(m.mask))
    return n_remove


def magnitude_prune(field: Field, fraction: float | None = None, *, keep: int | None = None) -> int:
    """Global unstructured magnitude pruning: zero the alive weights with the smallest |effective
    weight| across all layers, a ``fraction`` of them or down to ``keep``. Returns how many went."""
    with torch.no_grad():
        scores = torch.cat([m.effective_weight().abs().flatten() for m in masked_layers(field)])
    return _prune(field, _keep_count(field, fraction, keep), scores)


def random_prune(field: Field, fraction: float | None = None, *, keep: int | None = None,
                 generator: torch.Generator | None = None) -> int:
    """Remove uniformly random alive weights (the paper's baseline), as :func:`magnitude_prune`."""
    n = sum(m.mask.numel() for m in masked_layers(field))
    return _prune(field, _keep_count(field, fraction, keep), torch.rand(n, generator=generator))


def narrow_width(config: FieldConfig, target_params: int) -> int:
    """The hidden width whose DENSE field has the parameter count closest to ``target_params``."""
    def count(width: int) -> int:
        return count_parameters(build_field(dataclasses.replace(config, width=width, sparse=False)))

    best, width = 1, 1
    while count(width) <= target_params:
        best, width = width, width + 1
    return min((best, width), key=lambda w: abs(count(w) - target_params))
