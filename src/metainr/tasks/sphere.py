"""Scalar fields on the sphere (e.g. ERA5 temperature): a field ``(x, y, z) -> value`` on the unit
sphere, observed at the points of a lat-lon grid (:mod:`metainr.data.climate` for the grid).

A lat-lon grid crowds its points near the poles, so every error is weighted by the area a point
stands for, ``cos(lat)``. :meth:`Task.errors` does not see the query rows, so the weighting lives
in the forward model: an observation is the value times ``sqrt(s cos lat)`` (``s = pi / 2``, so
the weights average about 1 over the sphere), and the batch's observations are the true values
times the same factor. The plain mean squared error of observations is then the area-weighted
mean squared error of values (up to the constant mean weight), and every learner, ``fit`` and
GradNCP's context scores (which go through :meth:`observe`) use it unchanged. Metrics and
reconstructions evaluate the field itself; PSNR is area-weighted with the grid's exact cell areas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..data.files import write_grey
from ..data.climate import area_weights, load_climate, normalize, read_grid, sphere_points
from ..errors import MetaINRError
from ..fields.config import FieldConfig
from ..functional import FieldFn
from ..limits import check_pixels, check_signals
from .base import Batch, Preset, Task, observe_batch, register_task

WEIGHT_SCALE = math.pi / 2
"""s in the weight s cos(lat): the mean of cos(lat) over the grid's latitudes is about 2 / pi"""
IDENTITY = Task()
"""the identity forward model: the field's own values at the query points"""

__all__ = ["SphereConfig", "SphereTask", "area_weights", "observation_weights", "sphere_points", "weighted_psnr"]


def observation_weights(query: Tensor) -> Tensor:
    """(M, 1) factors sqrt(s cos lat) of unit-sphere points (M, 3); cos lat = sqrt(x^2 + y^2)."""
    return (WEIGHT_SCALE * query[..., :2].pow(2).sum(dim=-1, keepdim=True).sqrt()).sqrt()


def weighted_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-map area-weighted PSNR (B,) in dB of maps (B, H, W, C) with values in [0, 1]:
    -10 log10(sum w (pred - target)^2 / (C sum w)), w the cells' areas; pred is clamped to [0, 1]."""
    _, h, w, c = target.shape
    weights = area_weights(h, w, device=target.device, dtype=target.dtype)[None, :, :, None]
    err = (weights * (pred.clamp(0, 1) - target).pow(2)).flatten(1).sum(dim=1) / (weights.sum() * c)
    return -10.0 * torch.log10(err)


@dataclass(frozen=True)
class SphereConfig(Config):
    """Scalar maps on a lat-lon grid (ERA5 convention: rows from +90 to -90 degrees inclusive)."""

    height: int = 0
    """latitude rows (0: those of the data; the bundled climate maps default to 46)"""
    width: int = 0
    """longitude columns (0: those of the data; the bundled climate maps default to 90)"""
    vmin: float = 0.0
    """a file's value mapped to 0 (with vmax; 0 and 0: each file's own min and max)"""
    vmax: float = 0.0
    """a file's value mapped to 1 (values outside [vmin, vmax] are clipped)"""
    variable: str = ""
    """NetCDF variable to read ('': the only data variable on lat/lon dims)"""
    count: int = 400
    """climate: training maps"""
    val_count: int = 16
    """climate: validation (and test) maps"""

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0 or self.height == 1:
            raise ValueError(f"need height 0 or >= 2 and width >= 0, got {self.height}x{self.width}")
        if not (math.isfinite(self.vmin) and math.isfinite(self.vmax)):
            raise ValueError(f"vmin and vmax must be finite, got {self.vmin}, {self.vmax}")
        if (self.vmin, self.vmax) != (0.0, 0.0) and self.vmax <= self.vmin:
            raise ValueError(f"need vmax > vmin (or both 0: each file's own range), got {self.vmin}, {self.vmax}")
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count}, {self.val_count}")
        check_signals(max(self.count, self.val_count), "climate (count)")
        check_pixels(self.height * self.width, f"a sphere grid ({self.height}x{self.width})")


