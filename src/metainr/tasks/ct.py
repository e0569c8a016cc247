"""CT from sparse views: an image field ``(row, col) -> attenuation`` observed through parallel-beam
line integrals (geometry and projector: :mod:`.ct_geometry`).

Query rows are rays ``(theta, t)`` (R, 2), or tagged rows (N, 3) mixing rays ``(0, theta, t)`` and
image points ``(1, row, col)`` so that meta-training can score a signal on its image next to its
sinogram. Observations are line integrals in field units (points: the image value). The image a
field describes is ``leaky_relu(field, negative_slope)``, zero outside the reconstruction circle.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..data.ct import _read_slice, circle_mask, load_ct_images, pixel_spacing, view_angles
from ..data.files import read_npy, write_grey
from ..errors import MetaINRError, not_found
from ..limits import check_metadata_size, check_pixels, check_side, check_signals
from ..fields.config import FieldConfig
from ..functional import FieldFn
from .base import Batch, Preset, Task, register_task
from .ct_baselines import circle_psnr, circle_ssim
from .ct_geometry import (PlanCache, Taps, bilinear_taps, chord_integrals, gather_sum, in_circle, parallel_beam_rays,
                          pixel_grid, project_pixels, sinogram_to_values)

SAMPLINGS = ("pixels", "field")
MIN_DETECTORS = 8
CT_PIXEL_COST = 16
"""CT holds the whole slice's field activations at once (every line integral needs every pixel):
a 4096^2 slice was killed for memory here, so CT slices count 16 samples a pixel against
``max_pixels`` (1024^2 by default, a few GB)"""


def parse_angles(text: str) -> np.ndarray:
    """View angles (degrees, float64) from ``START:STOP:COUNT`` (COUNT angles evenly over
    [START, STOP)), a comma-separated list of degrees, or a .npy/.txt file of degrees."""
    if text.endswith((".npy", ".txt")):
        path = Path(text)
        if text.endswith(".npy"):
            values = read_npy(path, "angles", kinds="iuf")
        elif not path.is_file():
            raise not_found(path, "angles file")
        else:
            check_metadata_size(path.stat().st_size, f"angles file {path}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # numpy warns (never raises) on an empty file
                    values = np.loadtxt(path)
            except (ValueError, OSError, UserWarning) as exc:
                raise MetaINRError(f"cannot read angles from {path}: {' '.join(str(exc).split())[:200]}") from None
        try:
            values = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise MetaINRError(f"angles in {path} must be numbers") from None
    else:
        try:
            if ":" in text:
                start, stop, count = text.split(":")
                if int(count) < 1:
                    raise ValueError
                check_pixels(int(count), f"angles {text!r}")
                values = float(start) + np.arange(int(count)) * (float(stop) - float(start)) / int(count)
            else:
                values = np.array([float(v) for v in text.split(",") if v.strip()])
        except ValueError:
            raise MetaINRError(f"angles must be START:STOP:COUNT, a comma-separated list of degrees or a .npy/.txt "
                               f"file, got {text!r}") from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise MetaINRError(f"angles must be finite numbers, got {text!r}")
    return values


def read_sinogram(path: str | Path) -> Tensor:
    """A sinogram file: .npy (n_detectors >= 8, n_views) in scikit-image's units -> float32 tensor
    (a 1-D array is one view)."""
    file = Path(path)
    if file.is_file() and file.suffix.lower() != ".npy":
        raise MetaINRError(f"the sinogram must be a .npy array (n_detectors, n_views), got {file.name}")
    array = read_npy(file, "sinogram", kinds="iuf")  # line integrals: a boolean or complex array is not one
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < MIN_DETECTORS or array.shape[1] < 1:
        raise MetaINRError(f"the sinogram {file} must be a (n_detectors >= {MIN_DETECTORS}, n_views >= 1) array, got "
                           f"shape {array.shape}")
    check_side(array.shape[0], f"sinogram {file}: {array.shape[0]} detectors make an image", CT_PIXEL_COST)
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise MetaINRError(f"sinogram {file} holds NaN or infinite values (or values beyond float32's range)")
    return torch.from_numpy(values)


def read_reference(path: str | Path, size: int) -> Tensor:
    """The true image (size, size) float32 of a scan: a .npy array (as is) or an image file."""
    file = Path(path)
    if file.suffix.lower() == ".npy":
        array = read_npy(file, "reference")
    elif not file.is_file():
        raise not_found(file, "reference file")
    else:
        array = _read_slice(file)
    if array.shape != (size, size):
        raise MetaINRError(f"the reference must be {size}x{size} (the detector count), got shape {array.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise MetaINRError(f"the reference {file} holds NaN or infinite values (or values beyond float32's range)")
    return torch.from_numpy(values)


@dataclass(frozen=True)
class CTConfig(Config):
    """CT from parallel-beam views: square images observed through line integrals."""

    resolution: int = 64
    """image side in pixels = detector count; fixes the scan geometry"""
    sampling: str = "pixels"
    """forward model: pixels (render on the pixel grid, project as skimage's radon) | field (sample each ray)"""
    n_samples: int = 0
    """points per ray of sampling=field (0: resolution)"""
    negative_slope: float = 0.01
    """the image is leaky_relu(field, negative_slope): attenuation is non-negative (1: unconstrained)"""
    min_views: int = 1
    """meta-training: fewest views an inner loop sees (at most the dense views)"""
    max_views: int = 32
    """meta-training: most views an inner loop sees, drawn log-uniformly per signal (at most the dense views)"""
    dense_views: int = 0
    """views of the dense sinogram that meta-training and full batches score (0: resolution)"""
    val_views: tuple[int, ...] = (2, 8)
    """validation: mean image PSNR over fits from each of these view counts"""
    score_image: bool = True
    """meta-training: also score the image pixels inside the circle, next to the dense sinogram"""
    angles: str = ""
    """angles of a sinogram file: START:STOP:COUNT, degrees a,b,... or a .npy/.txt file ('': even over [0, 180))"""
    count: int = 1000
    """ct-phantoms: procedural training phantoms"""
    val_count: int = 8
    """ct-phantoms: procedural validation (and test) phantoms"""

    def __post_init__(self) -> None:
        if self.resolution < MIN_DETECTORS:
            raise ValueError(f"resolution must be at least {MIN_DETECTORS}, got {self.resolution}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.n_samples < 0 or not 0.0 <= self.negative_slope <= 1.0:
            raise ValueError(f"need n_samples >= 0 and negative_slope in [0, 1]; got {self.n_samples}, "
                             f"{self.negative_slope}")
        if self.dense_views < 0 or not 1 <= self.min_views <= self.max_views:
            raise ValueError(f"views must satisfy 1 <= min_views <= max_views and dense_views >= 0, got "
                             f"{self.min_views}, {self.max_views}, {self.dense_views}")
        if not self.val_views or min(self.val_views) < 1:
            raise ValueError(f"val_views must be positive view counts, got {self.val_views}")
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count}, {self.val_count}")
        check_side(self.resolution, "a CT slice of this resolution", CT_PIXEL_COST)
        check_pixels(self.resolution * self.n_samples, f"a CT view of {self.resolution} rays x n_samples {self.n_samples}")
        check_pixels(self.resolution * self.dense_views, f"a sinogram of {self.resolution} detectors x dense_views "
                     f"{self.dense_views}")
        check_pixels(self.resolution * max(self.val_views), f"a sinogram of {self.resolution} detectors x val_views "
                     f"{max(self.val_views)}")
        check_signals(max(self.count, self.val_count), "ct-phantoms (count)")
        if self.angles and not self.angles.endswith((".npy", ".txt")):
            try:
                parse_angles(self.angles)
            except MetaINRError as exc:
                raise ValueError(str(exc)) from None


@register_task
class CTTask(Task):
    """Images (B, n, n) in [0, 1] scanned by parallel-beam views; the field is the image.

    Meta-training scores each signal on its dense sinogram (+ its image) while its inner loop
    sees a few views; validation and test-time fits see a sparse scan; metrics compare the image
    with the reference inside the reconstruction circle. The geometry is fixed by ``resolution``;
    a field is resolution-free, so one trained at 64^2 observes 128^2 scans as well.
    """

    name = "ct"
    Config = CTConfig
    # a low-frequency SIREN: from a few views a w0 = 30 SIREN fills the unobserved directions with
    # fine streaks (w0 = 10 reconstructs 1-9 dB better at 64^2 from 4-8 views); Reptile with 12 SGD
    # steps (learnit's CT recipe) gave a better prior than MAML or Meta-SGD with 3 in equal trials
    preset = Preset(field=FieldConfig(kind="siren", width=64, depth=4, w0=10.0, w0_first=10.0, output_offset=0.1),
                    learner="reptile", learner_options={"inner_steps": 12, "inner_lr": 3e-2, "chunk_coords": 1 << 20},
                    train={"outer_lr": 1e-3, "schedule": "cosine", "eval_steps": 50}, data="ct-phantoms",
                    holdout=0.1)  # scans from few views: a fit overfits them (held-out stopping, metainr.fit)

    def __init__(self, config: CTConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._plans = PlanCache(self.size, taps=self.config.sampling == "pixels")
        self._dense: dict[tuple, tuple[Tensor, Taps, Tensor]] = {}

    @property
    def in_dim(self) -> int:
        return 2

    @property
    def out_dim(self) -> int:
        return 1

    @property
    def size(self) -> int:
        """Image side = detector count."""
        return self.config.resolution

    # -- the forward model -------------------------------------------------------------------------
    def _non_negative(self, x: Tensor) -> Tensor:
        slope = self.config.negative_slope
        return x if slope == 1.0 else nn.functional.leaky_relu(x, slope)

    def pixels(self, field_fn: FieldFn, params: Mapping[str, Tensor], dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """ONE signal's image on the pixel grid, row-major (n * n, C): ``leaky_relu(field)``, zero
        outside the reconstruction circle."""
        grid = pixel_grid(self.size, dtype, device)
        inside = circle_mask(self.size, device=grid.device).reshape(-1, 1).to(grid.dtype)
        return self._non_negative(field_fn(params, grid)) * inside

    def observe(self, field_fn: FieldFn, params: Mapping[str, Tensor], query: Tensor) -> Tensor:
        """ONE signal's observations: rays (R, 2) -> line integrals (R, 1) in field units; tagged
        rows (N, 3) -> (N, 1), a ray's integral or a point's image value (zero outside the circle).

        Works under ``vmap`` over params (with a shared query), ``jacfwd`` and nested autograd.
        """
        n, plan = self.size, self._plans(query)
        if self.config.sampling == "pixels":
            image = self.pixels(field_fn, params, query.dtype, query.device)
            out = gather_sum(image, n, plan.ray_taps) * pixel_spacing(n)
            if plan.points is not None:
                out = torch.cat([out, gather_sum(image, n, plan.point_taps)])
        else:
            def attenuation(x: Tensor) -> Tensor:
                return self._non_negative(field_fn(params, x))

            out = chord_integrals(attenuation, plan.rays, n, self.config.n_samples or n)
            if plan.points is not None:
                out = torch.cat([out, attenuation(plan.points) * in_circle(plan.points, n)])
        return out if plan.order is None else out[plan.order]

    def _render(self, field_fn: FieldFn, params: Mapping[str, Tensor], like: Tensor) -> Tensor:
        """Images (B, n, n) of params name -> (B, *shape), in the dtype and on the device of ``like``."""
        pixels = torch.vmap(lambda p: self.pixels(field_fn, p, like.dtype, like.device))(dict(params))
        return pixels[..., 0].reshape(-1, self.size, self.size)

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr`` (inside the reconstruction circle, predictions clamped to [0, 1]) and ``ssim``
        (images of 11+ pixels a side) of the images against ``batch.reference``; {} without one."""
        if batch.reference is None:
            return {}
        reference = self._check_images(batch.reference)
        images = self._render(field_fn, params, reference)
        out = {}
        if "psnr" in names:
            out["psnr"] = circle_psnr(images, reference)
        if "ssim" in names and self.size >= 11:
            out["ssim"] = circle_ssim(images, reference)
        return out

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Images (B, n, n) as the field describes them (``leaky_relu``'d, zero outside the circle)."""
        return self._render(field_fn, params, batch.values)

    # -- batches ----------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> Tensor:
        if images.dim() != 3 or tuple(images.shape[1:]) != (self.size, self.size):
            raise ValueError(f"CT images must be (B, {self.size}, {self.size}) for resolution {self.size}, got "
                             f"{tuple(images.shape)}")
        return images

    def _dense_scan(self, like: Tensor) -> tuple[Tensor, Taps, Tensor]:
        """(rays (R, 2), their taps, the meta-training query) of the dense sinogram: the same tensors
        every call for one device and dtype, so the forward model's plans are found again."""
        key = (like.device, like.dtype)
        if key not in self._dense:
            n = self.size
            rays = parallel_beam_rays(view_angles(self.config.dense_views or n), n, like.dtype, like.device)
            query = rays
            if self.config.score_image:
                inside = pixel_grid(n, like.dtype, like.device)[circle_mask(n, like.device).reshape(-1)]
                query = torch.cat([nn.functional.pad(rays, (1, 0), value=0.0),
                                   nn.functional.pad(inside, (1, 0), value=1.0)])
            self._dense[key] = (rays, bilinear_taps(rays, n), query)
        return self._dense[key]

    def _integrals(self, images: Tensor, rays: Tensor, taps: Taps | None = None) -> Tensor:
        """Line integrals (B, R, 1), field units, of images (B, n, n) along rays (R, 2)."""
        pixels = images.reshape(images.shape[0], -1).T  # (n * n, B): one gather serves the batch
        return (project_pixels(pixels, rays, self.size, taps) * pixel_spacing(self.size)).T[..., None]

    def draw_views(self, generator: torch.Generator) -> Tensor:
        """Indices (v,) of one signal's views among the dense angles: a count drawn log-uniformly
        from [min_views, max_views] (each at most the dense views), evenly spaced from a random
        first view (CPU)."""
        dense = self.config.dense_views or self.size
        lo, hi = min(self.config.min_views, dense), min(self.config.max_views, dense)
        fraction = float(torch.rand(1, generator=generator))
        v = int(round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * fraction)))
        start = int(torch.randint(dense, (1,), generator=generator))
        return torch.unique((start + torch.round(torch.arange(v) * dense / v).long()) % dense)

    def train_batch(self, signals: Tensor, generator: torch.Generator) -> Batch:
        """Images (B, n, n) -> the dense rays (+ tagged image pixels inside the circle with
        ``score_image``), their values (B, N, 1), one context per signal (the rays of its drawn
        views, indices into the query) and the images as reference."""
        images = self._check_images(signals)
        n = self.size
        rays, taps, query = self._dense_scan(images)
        values = self._integrals(images, rays, taps)
        if self.config.score_image:
            values = torch.cat([values, images[:, circle_mask(n, images.device)][..., None]], dim=1)
        detectors = torch.arange(n, device=images.device)
        contexts = [(self.draw_views(generator).to(images.device)[:, None] * n + detectors).reshape(-1)
                    for _ in range(len(images))]
        return Batch(query, values, contexts, images)

    def batch(self, signals: Tensor) -> Batch:
        """Images (B, n, n) -> their dense sinograms: rays (R, 2), values (B, R, 1), reference."""
        images = self._check_images(signals)
        rays, taps, _ = self._dense_scan(images)
        return Batch(rays, self._integrals(images, rays, taps), reference=images)

    def scan(self, signals: Tensor, angles: Tensor | Sequence[float]) -> Batch:
        """What a scanner taking views at ``angles`` (V,) degrees gives of images (B, n, n): rays
        (V * n, 2), line integrals (B, V * n, 1) in field units, the images as reference."""
        images = self._check_images(signals)
        rays = parallel_beam_rays(angles, self.size, images.dtype, images.device)
        return Batch(rays, self._integrals(images, rays), reference=images)

    def validation_batches(self, signals: Tensor) -> list[Batch]:
        """One scan per count in ``val_views``, its views evenly over [0, 180) from 0."""
        return [self.scan(signals, view_angles(v)) for v in self.config.val_views]

    # -- files ------------------------------------------------------------------------------------
    def load(self, source: str, split: str) -> Tensor:
        """``ct-phantoms`` (``count`` for train, ``val_count`` for val and test, disjoint seeds) or
        a folder of slices (see :func:`metainr.data.ct.load_ct_images`) -> (n, size, size)."""
        count = self.config.count if split == "train" else self.config.val_count
        return load_ct_images(source, split, self.size, count)

    def for_file(self, path: str | Path) -> "CTTask":
        """This task with the geometry of the sinogram ``path``: itself when its detector count is
        ``resolution``, else a copy whose resolution is that count. A field is resolution-free, so
        any CT init fits the copy unchanged."""
        n = read_sinogram(path).shape[0]
        return self if n == self.size else type(self)(dataclasses.replace(self.config, resolution=n))

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """A sinogram file (.npy, (n_detectors, n_views), scikit-image's units) as a batch of one:
        its rays, its line integrals in field units and, with ``reference``, the true image (a .npy
        or image file, n x n) as reference. The angles are ``config.angles`` (default: n_views
        evenly over [0, 180)). The detector count must be ``resolution``: call :meth:`for_file`
        first for the task of the file's geometry (MetaINRError otherwise)."""
        sinogram = read_sinogram(path)
        n, n_views = sinogram.shape
        if n != self.size:
            raise MetaINRError(f"{path} has {n} detectors but the task's resolution is {self.size}: use "
                               f"task.for_file(path) (resolution={n})")
        angles = parse_angles(self.config.angles) if self.config.angles else view_angles(n_views).numpy()
        if len(angles) != n_views:
            raise MetaINRError(f"{len(angles)} angles given for a sinogram of {n_views} views (its columns)")
        rays = parallel_beam_rays(torch.from_numpy(angles), n, torch.float32)
        ref = read_reference(reference, n)[None] if reference is not None else None
        return Batch(rays, sinogram_to_values(sinogram)[None], reference=ref)

    def output_paths(self, path: str | Path) -> list[Path]:
        """The PNG at ``path`` and the float32 .npy beside it."""
        return [Path(path), Path(path).with_suffix(".npy")]

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One image (n, n) as an 8-bit grey PNG (clamped to [0, 1]) at ``path`` and as float32
        .npy beside it (same stem), both written atomically; returns both paths."""
        image = signal.detach().cpu().float()
        image = image[..., 0] if image.dim() == 3 and image.shape[-1] == 1 else image
        if image.dim() != 2:
            raise ValueError(f"a CT image to write must be (n, n), got {tuple(signal.shape)}")
        png, npy = self.output_paths(path)
        write_grey(png, image.numpy(), npy)
        return [png, npy]
