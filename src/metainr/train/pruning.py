"""Meta-SparseINR's schedule as a trainer callback: dense meta-training, then rounds of global
magnitude (or random) pruning, each followed by more meta-training with the mask fixed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import Config
from ..fields.sparsity import density, magnitude_prune, masked_layers, nonzero_parameters, random_prune
from ..meta import Learner
from ..tasks import Task
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .loop import Callback, RunState, meta_train
from .rundir import own


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


RoundCallback = Callable[[int, Learner], None]


class PruneRounds(Callback):
    """Trainer callback: at the end of the dense phase (``dense_steps``) and of every round
    (``config.steps`` more), keep the round's best validated init, write it as
    ``round_RR_density_D.safetensors``, then prune ``config.fraction`` of the remaining weights,
    reset the outer optimiser's state and the best-init tracking, and go on with the mask fixed."""

    def __init__(self, config: PruneConfig, dense_steps: int, on_round: RoundCallback | None = None) -> None:
        self.config, self.dense_steps, self.on_round = config, dense_steps, on_round
        self.records: list[dict[str, Any]] = []
        self._generator = torch.Generator().manual_seed(config.seed)
        self._total: int | None = None
        self._next = 0

    def total_steps(self) -> int:
        """Outer steps of the whole schedule."""
        return self.dense_steps + self.config.rounds * self.config.steps

    def on_start(self, state: RunState) -> None:
        self.on_step(state)  # a schedule with no dense phase ends round 0 before any step

    def on_step(self, state: RunState) -> None:
        if self._total is None:
            self._total = sum(m.mask.numel() for m in masked_layers(state.learner.field))
        while self._next <= self.config.rounds and state.step == self.dense_steps + self._next * self.config.steps:
            self._end_round(state, self._next)
            self._next += 1

    def _end_round(self, state: RunState, r: int) -> None:
        field = state.learner.field
        state.restore_best()
        record = {"round": r, "density": density(field), "params": nonzero_parameters(field), "step": state.step}
        self.records.append(record)
        if state.run is not None:
            cfg = dataclasses.replace(state.config, steps=state.step)
            name = f"round_{r:02d}_density_{record['density']:.3f}.safetensors"
            own(state.run, name)
            save_checkpoint(state.run / name, state.learner,
                            None, state.step, state.task, cfg, state.info, {"prune": self.config.to_dict(), **record})
        if self.on_round is not None:
            self.on_round(r, state.learner)
        if r < self.config.rounds:
            # the count after r + 1 rounds is set from the total, so rounding never accumulates
            keep = int(round(self._total * (1.0 - self.config.fraction) ** (r + 1)))
            if self.config.method == "magnitude":
                magnitude_prune(field, keep=keep)
            else:
                random_prune(field, keep=keep, generator=self._generator)
            state.optimizer.state.clear()
            state.reset_best()


def iterative_pruning(learner: Learner, task: Task, data: Any, train: TrainConfig, prune: PruneConfig, *,
                      run_dir: str | Path | None = None, val: Any = None, info: dict | None = None,
                      on_round: RoundCallback | None = None, progress: bool | None = None,
                      device: str | torch.device | None = None, overwrite: bool = False,
                      callbacks: Sequence[Callback] = ()) -> list[dict]:
    """Dense meta-training (``train.steps``), then ``prune.rounds`` rounds of pruning
    ``prune.fraction`` of the remaining weights followed by ``prune.steps`` more outer steps, as
    ONE trainer run with a :class:`PruneRounds` callback (``callbacks`` run after it). Returns one
    record per round ended."""
    masked_layers(learner.field)  # a dense field is refused before any training
    rounds = PruneRounds(prune, train.steps, on_round)
    total = dataclasses.replace(train, steps=rounds.total_steps())
    meta_train(learner, task, data, total, run_dir=run_dir, val=val, info=info, callbacks=[rounds, *callbacks],
               progress=progress, device=device, overwrite=overwrite)
    return rounds.records
