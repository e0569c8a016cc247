"""CT data: procedural ellipse phantoms, a user's folder of 2D slices, and the meta-training dataset.

Images are ``(n, size, size)`` tensors in [0, 1], zero outside the reconstruction circle (see
:mod:`metainr.signals.ct` for the geometry). :class:`CTDataset` turns them into CT tasks: dense
sinograms to score a field, with a few random views as each task's inner-loop context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import MetaINRError
from ..signals.image import grid_coords
from ..signals.ct import RayIntegral, bilinear_taps, circle_mask, parallel_beam_rays, pixel_spacing, project_pixels

SLICE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".dcm"}
MAX_ELLIPSES = 12  # skull + brain + up to 10 features


class _Uniform:
    """Draws from U(lo, hi) with one generator: ``u(lo, hi)`` -> float, ``u(lo, hi, n)`` -> (n,)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def __call__(self, lo: float, hi: float, n: int = 0):
        x = lo + (hi - lo) * torch.rand(max(n, 1), generator=self.generator, dtype=torch.float64)
        return x if n else float(x)


def random_ellipses(count: int, seed: int = 0) -> Tensor:
    """Parameters of Shepp-Logan-like phantoms: (count, MAX_ELLIPSES, 6) rows
    ``(centre_row, centre_col, semi_axis_u, semi_axis_v, angle, value)``; unused rows have value 0.

    Each phantom is a bright skull ellipse (value 0.8-1), a brain ellipse inside it that brings the
    interior down to 0.1-0.35, and 2-10 smaller ellipses inside the brain that add or remove
    0.05-0.3. Phantom ``i`` depends only on ``(seed, i)``, so a longer list starts the same way.
    Everything stays within radius 0.95 of the origin, inside the reconstruction circle.
    """
    out = torch.zeros(count, MAX_ELLIPSES, 6, dtype=torch.float64)
    for i in range(count):
        u = _Uniform(torch.Generator().manual_seed(seed * 1_000_003 + i))
        cy, cx = u(-0.05, 0.05, 2).tolist()
        a, b = u(0.6, 0.88, 2).tolist()
        angle, skull = u(0, math.pi), u(0.8, 1.0)
        shrink_a, shrink_b = u(0.84, 0.93, 2).tolist()
        brain = u(0.1, 0.35)
        out[i, 0] = torch.tensor([cy, cx, a, b, angle, skull])
        out[i, 1] = torch.tensor([cy, cx, a * shrink_a, b * shrink_b, angle, brain - skull])
        n_features = int(torch.randint(2, MAX_ELLIPSES - 1, (1,), generator=u.generator))
        for k in range(n_features):
            # a centre uniform in 75% of the brain ellipse, in the brain's own frame
            r, phi = 0.75 * math.sqrt(u(0, 1)), u(0, 2 * math.pi)
            pu, pv = r * math.cos(phi) * a * shrink_a, r * math.sin(phi) * b * shrink_b
            fy = cy + pu * math.sin(angle) + pv * math.cos(angle)
            fx = cx + pu * math.cos(angle) - pv * math.sin(angle)
            fa, fb = u(0.03, 0.25, 2).tolist()
            sign = 1.0 if u(0, 1) < 0.6 else -1.0
            out[i, 2 + k] = torch.tensor([fy, fx, fa, fb, u(0, math.pi), sign * u(0.05, 0.3)])
    return out


