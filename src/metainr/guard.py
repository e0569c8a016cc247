"""The out-of-class guard: fit from a learned init only where it beats a random init.

A learned init helps signals of the class it was meta-trained on and can hurt others (a CT prior
of phantoms on anatomy scored dB below a random init), and a user cannot tell in advance which
their signal is. :func:`guarded_fit` fits every signal from both starts (the probes) and keeps,
per signal, the start whose fit has the lower loss on observations: never a ground truth.

- With held-out stopping on (sparse observations), the loss is the held-out loss of each probe's
  chosen step, on the same held-out rows: what the fit cannot see is what tells a prior that
  generalises from one that does not.
- With it off (dense observations: the observations are the whole signal), the loss is each
  probe's loss on every observation, the quantity the fit is scored by. Held-out rows would judge
  something a dense fit never needs: a face prior fitted on 90% of a face's values reproduces
  them at 40 dB but predicts the other 10% worse than a blurry random start does.

The probes are the fit itself by default (``probe_steps`` = the fit's steps): which start is
better after K steps is only known after K steps, as curves cross late (a random init trails a
prior for its first steps, then may overtake it: ``benchmarks/trust.py``). So the guard costs one
more fit, the loser's, and the winner's probe is returned as it is. A shorter probe
(``probe_steps`` P < K) costs 2P steps plus a fit of the winner from its start, and decides on the
early steps, where a prior usually leads even out of its class.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .fit import FitResult, fit
from .tasks.base import Batch, Task

STARTS = ("prior", "random")


@dataclass
class Candidate:
    """One start of a guarded fit: a field, its initial params and the rule that fits from there."""

    field: nn.Module
    init: Mapping[str, Tensor]
    """name -> shape (shared) or name -> (B, *shape) (one per signal)"""
    options: Mapping[str, Any] = dataclass_field(default_factory=dict)
    """keyword arguments of :func:`metainr.fit` (optimizer, lr, transform)"""


@dataclass
class GuardReport:
    """What the guard decided, per signal, and on what evidence."""

    winner: list[str]
    """per signal: "prior" or "random", the start the returned fit comes from"""
    losses: dict[str, Tensor]
    """"prior" / "random" -> (B,) loss of each probe's fit: held-out (its chosen step) with held-out
    stopping, else on every observation (its last step)"""
    probe_steps: int
    """steps of each probe"""
    holdout: float
    """held-out fraction of the probes (0: the loss is on every observation)"""
    probes: dict[str, FitResult]
    """"prior" / "random" -> the probe fits themselves"""

    def to_dict(self, index: int = 0) -> dict[str, Any]:
        """Signal ``index``'s decision as JSON-ready numbers."""
        return {"winner": self.winner[index], "probe_steps": self.probe_steps, "holdout": self.holdout,
                "losses": {k: _number(v[index]) for k, v in self.losses.items()}}


def _number(value: Tensor) -> float | None:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _init_of(init: Mapping[str, Tensor], field: nn.Module, index: Tensor, n_signals: int) -> dict[str, Tensor]:
    """The initial params of signals ``index``: shared tensors as they are, per-signal ones indexed."""
    shapes = dict((n, p.shape) for n, p in field.named_parameters())
    return {n: p[index] if p.shape != shapes[n] and p.shape[:1] == (n_signals,) else p for n, p in init.items()}


def _merge(parts: list[tuple[Tensor, FitResult]], n_signals: int) -> FitResult:
    """One FitResult of B signals from results of the signals ``index`` (k,) each."""
    def scatter(pieces: list[tuple[Tensor, Tensor]]) -> Tensor:
        first = pieces[0][1]
        out = first.new_empty((n_signals, *first.shape[1:]))
        for index, piece in pieces:
            out[index] = piece
        return out

    first = parts[0][1]
    params = {n: scatter([(i, r.params[n]) for i, r in parts]) for n in first.params}
    metrics = {n: scatter([(i, r.metrics[n]) for i, r in parts]) for n in first.metrics}
    merged = FitResult(params, first.steps, metrics, scatter([(i, r.final_loss) for i, r in parts]))
    if first.chosen_step is not None:
        merged.chosen_step = scatter([(i, r.chosen_step) for i, r in parts])  # type: ignore[misc]
        merged.holdout_loss = scatter([(i, r.holdout_loss) for i, r in parts])  # type: ignore[misc]
        merged.chosen_metrics = {n: scatter([(i, r.chosen_metrics[n]) for i, r in parts]) for n in first.chosen_metrics}
    return merged


def guarded_fit(task: Task, batch: Batch, steps: int, prior: Candidate, random: Candidate, *,
                probe_steps: int | None = None, holdout: float = 0.0, holdout_seed: int = 0,
                record: Sequence[int] | None = None, metrics: Sequence[str] = ("psnr",),
                chunk_coords: int = 8192) -> tuple[FitResult, GuardReport]:
    """Fit every signal of ``batch`` for ``steps`` steps from the start, ``prior`` or ``random``,
    whose probe ends with the lower held-out loss (see the module docstring).

    Args:
        task, batch, steps, record, metrics, chunk_coords, holdout, holdout_seed: as :func:`metainr.fit`
            (the probes and the returned fit use the same held-out rows).
        prior, random: the two starts (fields of one architecture: their params are interchangeable).
        probe_steps: steps of each probe (default and at most: ``steps``).

    Returns the fit (per signal, the winner's) and the :class:`GuardReport`. Ties go to the prior.
    """
    probe = steps if probe_steps is None else min(max(int(probe_steps), 0), steps)
    final = probe == steps  # the winners' probes are the fit: nothing to refit
    common = dict(holdout=holdout, holdout_seed=holdout_seed, chunk_coords=chunk_coords)
    probes = {name: fit(task, c.field, c.init, batch, probe, record=record if final else [],
                        metrics=metrics if final else (), **common, **c.options)
              for name, c in zip(STARTS, (prior, random))}
    losses = {name: r.final_loss for name, r in probes.items()}
    random_wins = losses["random"] < losses["prior"]  # NaN never wins
    winner = ["random" if w else "prior" for w in random_wins.tolist()]
    report = GuardReport(winner, losses, probe, holdout, probes)
    n = len(batch)
    groups = [(torch.nonzero(mask).flatten(), name, c) for mask, name, c in
              ((~random_wins, "prior", prior), (random_wins, "random", random)) if bool(mask.any())]
    if final:
        parts = [(index, probes[name] if len(index) == n else _pick(probes[name], index)) for index, name, _ in groups]
    else:
        parts = []
        for index, name, c in groups:
            sub = batch if len(index) == n else batch.signals(index)
            parts.append((index, fit(task, c.field, _init_of(c.init, c.field, index, n), sub, steps,
                                                      record=record, metrics=metrics, holdout=holdout,
                                                      holdout_seed=holdout_seed, chunk_coords=chunk_coords,
                                                      **c.options)))
    return (parts[0][1] if len(parts) == 1 else _merge(parts, n)), report


def _pick(result: FitResult, index: Tensor) -> FitResult:
    """The signals ``index`` (k,) of a fit's result."""
    picked = FitResult({n: p[index] for n, p in result.params.items()}, result.steps,
                       {n: m[index] for n, m in result.metrics.items()}, result.final_loss[index])
    if result.chosen_step is not None:
        picked.chosen_step, picked.holdout_loss = result.chosen_step[index], result.holdout_loss[index]  # type: ignore
        picked.chosen_metrics = {n: m[index] for n, m in result.chosen_metrics.items()}
    return picked
