"""CT data: procedural ellipse phantoms, a user's folder of 2D slices, and view angles.

Images are ``(n, size, size)`` tensors in [0, 1], zero outside the reconstruction circle. The two
pieces of geometry that data needs (pixel spacing and the reconstruction circle) live here; the
rest of the scan geometry and the projector are :mod:`metainr.tasks.ct_geometry`, and turning
images into CT batches is :class:`metainr.tasks.CTTask`'s job.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_signals
from .files import read_npy

SLICE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".dcm"}
MAX_ELLIPSES = 12  # skull + brain + up to 10 features
SPLITS = ("train", "val", "test")


def pixel_spacing(size: int) -> float:
    """Distance ``h`` between neighbouring pixel centres of a ``size``-pixel side spanning [-1, 1]."""
    if size < 2:
        raise ValueError(f"a CT image needs at least 2 pixels a side, got {size}")
    return 2.0 / (size - 1)


def circle_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """(size, size) bool: pixels inside the reconstruction circle, radius ``size // 2`` pixels about
    pixel ``(size // 2, size // 2)`` (scikit-image's rule)."""
    idx = torch.arange(size, device=device) - size // 2
    return idx[:, None] ** 2 + idx[None, :] ** 2 <= (size // 2) ** 2


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
    """One 2D slice as a float array in [0, 1] (a 3D .npy gives a stack (k, H, W)); arrays
    outside [0, 1] (raw scanner units) are min-max scaled."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = read_npy(path, "slice").astype(np.float64)  # real numbers or booleans (read_npy refuses the rest)
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
    if not np.all(np.isfinite(array)):
        raise MetaINRError(f"{path} holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:  # raw scanner units: scale this file to [0, 1]
        if not math.isfinite(hi - lo):  # a range past float64's: halve first
            array, lo, hi = array / 2, lo / 2, hi / 2
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    return array


def slice_folder(path: str | Path, size: int) -> Tensor:
    """All 2D slices in a folder (PNG/JPEG/TIFF, .npy 2D or (k, H, W), DICOM via pydicom), sorted
    by name, resized and centre-cropped to ``size`` and set to zero outside the reconstruction
    circle: (n, size, size) in [0, 1]. Files outside [0, 1] (.npy, DICOM) are min-max scaled."""
    from .images import resize_center_crop

    folder = Path(path)
    if not folder.is_dir():
        raise not_found(folder, "slice folder", folder=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise MetaINRError(f"no slices ({', '.join(sorted(SLICE_SUFFIXES))}) in folder {folder}")
    check_signals(len(files), f"slice folder {folder}")
    slices = []
    for f in files:
        array = _read_slice(f)
        check_signals(len(slices) + (len(array) if array.ndim == 3 else 1), f"slice folder {folder}")
        for s in array if array.ndim == 3 else [array]:
            image = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[..., None]
            slices.append(resize_center_crop(image, size)[..., 0].clamp(0, 1))
    return torch.stack(slices) * circle_mask(size)


def load_ct_images(source: str, split: str, size: int, count: int, seed: int = 0) -> Tensor:
    """Images (n, size, size) of ``source`` for ``split`` (train | val | test).

    ``ct-phantoms``: ``count`` procedural phantoms; train, validation and test use disjoint seeds.
    A folder of slices: ``train`` is all but its last 10% (every slice when it holds fewer than
    10), ``val`` that last 10% (a folder of fewer than 10 slices has none: MetaINRError), ``test``
    every slice (``count`` is not used).
    """
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if source == "ct-phantoms":
        return ellipse_phantoms(count, size, seed=3 * seed + SPLITS.index(split) + 1)
    images = slice_folder(source, size)
    n_val = len(images) // 10
    if split == "train":
        return images[:-n_val] if n_val else images
    if split == "val":
        if not n_val:
            raise MetaINRError(f"{source} holds {len(images)} slices: too few to hold back validation slices "
                               "(10 or more are needed)")
        return images[-n_val:]
    return images


def view_angles(n_views: int, offset: float = 0.0) -> Tensor:
    """``n_views`` angles (degrees, float64) evenly spread over [0, 180), starting at ``offset``."""
    if n_views < 1:
        raise ValueError(f"a scan needs at least one view, got {n_views}")
    return offset + torch.arange(n_views, dtype=torch.float64) * (180.0 / n_views)
