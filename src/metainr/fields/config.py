"""The frozen description of a field; a checkpoint rebuilds its field from this alone."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class FieldConfig(Config):
    """Architecture of one coordinate network ``f(coords) -> values``."""

    kind: str = "siren"
    """field type: siren | fourier | pe"""
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

