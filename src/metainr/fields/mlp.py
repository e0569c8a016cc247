"""Coordinate MLPs: SIREN, Fourier-feature MLP and NeRF positional-encoding MLP.

Every field describes ONE signal: ``field(coords: (N, in_dim)) -> (N, out_dim)``. Batching over
signals is done by the learners with ``torch.func`` (params with a leading signal dimension).
``features(coords)`` returns the penultimate activations, which context pruning needs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..limits import check_params
from .config import FieldConfig
from .encodings import octave_frequencies, positional_encoding
from .linear import Linear, init_generators, rwf_settings, uniform_init
from .nerv import NeRV, nerv_size


class Field(nn.Module):
    """An MLP split into ``body`` (coords -> penultimate features) and a linear ``head``."""

    config: FieldConfig

    def encode(self, coords: Tensor) -> Tensor:
        """coords: (..., in_dim) -> network input (..., enc_dim)."""
        return coords

    def activation(self, index: int, x: Tensor) -> Tensor:
        """Nonlinearity after hidden layer ``index``."""
        raise NotImplementedError

    def features(self, coords: Tensor) -> Tensor:
        """coords: (..., in_dim) in [-1, 1] -> penultimate features (..., width)."""
        h = self.encode(coords)
        for i, layer in enumerate(self.hidden):
            h = self.activation(i, layer(h))
        return h

    def forward(self, coords: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """coords: (..., in_dim) in [-1, 1] -> values (..., out_dim); with ``return_features``
        also the penultimate features (..., width) that produced them (one pass for both)."""
        h = self.features(coords)
        out = self.head(h) + self.config.output_offset
        return (out, h) if return_features else out


def _resolve(config: FieldConfig | None, kind: str, overrides: dict) -> FieldConfig:
    """A config from an explicit one, or from keyword overrides of the defaults."""
    if config is None:
        config = FieldConfig(kind=kind, **overrides)
    elif overrides:
        raise TypeError("pass either a FieldConfig or keyword arguments, not both")
    if config.depth < 2 or config.width < 1:
        raise ValueError(f"a field needs depth >= 2 and width >= 1, got depth={config.depth}, width={config.width}")
    return config


class Siren(Field):
    """SIREN (Sitzmann et al. 2020): sine layers with the paper's initialisation."""

    def __init__(self, config: FieldConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = config = _resolve(config, "siren", overrides)
        g, gs = init_generators(config.seed)
        rwf, width = rwf_settings(config), config.width
        dims = [config.in_dim] + [width] * (config.depth - 1)
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / d_in if i == 0 else math.sqrt(6.0 / d_in) / config.w0
            layers.append(Linear(d_in, d_out, uniform_init(bound), rwf, g, gs, config.sparse))
        self.hidden = nn.ModuleList(layers)
        head_bound = math.sqrt(6.0 / width) / config.w0
        self.head = Linear(width, config.out_dim, uniform_init(head_bound), rwf, g, gs, config.sparse)

    def activation(self, index: int, x: Tensor) -> Tensor:
        w0 = self.config.w0_first if index == 0 else self.config.w0
        return torch.sin(w0 * x)


class _ReluMLP(Field):
    """ReLU MLP on a fixed encoding of the coordinates."""

    def _build(self, config: FieldConfig, enc_dim: int, g: torch.Generator) -> None:
        rwf, gs = rwf_settings(config), init_generators(config.seed)[1]
        dims = [enc_dim] + [config.width] * (config.depth - 1)
        self.hidden = nn.ModuleList(
            Linear(d_in, d_out, None, rwf, g, gs, config.sparse) for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.head = Linear(config.width, config.out_dim, None, rwf, g, gs, config.sparse)

    def activation(self, index: int, x: Tensor) -> Tensor:
        return torch.relu(x)


class FourierMLP(_ReluMLP):
    """Gaussian Fourier features ``[sin(2 pi B x), cos(2 pi B x)]``, B ~ N(0, sigma^2), fixed."""

    def __init__(self, config: FieldConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = config = _resolve(config, "fourier", overrides)
        g = init_generators(config.seed)[0]
        self.register_buffer("B", torch.randn(config.n_features, config.in_dim, generator=g) * config.sigma)
        self._build(config, 2 * config.n_features, g)

    def encode(self, coords: Tensor) -> Tensor:
        proj = 2 * math.pi * coords @ self.B.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class PositionalMLP(_ReluMLP):
    """NeRF positional encoding ``[x, sin(2^i pi x), cos(2^i pi x)]`` for i < L."""

    def __init__(self, config: FieldConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = config = _resolve(config, "pe", overrides)
        g = init_generators(config.seed)[0]
        self.register_buffer("freqs", octave_frequencies(config.n_freqs))
        self._build(config, config.in_dim * (1 + 2 * config.n_freqs), g)

    def encode(self, coords: Tensor) -> Tensor:
        return positional_encoding(coords, self.freqs)


FIELDS: dict[str, type[nn.Module]] = {"siren": Siren, "fourier": FourierMLP, "pe": PositionalMLP, "nerv": NeRV}
FRAME_FIELDS = frozenset({"nerv"})
"""kinds whose output row is a whole frame: a task presents them frames as query rows"""


def declared_size(config: FieldConfig) -> int:
    """Parameters and buffers (masks, encodings) a config declares, computed without building it."""
    if config.kind == "nerv":
        if min(config.in_dim, config.out_dim, config.width) < 1 or config.n_freqs < 0:
            raise ValueError(f"a field needs in_dim, out_dim, width >= 1 and n_freqs >= 0; got in_dim={config.in_dim}, "
                             f"out_dim={config.out_dim}, width={config.width}, n_freqs={config.n_freqs}")
        return nerv_size(config)
    if min(config.in_dim, config.out_dim, config.width, config.n_features) < 1 or config.depth < 2 or config.n_freqs < 0:
        raise ValueError(f"a field needs in_dim, out_dim, width, n_features >= 1, depth >= 2 and n_freqs >= 0; got "
                         f"in_dim={config.in_dim}, out_dim={config.out_dim}, width={config.width}, depth="
                         f"{config.depth}, n_features={config.n_features}, n_freqs={config.n_freqs}")
    encoding = {"fourier": 2 * config.n_features, "pe": config.in_dim * (1 + 2 * config.n_freqs)}.get(config.kind,
                                                                                                    config.in_dim)
    w = config.width
    weights = encoding * w + (config.depth - 2) * w * w + w * config.out_dim
    units = (config.depth - 1) * w + config.out_dim
    buffers = {"fourier": config.n_features * config.in_dim, "pe": config.n_freqs}.get(config.kind, 0)
    return weights * (2 if config.sparse else 1) + units * (2 if config.rwf else 1) + buffers


def build_field(config: FieldConfig) -> nn.Module:
    """Build the field a config describes; unknown kinds and sizes over the limits
    (:mod:`metainr.limits`) raise a one-line error before anything is allocated."""
    if config.kind not in FIELDS:
        raise ValueError(f"unknown field kind {config.kind!r}; choose from {sorted(FIELDS)}")
    check_params(declared_size(config), f"a {config.kind} field of width {config.width} and depth {config.depth}")
    return FIELDS[config.kind](config)


def count_parameters(field: nn.Module) -> int:
    """Number of trainable scalars of a field."""
    return sum(p.numel() for p in field.parameters())