def render_ellipses(ellipses: Tensor, size: int, supersample: int = 2) -> Tensor:
    """ellipses: (n, E, 6) from :func:`random_ellipses` -> images (n, size, size) in [0, 1].

    Each pixel is the mean of ``supersample**2`` point samples of the summed ellipses (clipped to
    [0, 1]), and pixels outside the reconstruction circle are zero.
    """
    h = pixel_spacing(size)
    sub = ((torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5) * h
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    ys = (axis[:, None] + sub[None, :]).reshape(-1)  # (size * ss,) row coordinates
    y, x = torch.meshgrid(ys, ys, indexing="ij")
    images = []
    for phantom in ellipses:
        img = torch.zeros_like(y)
        for cy, cx, a, b, angle, value in phantom.tolist():
            if value == 0:
                continue
            dy, dx = y - cy, x - cx
            pu = dx * math.cos(angle) + dy * math.sin(angle)
            pv = -dx * math.sin(angle) + dy * math.cos(angle)
            img += value * ((pu / a) ** 2 + (pv / b) ** 2 <= 1.0)
        img = img.clamp(0.0, 1.0).reshape(size, supersample, size, supersample).mean(dim=(1, 3))
        images.append(img)
    return (torch.stack(images) * circle_mask(size)).float()


def ellipse_phantoms(count: int, size: int, seed: int = 0) -> Tensor:
    """``count`` random Shepp-Logan-like phantoms (count, size, size) in [0, 1] (see
    :func:`random_ellipses`); the same seed gives the same objects at any resolution."""
    if count < 1 or size < 2:
        raise MetaINRError(f"need count >= 1 and size >= 2, got count={count}, size={size}")
    return render_ellipses(random_ellipses(count, seed), size)


def _read_slice(path: Path) -> np.ndarray:
    """One 2D slice as a float array in [0, 1] (a 3D .npy gives a stack (k, H, W))."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False).astype(np.float64)
        except (ValueError, OSError) as exc:
            raise MetaINRError(f"cannot read {path}: {exc}") from None
    elif suffix == ".dcm":
        try:
            import pydicom
        except ImportError:
            raise MetaINRError(f"reading DICOM ({path.name}) needs pydicom: pip install pydicom") from None
        try:
            ds = pydicom.dcmread(path)
            array = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0)) + float(
                getattr(ds, "RescaleIntercept", 0.0))
        except Exception as exc:  # pydicom raises many kinds for corrupt files
            raise MetaINRError(f"cannot read DICOM {path}: {exc}") from None
    else:
        from .images import load_image

        return load_image(path, channels=1)[..., 0].numpy().astype(np.float64)
    if array.ndim not in (2, 3):
        raise MetaINRError(f"{path}: expected a 2D slice or a (k, H, W) stack, got shape {array.shape}")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:  # raw scanner units: scale this file to [0, 1]
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    return array


def slice_folder(path: str | Path, size: int) -> Tensor:
    """All 2D slices in a folder (PNG/JPEG/TIFF, .npy 2D or (k, H, W), DICOM via pydicom), sorted
    by name, resized and centre-cropped to ``size`` and set to zero outside the reconstruction
    circle: (n, size, size) in [0, 1]. Files outside [0, 1] (.npy, DICOM) are min-max scaled."""
    from .images import resize_center_crop

    folder = Path(path)
    if not folder.is_dir():
        raise MetaINRError(f"slice folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise MetaINRError(f"no slices ({', '.join(sorted(SLICE_SUFFIXES))}) in folder {folder}")
    slices = []
    for f in files:
        array = _read_slice(f)
        for s in array if array.ndim == 3 else [array]:
            image = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[..., None]
            slices.append(resize_center_crop(image, size)[..., 0].clamp(0, 1))
    return torch.stack(slices) * circle_mask(size)


def load_ct_images(source: str, split: str, size: int, count: int, seed: int = 0) -> Tensor:
    """``ct-phantoms`` (procedural; train, validation and test use disjoint seeds) or a slice folder."""
    if source == "ct-phantoms":
        offsets = {"train": 0, "val": 1, "test": 2}
        if split not in offsets:
            raise MetaINRError(f"split must be one of {sorted(offsets)}, got {split!r}")
        return ellipse_phantoms(count, size, seed=3 * seed + offsets[split] + 1)
    return slice_folder(source, size)


def view_angles(n_views: int, offset: float = 0.0) -> Tensor:
    """``n_views`` angles (degrees) evenly spread over [0, 180), starting at ``offset``."""
    return offset + torch.arange(n_views, dtype=torch.float64) * (180.0 / n_views)


@dataclass
class CTDataset:
    """Images observed as parallel-beam sinograms, for meta-training and validation.

    Every task of a meta-batch is scored on the dense sinogram (``dense_views`` angles evenly over
    180 degrees, every detector); its inner loop sees only a few of those views: their number is
    drawn log-uniformly from ``views`` per task, evenly spaced from a random first view.
    """

    images: Tensor
    """(n, size, size) in [0, 1], zero outside the reconstruction circle"""
    views: tuple[int, int] = (1, 32)
    """inclusive range of the number of views an inner loop sees"""
    dense_views: int = 0
    """angles of the dense sinogram that scores a task (0: one per detector, ``size``)"""
    val_views: tuple[int, ...] = (2, 8)
    """validation: mean image PSNR over fits from this many views"""
    score_image: bool = False
    """also score each task on its image (pixels inside the circle) next to its dense sinogram"""
    seed: int = 0
    """seed of the views drawn for each outer step"""
    name: str = "ct"
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.images.dim() != 3 or self.images.shape[1] != self.images.shape[2] or len(self.images) == 0:
            raise MetaINRError(f"CT dataset {self.name!r} needs square images (n, size, size), got "
                               f"{tuple(self.images.shape)}")
        self.dense_views = self.dense_views or self.size
        lo, hi = self.views
        if not 1 <= lo <= hi <= self.dense_views:
            raise MetaINRError(f"views must satisfy 1 <= min <= max <= dense views ({self.dense_views}), "
                               f"got {self.views}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        """Side of the images = number of detectors."""
        return self.images.shape[-1]

    @property
    def rays(self) -> Tensor:
        """(dense_views * size, 2) rays of the dense sinogram (the same tensor every call)."""
        if "rays" not in self._cache:
            rays = parallel_beam_rays(view_angles(self.dense_views), self.size)
            self._cache["rays"] = rays
            self._cache["taps"] = bilinear_taps(rays, self.size)
        return self._cache["rays"]

    @property
    def coords(self) -> Tensor:
        """What a task is scored on: the dense rays (N, 2); with ``score_image``, tagged rows (N, 3):
        the dense rays ``(0, theta, t)`` first, then the pixels inside the circle ``(1, row, col)``."""
        if "coords" not in self._cache:
            rays = self.rays
            if self.score_image:
                inside = grid_coords(self.size, self.size)[circle_mask(self.size).reshape(-1)]
                rays = torch.cat([nn.functional.pad(rays, (1, 0), value=0.0),
                                  nn.functional.pad(inside, (1, 0), value=1.0)])
            self._cache["coords"] = rays
        return self._cache["coords"]

    def line_integrals(self, index: Tensor | slice, rays: Tensor | None = None) -> Tensor:
        """Observations of images ``index`` along ``rays`` (default: the dense sinogram): (B, R, 1)."""
        taps = None
        if rays is None:
            rays, taps = self.rays, self._cache["taps"]
        images = self.images[index]
        pixels = images.reshape(images.shape[0], -1).T  # (size * size, B)
        return (project_pixels(pixels, rays, self.size, taps) * pixel_spacing(self.size)).T[..., None]

    def draw_views(self, generator: torch.Generator) -> Tensor:
        """Indices (v,) of one task's views among the dense angles (log-uniform count, random start)."""
        lo, hi = self.views
        fraction = float(torch.rand(1, generator=generator))
        v = int(round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * fraction)))
        start = int(torch.randint(self.dense_views, (1,), generator=generator))
        return torch.unique((start + torch.round(torch.arange(v) * self.dense_views / v).long()) % self.dense_views)

    def meta_batch(self, idx: Tensor, step: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The tasks of outer step ``step``: (:attr:`coords` (N, d), their values (B, N, 1), one
        context of dense-ray indices per task). A pure function of (seed, step, idx)."""
        g = torch.Generator().manual_seed(self.seed * 7_368_787 + step)
        detectors = torch.arange(self.size)
        contexts = [(self.draw_views(g)[:, None] * self.size + detectors).reshape(-1) for _ in range(len(idx))]
        values = self.line_integrals(idx)
        if self.score_image:
            inside = self.images[idx][:, circle_mask(self.size)]
            values = torch.cat([values, inside[..., None]], dim=1)
        return self.coords, values, contexts

    def sparse_scan(self, n_views: int, index: Tensor | slice = slice(None)) -> tuple[Tensor, Tensor, Tensor]:
        """Angles (v,) evenly over [0, 180) from 0, their rays (v * size, 2) and the observations
        (B, v * size, 1) of images ``index``: what a scanner taking ``n_views`` views gives."""
        angles = view_angles(n_views)
        rays = parallel_beam_rays(angles, self.size)
        return angles, rays, self.line_integrals(index, rays)

    def validate(self, learner, steps: int) -> float:
        """Mean image PSNR (inside the reconstruction circle) of every image, fitted ``steps``
        test-time steps from each of ``val_views`` views with the learner's test rule.

        ``learner.field`` must be a :class:`RayIntegral` of this dataset's size.
        """
        from ..reconstruct import circle_psnr, fit_observations
        from ..signals.ct import render

        obs = learner.field
        if not isinstance(obs, RayIntegral) or obs.size != self.size:
            raise MetaINRError(f"validating CT of size {self.size} needs a learner around a RayIntegral of that size")
        rule = learner.test_rule()
        scores = []
        for v in self.val_views:
            _, rays, values = self.sparse_scan(v)
            with torch.no_grad():
                init = learner.signal_init(rays, values)
            fitted = fit_observations(obs, init, rays, values, steps, optimizer=rule.optimizer, lr=rule.lrs)[steps]
            with torch.no_grad():
                scores.append(circle_psnr(render(obs, fitted)[..., 0], self.images).mean())
        return float(torch.stack(scores).mean())

    def subset(self, index: Tensor | slice) -> "CTDataset":
        """The same tasks over images ``index``."""
        return CTDataset(self.images[index], self.views, self.dense_views, self.val_views, self.score_image, self.seed,
                         self.name)
