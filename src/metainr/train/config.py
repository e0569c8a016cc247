"""Settings of meta-training (the outer loop)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import Config


@dataclass(frozen=True)
class TrainConfig(Config):
    """Settings of meta-training (the outer loop)."""

    steps: int = field(default=1000, metadata={"positive": True})
    """number of outer steps"""
    batch_size: int = 4
    """signals per meta-batch"""
    outer_lr: float = 1e-4
    """Adam learning rate of the outer loop"""
    schedule: str = "constant"
    """outer lr schedule: constant | cosine"""
    clip: float = 1.0
    """clip the outer gradient to this global norm (0 disables)"""
    seed: int = 0
    """seed of the meta-batch order and of the inner-loop contexts drawn each step"""
    checkpoint_every: int = 100
    """write checkpoint.safetensors every this many steps (and at the end)"""
    eval_every: int = 0
    """validate every this many steps (0: never)"""
    eval_steps: int = 2
    """test-time steps used for validation PSNR"""
    patience: int = 0
    """stop after this many validations without improvement (0: never stop early)"""
    log_every: int = 10
    """append a line to metrics.jsonl every this many steps"""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.outer_lr) and math.isfinite(self.clip)):
            raise ValueError(f"outer_lr and clip must be finite, got outer_lr={self.outer_lr}, clip={self.clip}")
        if self.steps < 0 or self.batch_size < 1 or self.outer_lr <= 0 or self.clip < 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1, outer_lr > 0 and clip >= 0; got steps={self.steps}, "
                             f"batch_size={self.batch_size}, outer_lr={self.outer_lr}, clip={self.clip}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if min(self.checkpoint_every, self.log_every) < 1 or min(self.eval_every, self.eval_steps, self.patience) < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1; eval_every, eval_steps, patience >= 0")
