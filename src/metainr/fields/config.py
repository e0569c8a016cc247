"""The frozen description of a field; a checkpoint rebuilds its field from this alone."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class FieldConfig(Config):
    """Architecture of one coordinate network ``f(coords) -> values``."""

    kind: str = "siren"
    """field type: siren | fourier | pe | nerv (frame time -> whole frame; video with rows=frames)"""
    in_dim: int = 2
    """coordinate dimension"""
    out_dim: int = 3
    """value channels"""
    width: int = 128
    """hidden width"""
    depth: int = 4
    """number of linear layers, the output layer included"""
    w0: float = 30.0
    """SIREN frequency of the hidden sine layers"""
    w0_first: float = 30.0
    """SIREN frequency of the first sine layer"""
    output_offset: float = 0.5
    """constant added to the output (0.5 centres SIREN on [0, 1] data)"""
    n_features: int = 128
    """Fourier features: number of random frequencies (encoding width is twice this)"""
    sigma: float = 10.0
    """Fourier features: std of the Gaussian frequency matrix B, for coords in [-1, 1]"""
    n_freqs: int = 8
    """positional encoding: octaves L of sin/cos(2^i pi x)"""
    rwf: bool = False
    """random weight factorization on every linear layer"""
    rwf_mu: float = 1.0
    """RWF: mean of the initial log-scales"""
    rwf_sigma: float = 0.1
    """RWF: std of the initial log-scales"""
    sparse: bool = False
    """keep a weight mask on every linear layer (for pruning; biases are never masked)"""
    seed: int = 0
    """seed of the initial weights and fixed encodings"""
    frame_height: int = 0
    """nerv: rows of the frames it outputs (set from the task; out_dim = rows x cols x channels)"""
    frame_width: int = 0
    """nerv: columns of the frames it outputs (set from the task)"""


    def __post_init__(self) -> None:
        numbers = (self.w0, self.w0_first, self.output_offset, self.sigma, self.rwf_mu, self.rwf_sigma)
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"field settings must be finite numbers, got {self}")
        if self.frame_height < 0 or self.frame_width < 0:
            raise ValueError(f"frame_height and frame_width must be >= 0, got {self.frame_height}, {self.frame_width}")
        if self.w0 <= 0 or self.w0_first <= 0 or self.sigma < 0 or self.rwf_sigma < 0:
            raise ValueError(f"need w0 > 0, w0_first > 0, sigma >= 0 and rwf_sigma >= 0; got w0={self.w0}, "
                             f"w0_first={self.w0_first}, sigma={self.sigma}, rwf_sigma={self.rwf_sigma}")
