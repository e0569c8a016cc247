"""NeRV (Chen et al., NeurIPS 2021): a frame-valued field, frame time -> the whole frame.

``t (M, 1) in [-1, 1] -> frames (M, H * W * C)``, each row one frame flattened row-major
(y, x, c). The time is positionally encoded (``[t, sin(2^i pi t), cos(2^i pi t)]``, i < n_freqs),
an MLP stem (two layers, GELU) maps it to a grid of ``width`` channels at ``(H, W) / 2^u``, and
``u = depth - 2`` blocks each apply a 3x3 convolution to ``4 c'`` channels, a pixel shuffle (x2)
and GELU, halving the channels (never below 8). A per-pixel linear head gives the C values.

Every layer is a :class:`~metainr.fields.Linear` (a convolution is im2col + Linear), so random
weight factorization and pruning masks work as on the MLPs, and the params are a plain dict.
``forward(t, return_features=True)`` also returns the head's input per pixel, (M, H * W, c):
GradNCP scores a frame by the norm of its gradient with respect to the head, in closed form.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from .config import FieldConfig
from .encodings import octave_frequencies, positional_encoding
from .linear import Linear, init_generators, rwf_settings

MIN_CHANNELS = 8


def nerv_layout(config: FieldConfig) -> tuple[int, int, int, list[int]]:
    """(grid height, grid width, channels C, channels after each stage [stem, block 1, ...]) of a
    NeRV config; a frame size the blocks cannot reach raises a one-line ValueError."""
    h, w, u = config.frame_height, config.frame_width, config.depth - 2
    if h < 1 or w < 1 or u < 1:
        raise ValueError(f"a nerv field needs frame_height, frame_width >= 1 and depth >= 3 (depth - 2 upsampling "
                         f"blocks), got {h}x{w}, depth {config.depth}")
    if h % (1 << u) or w % (1 << u):
        raise ValueError(f"a nerv field with {u} upsampling blocks (depth {config.depth}) needs frames whose sides "
                         f"divide by {1 << u}, got {h}x{w}")
    channels = config.out_dim // (h * w)
    if channels < 1 or channels * h * w != config.out_dim:
        raise ValueError(f"a nerv field's out_dim must be frame_height x frame_width x channels, got out_dim "
                         f"{config.out_dim} for {h}x{w} frames")
    stages = [config.width]
    for _ in range(u):
        stages.append(max(stages[-1] // 2, MIN_CHANNELS))
    return h >> u, w >> u, channels, stages


def nerv_size(config: FieldConfig) -> int:
    """Parameters and buffers a NeRV config declares, computed without building it."""
    gh, gw, c, stages = nerv_layout(config)
    enc = config.in_dim * (1 + 2 * config.n_freqs)
    shapes = [(enc, config.width), (config.width, stages[0] * gh * gw)]
    shapes += [(9 * a, 4 * b) for a, b in zip(stages[:-1], stages[1:])] + [(stages[-1], c)]
    weights = sum(i * o for i, o in shapes)
    units = sum(o for _, o in shapes)
    return weights * (2 if config.sparse else 1) + units * (2 if config.rwf else 1) + config.n_freqs


class NeRV(nn.Module):
    """Frame index -> whole frame: ``t (M, 1) -> (M, H * W * C)`` (see the module docstring)."""

    def __init__(self, config: FieldConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = FieldConfig(kind="nerv", **{"in_dim": 1, **overrides})
        elif overrides:
            raise TypeError("pass either a FieldConfig or keyword arguments, not both")
        self.config = config
        gh, gw, c, stages = nerv_layout(config)
        self.grid, self.channels = (gh, gw), c
        g, gs = init_generators(config.seed)
        rwf = rwf_settings(config)

        def linear(d_in: int, d_out: int) -> Linear:
            return Linear(d_in, d_out, None, rwf, g, gs, config.sparse)

        self.register_buffer("freqs", octave_frequencies(config.n_freqs))
        enc = config.in_dim * (1 + 2 * config.n_freqs)
        self.stem = nn.ModuleList([linear(enc, config.width), linear(config.width, stages[0] * gh * gw)])
        self.blocks = nn.ModuleList(linear(9 * a, 4 * b) for a, b in zip(stages[:-1], stages[1:]))
        self.head = linear(stages[-1], c)

    def encode(self, t: Tensor) -> Tensor:
        """t (M, in_dim) -> [t, sin(2^i pi t), cos(2^i pi t)] (M, in_dim (1 + 2 n_freqs))."""
        return positional_encoding(t, self.freqs)

    def features(self, t: Tensor) -> Tensor:
        """t (M, in_dim) -> the head's input at every pixel (M, H * W, c)."""
        m = t.shape[0]
        x = F.gelu(self.stem[1](F.gelu(self.stem[0](self.encode(t)))))
        x = x.view(m, -1, *self.grid)  # (M, c0, gh, gw)
        for block in self.blocks:
            h, w = x.shape[-2:]
            cols = F.unfold(x, 3, padding=1).transpose(1, 2)  # (M, h w, 9 c)
            x = block(cols).transpose(1, 2).reshape(m, -1, h, w)  # (M, 4 c', h, w)
            x = F.gelu(F.pixel_shuffle(x, 2))
        return x.flatten(2).transpose(1, 2)  # (M, H W, c)

    def forward(self, t: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """t (M, in_dim) in [-1, 1] -> frames (M, H * W * C); with ``return_features`` also the
        head's input (M, H * W, c) that produced them."""
        h = self.features(t)
        out = (self.head(h) + self.config.output_offset).flatten(1)
        return (out, h) if return_features else out