@register_task
class SphereTask(Task):
    """Maps (n, H, W) in [0, 1] on the sphere, observed at every grid point with area weights."""

    name = "sphere"
    Config = SphereConfig
    # smooth planetary maps: a low-frequency SIREN on (x, y, z) in [-1, 1]. Measured (1 thread, 46x90
    # climate, 150 outer steps at 1e-3): MAML gives 33.0 dB after 2 test steps vs 18.0 for the best Adam
    # lr of a random init (46.7 after 500 random steps at 1e-3); other learners were not compared here
    preset = Preset(field=FieldConfig(kind="siren", width=64, depth=4, w0=10.0, w0_first=10.0, output_offset=0.5),
                    learner="maml", train={"outer_lr": 1e-3}, data="climate")

    @property
    def in_dim(self) -> int:
        return 3

    @property
    def out_dim(self) -> int:
        return 1

    def observe(self, field_fn: FieldFn, params: Mapping[str, Tensor], query: Tensor) -> Tensor:
        """Area-weighted values of ONE map: points (M, 3) -> field * sqrt(s cos lat) (M, 1)."""
        return field_fn(params, query) * observation_weights(query)

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr``: area-weighted PSNR (B,) of the field's values against the reference maps."""
        if "psnr" not in names:
            return {}
        return {"psnr": weighted_psnr(self.reconstruct(field_fn, params, batch), batch.reference)}

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Maps (B, H, W, 1) of the field's values at the grid points, clamped to [0, 1]."""
        values = observe_batch(IDENTITY, field_fn, params, batch).clamp(0, 1)
        return values.reshape(batch.reference.shape)

    def batch(self, signals: Tensor) -> Batch:
        """maps (B, H, W) or (B, H, W, 1) -> every grid point, observations weighted; the maps are the reference."""
        if signals.dim() == 3:
            signals = signals[..., None]
        if signals.dim() != 4 or signals.shape[-1] != 1 or signals.shape[1] < 2:
            raise ValueError(f"sphere maps must be (B, H, W) or (B, H, W, 1) with H >= 2, got {tuple(signals.shape)}")
        b, h, w, _ = signals.shape
        query = sphere_points(h, w, device=signals.device, dtype=signals.dtype)
        values = signals.reshape(b, h * w, 1) * observation_weights(query)
        return Batch(query, values, reference=signals)

    def settled(self, batch: Batch) -> "SphereTask":
        """With ``height`` and ``width`` (when 0) taken from the batch's maps."""
        _, h, w, _ = batch.reference.shape
        fixes = {k: v for k, v in (("height", h), ("width", w)) if not getattr(self.config, k)}
        return type(self)(self.config, **fixes) if fixes else self

    def load(self, source: str, split: str) -> Tensor:
        """``climate`` (procedural, height x width, default 46x90) or a .npy / .nc file or folder
        of them -> maps (n, H, W) in [0, 1] (see :func:`metainr.data.climate.load_climate`)."""
        c = self.config
        return load_climate(source, split, c.height, c.width, c.count, c.val_count, c.variable, c.vmin, c.vmax)

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One map of a .npy (H, W) or NetCDF file (``variable``, first index of every non-lat/lon
        dim, e.g. the first time step), values mapped by vmin / vmax, as a batch of one (a map is
        its own reference: ``reference`` is not used)."""
        grid = read_grid(path, self.config.variable)
        h, w = self.config.height or grid.shape[0], self.config.width or grid.shape[1]
        if grid.shape != (h, w):
            raise MetaINRError(f"{path} is {grid.shape[0]}x{grid.shape[1]} but the task's grid is {h}x{w}")
        return self.batch(normalize(grid, self.config.vmin, self.config.vmax)[None])

    def output_paths(self, path: str | Path) -> list[Path]:
        """The PNG at ``path`` and the float32 .npy beside it."""
        return [Path(path), Path(path).with_suffix(".npy")]

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One map (H, W, 1) as an equirectangular 8-bit grey PNG (clamped to [0, 1]) at ``path``
        and as float32 .npy (H, W) in [0, 1] beside it, both written atomically; returns both paths."""
        grid = signal.detach().cpu().float()
        grid = grid[..., 0] if grid.dim() == 3 and grid.shape[-1] == 1 else grid
        if grid.dim() != 2:
            raise ValueError(f"a sphere map to write must be (H, W, 1), got {tuple(signal.shape)}")
        png, npy = self.output_paths(path)
        write_grey(png, grid.numpy(), npy)
        return [png, npy]

    def tokens(self, batch: Batch) -> Tensor:
        """Maps (B, H, W, 1) -> lat-lon patches (B, T, ph * pw), ph = ceil(H / 8), pw = ceil(W / 8):
        edge-padded to multiples of (ph, pw), cut without overlap, row-major."""
        b, h, w, _ = batch.reference.shape
        ph, pw = -(-h // 8), -(-w // 8)
        kh, kw = -(-h // ph), -(-w // pw)
        maps = batch.reference[..., 0][:, None]
        maps = F.pad(maps, (0, kw * pw - w, 0, kh * ph - h), mode="replicate")[:, 0]
        return maps.reshape(b, kh, ph, kw, pw).permute(0, 1, 3, 2, 4).reshape(b, kh * kw, ph * pw)
