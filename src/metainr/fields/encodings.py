"""Fixed encodings of coordinates that fields share."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def octave_frequencies(n: int) -> Tensor:
    """(n,) frequencies ``pi 2^i`` of a positional encoding, i < n (float32, a field's buffer)."""
    return math.pi * 2.0 ** torch.arange(n, dtype=torch.float32)


def positional_encoding(x: Tensor, freqs: Tensor) -> Tensor:
    """NeRF's encoding ``[x, sin(f x), cos(f x)]``: x (..., d), freqs (L,) -> (..., d (1 + 2 L))."""
    proj = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)
