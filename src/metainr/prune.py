"""Meta-SparseINR (Lee et al., NeurIPS 2021): pruning masks as transformations of a field.

Masks live in the fields' linear layers (``FieldConfig(sparse=True)``) and multiply the weight in
every forward pass, so a pruned weight stays zero through inner loops and test-time fitting.
Pruning is global and unstructured over every weight matrix (first and last included); biases
are never pruned. :func:`iterative_pruning` runs the paper's schedule around any learner.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .config import Config
from .data import ImageDataset
from .fields import Field, FieldConfig, Linear, build_field, count_parameters
from .meta import Learner
from .train import TrainConfig, meta_train, save_checkpoint


@dataclass(frozen=True)
class PruneConfig(Config):
    """The iterative pruning schedule."""

    rounds: int = 0
    """pruning rounds R after dense meta-training (density after R rounds: (1 - fraction)^R)"""
    fraction: float = 0.2
    """fraction of the REMAINING weights removed in each round"""
    steps: int = 200
    """outer steps of meta-training after each pruning round"""
    method: str = "magnitude"
    """magnitude (smallest |w| globally) | random (the paper's baseline)"""
    seed: int = 0
    """seed of random pruning"""

    def __post_init__(self) -> None:
        if self.rounds < 0 or not 0 < self.fraction < 1 or self.steps < 0:
            raise ValueError(f"need rounds >= 0, 0 < fraction < 1, steps >= 0; got {self.rounds}, {self.fraction}, "
                             f"{self.steps}")
        if self.method not in ("magnitude", "random"):
            raise ValueError(f"prune method must be 'magnitude' or 'random', got {self.method!r}")


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
    drop = torch.topk(scores.masked_fill(~alive, math.inf), n_remove, largest=False).indices
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


RoundCallback = Callable[[int, Learner], None]


def iterative_pruning(
    learner: Learner,
    dataset: ImageDataset,
    train: TrainConfig,
    prune: PruneConfig,
    *,
    run_dir: str | Path | None = None,
    val: ImageDataset | None = None,
    data: dict | None = None,
    on_round: RoundCallback | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Dense meta-training (``train.steps``), then ``prune.rounds`` rounds of pruning
    ``prune.fraction`` of the remaining weights followed by ``prune.steps`` more outer steps.

    Each round's init is checkpointed as ``round_RR_density_D.safetensors`` in ``run_dir`` and
    handed to ``on_round(round, learner)``. Returns one record per round (density, params).
    """
    masked_layers(learner.field)
    run = Path(run_dir) if run_dir is not None else None
    gen = torch.Generator().manual_seed(prune.seed)
    records = []
    total = sum(m.mask.numel() for m in masked_layers(learner.field))
    for r in range(prune.rounds + 1):
        if r > 0:
            # the count after r rounds is set from the total, so rounding never accumulates
            keep = int(round(total * (1.0 - prune.fraction) ** r))
            if prune.method == "magnitude":
                magnitude_prune(learner.field, keep=keep)
            else:
                random_prune(learner.field, keep=keep, generator=gen)
        cfg = train if r == 0 else dataclasses.replace(train, steps=prune.steps, seed=train.seed + r)
        meta_train(learner, dataset, cfg, run_dir=run / f"round_{r:02d}" if run else None, val=val, data=data,
                   progress=progress)
        record = {"round": r, "density": density(learner.field), "params": nonzero_parameters(learner.field)}
        records.append(record)
        if run is not None:
            save_checkpoint(run / f"round_{r:02d}_density_{record['density']:.3f}.safetensors", learner, None,
                            cfg.steps, cfg, data, {"prune": prune.to_dict(), **record})
        if on_round is not None:
            on_round(r, learner)
    return records
