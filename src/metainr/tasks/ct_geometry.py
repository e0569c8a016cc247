"""Parallel-beam CT geometry and a differentiable projector, as plain functions.

Geometry follows ``skimage.transform.radon(circle=True)`` so that sinograms made by scikit-image,
its ``iradon`` / ``iradon_sart`` and the fields here all describe the same scan. For an image of
side ``n`` (= the detector count):

- pixel ``(i, j)`` sits at field coordinates ``(-1 + h i, -1 + h j)`` with ``h = 2 / (n - 1)``
  (:func:`pixel_grid`, rows first);
- the rotation centre is pixel ``(n // 2, n // 2)`` and the reconstruction circle has radius
  ``n // 2`` pixels around it (for even ``n`` both sit half a pixel off the geometric centre,
  as in scikit-image);
- view ``theta`` (degrees) integrates along ``e_u = (cos, sin)`` (row, col) and detector ``j`` sits
  at ``s = j - n // 2`` pixels along ``e_s = (-sin, cos)``.

A ray is a row ``(theta in radians, t)``: the line ``{t e_s + v e_u}``, ``t`` its signed distance
from the origin in field coordinates. Sinograms are ``(n_detectors, n_views)`` in scikit-image's
units (sums over pixels); a field's observations are line integrals in FIELD units
(``integral of f dl`` with ``l`` in [-1, 1] coordinates, i.e. ``h`` times the pixel sum), which
do not depend on the resolution, so one inner-loop step size serves any detector count.

Every tensor is made on the device of the inputs it derives from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..data.ct import circle_mask, pixel_spacing  # noqa: F401  (circle_mask: part of the geometry API)

Taps = tuple[Tensor, Tensor]
"""(indices, weights), both (R, K): where rows read the zero-padded image and with which weights"""


def rotation_centre(size: int) -> float:
    """Field coordinate (same on both axes) of scikit-image's rotation centre, pixel ``size // 2``."""
    return -1.0 + pixel_spacing(size) * (size // 2)


def circle_radius(size: int) -> float:
    """Radius of the reconstruction circle in field coordinates (``size // 2`` pixels)."""
    return pixel_spacing(size) * (size // 2)


def pixel_grid(size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """(size * size, 2) field coordinates (row, col) of the pixel centres, row-major."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)


def in_circle(points: Tensor, size: int) -> Tensor:
    """(P, 2) field coordinates -> (P, 1) in their dtype: 1 inside the reconstruction circle, else 0."""
    d2 = ((points - rotation_centre(size)) ** 2).sum(dim=-1, keepdim=True)
    return (d2 <= circle_radius(size) ** 2 + 1e-9).to(points.dtype)


def parallel_beam_rays(angles: Tensor | Sequence[float], n_detectors: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """Rays of a parallel-beam scan: angles (V,) in degrees -> (V * n_detectors, 2) rows (theta, t)
    in ``dtype`` (default: torch's default dtype) on ``device`` (default: that of ``angles``).

    Rays are ordered view by view (all detectors of view 0, then view 1, ...), so the values of a
    sinogram ``(n_detectors, V)`` are ``sinogram.T.reshape(-1)`` (:func:`sinogram_to_values`).
    Computed in float64 on the CPU, then moved.
    """
    if device is None:
        device = angles.device if isinstance(angles, Tensor) else "cpu"
    angles = angles.detach().cpu() if isinstance(angles, Tensor) else angles
    theta = torch.deg2rad(torch.as_tensor(angles, dtype=torch.float64).reshape(-1))
    h, c = pixel_spacing(n_detectors), rotation_centre(n_detectors)
    s = (torch.arange(n_detectors, dtype=torch.float64) - n_detectors // 2) * h
    t = c * (torch.cos(theta) - torch.sin(theta))[:, None] + s[None, :]
    rays = torch.stack([theta[:, None].expand_as(t), t], dim=-1).reshape(-1, 2)
    return rays.to(device=device, dtype=dtype or torch.get_default_dtype())


def sinogram_to_values(sinogram: Tensor) -> Tensor:
    """Sinograms (..., n_detectors, V) in pixel sums -> line integrals (..., V * n_detectors, 1) in
    field units, ordered like :func:`parallel_beam_rays`."""
    n = sinogram.shape[-2]
    return sinogram.transpose(-1, -2).reshape(*sinogram.shape[:-2], -1, 1) * pixel_spacing(n)


def values_to_sinogram(values: Tensor, n_detectors: int) -> Tensor:
    """Inverse of :func:`sinogram_to_values`: (..., V * n_detectors, 1) -> (..., n_detectors, V)."""
    v = values.reshape(*values.shape[:-2], -1, n_detectors)
    return v.transpose(-1, -2) / pixel_spacing(n_detectors)


def _bilinear(row: Tensor, col: Tensor, size: int) -> Taps:
    """Taps of sample positions (..., S) in padded-pixel units into the padded image: (..., 4 S)."""
    r0, c0 = row.floor(), col.floor()
    dr, dc = (row - r0)[..., None], (col - c0)[..., None]
    side = size + 3
    corner = (r0 * side + c0).long()
    idx = torch.stack([corner, corner + 1, corner + side, corner + side + 1], dim=-1).flatten(-2)
    w = (torch.cat([1 - dr, dr], -1)[..., :, None] * torch.cat([1 - dc, dc], -1)[..., None, :]).flatten(-3)
    return idx, w


def bilinear_taps(rays: Tensor, size: int) -> Taps:
    """Where scikit-image's rotate-and-sum reads the image for each ray.

    rays: (R, 2). Returns indices (R, 4 * size) into the image padded by one zero pixel before and
    two after each axis (``(size + 3) ** 2`` pixels) and bilinear weights (R, 4 * size): ``size``
    samples one pixel apart along the ray (the rows of the rotated square), 4 taps each. Samples
    off the image are clamped into the zero padding (scikit-image's constant-zero border).
    """
    with torch.no_grad():
        theta, t = rays[:, 0:1], rays[:, 1:2]
        cos, sin = torch.cos(theta), torch.sin(theta)
        c = size // 2
        s = (t - rotation_centre(size) * (cos - sin)) / pixel_spacing(size)  # detector offset, pixels
        u = torch.arange(size, dtype=rays.dtype, device=rays.device) - c  # sample offsets along the ray
        row = (c + 1 - s * sin + u * cos).clamp(0, size + 1)  # (R, size), in padded pixels
        col = (c + 1 + s * cos + u * sin).clamp(0, size + 1)
        return _bilinear(row, col, size)


def point_taps(points: Tensor, size: int) -> Taps:
    """Bilinear taps (P, 4) of points (P, 2) (row, col) in field coordinates into the padded image
    (a pixel centre reads exactly its pixel)."""
    with torch.no_grad():
        h = pixel_spacing(size)
        row = ((points[:, 0] + 1) / h + 1).clamp(0, size + 1)
        col = ((points[:, 1] + 1) / h + 1).clamp(0, size + 1)
        return _bilinear(row[:, None], col[:, None], size)


def gather_sum(pixels: Tensor, size: int, taps: Taps) -> Tensor:
    """``sum_k w[r, k] * padded[idx[r, k]]``: pixels (size * size, C) row-major, taps (R, K) -> (R, C).

    A gather (whose backward is a scatter-add) and a weighted sum: differentiable to any order in
    ``pixels``, in reverse and forward mode, so second-order meta-learning can go through it.
    """
    idx, w = taps
    channels = pixels.shape[-1]
    image = pixels.reshape(size, size, channels)
    padded = nn.functional.pad(image, (0, 0, 1, 2, 1, 2)).reshape(-1, channels).T  # (C, (size + 3) ** 2)
    gathered = torch.gather(padded, 1, idx.reshape(1, -1).expand(channels, -1)).reshape(channels, *idx.shape)
    return (gathered * w.to(pixels.dtype)).sum(dim=-1).T


def project_pixels(pixels: Tensor, rays: Tensor, size: int, taps: Taps | None = None) -> Tensor:
    """Pixel sums of an image along rays, as scikit-image's rotate-and-sum computes them.

    pixels: (size * size, C) row-major; rays: (R, 2) -> (R, C); ``taps`` are
    ``bilinear_taps(rays, size)`` when already at hand. Differentiable to any order in ``pixels``.
    """
    return gather_sum(pixels, size, bilinear_taps(rays, size) if taps is None else taps)


def radon(image: Tensor, angles: Tensor | Sequence[float]) -> Tensor:
    """Grid projector: image (..., n, n), angles (V,) in degrees -> sinogram (..., n, V).

    Matches ``skimage.transform.radon(image, angles, circle=True)`` (bilinear rotation about pixel
    ``n // 2``, then a sum over rows) for images that are zero outside the reconstruction circle.
    """
    if image.dim() < 2 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"radon expects square images (..., n, n), got {tuple(image.shape)}")
    n = image.shape[-1]
    rays = parallel_beam_rays(angles, n, image.dtype, image.device)
    lead = image.shape[:-2]
    pixels = image.reshape(-1, n * n).T  # (n * n, batch): one gather serves the whole batch
    sums = project_pixels(pixels, rays, n)  # (V * n, batch)
    return sums.T.reshape(*lead, -1, n).transpose(-1, -2)


# -- query rows: rays, or tagged rows mixing rays and points ------------------------------------
@dataclass(frozen=True)
class Plan:
    """How the rows of one query tensor are read (see :func:`make_plan`)."""

    rays: Tensor
    """(R, 2) the ray rows (theta, t)"""
    points: Tensor | None
    """(P, 2) the point rows (row, col); None for a plain ray tensor"""
    order: Tensor | None
    """(R + P,) where each query row lies in cat([rays, points]); None for a plain ray tensor"""
    ray_taps: Taps | None = None
    point_taps: Taps | None = None


def make_plan(query: Tensor, size: int, taps: bool) -> Plan:
    """Split a query into rays and points and, when ``taps``, find their bilinear taps.

    query: rays (R, 2) ``(theta, t)``, or tagged rows (N, 3): ``(0, theta, t)`` a ray, ``(1, row,
    col)`` a point. Tagged rows use ``nonzero``, so they cannot be batched under ``vmap`` (a
    query shared by a vmapped batch is fine).
    """
    if query.dim() != 2 or query.shape[-1] not in (2, 3):
        raise ValueError(f"CT query rows are rays (R, 2) or tagged rows (N, 3), got {tuple(query.shape)}")
    if query.shape[-1] == 2:
        return Plan(query, None, None, bilinear_taps(query, size) if taps else None)
    is_point = query[:, 0] > 0.5
    ray_rows, point_rows = torch.nonzero(~is_point)[:, 0], torch.nonzero(is_point)[:, 0]
    rays, points = query[ray_rows, 1:], query[point_rows, 1:]
    order = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    order[torch.cat([ray_rows, point_rows])] = torch.arange(query.shape[0], device=query.device)
    if not taps:
        return Plan(rays, points, order)
    return Plan(rays, points, order, bilinear_taps(rays, size), point_taps(points, size))


class PlanCache:
    """The plans of the last few query tensors: fitting projects the same rays at every step.

    Keyed by storage address, shape, strides, dtype and device; an entry holds a reference to its
    query, so that memory cannot be reused while it is cached, and a tensor with the same key and
    version counter is the same data. A tensor without storage (batched under ``vmap``) or
    without a version counter (inference mode) is planned afresh every call.
    """

    def __init__(self, size: int, taps: bool, slots: int = 4) -> None:
        self.size, self.taps, self.slots = size, taps, slots
        self.entries: dict[tuple, tuple[Tensor, int, Plan]] = {}

    def __call__(self, query: Tensor) -> Plan:
        """The plan of ``query`` (see :func:`make_plan`)."""
        try:
            key = (query.data_ptr(), tuple(query.shape), query.stride(), query.dtype, query.device)
            version = query._version
        except (RuntimeError, NotImplementedError):  # a functorch wrapper or an inference tensor
            return make_plan(query, self.size, self.taps)
        hit = self.entries.pop(key, None)
        if hit is None or hit[1] != version:
            hit = (query, version, make_plan(query, self.size, self.taps))
        self.entries[key] = hit  # most recent last
        while len(self.entries) > self.slots:
            self.entries.pop(next(iter(self.entries)))
        return hit[2]


# -- a field observed along rays ----------------------------------------------------------------
Attenuation = Callable[[Tensor], Tensor]
"""``attenuation(points (P, 2)) -> (P, C)``: one signal's image at field coordinates"""


def chord_integrals(attenuation: Attenuation, rays: Tensor, size: int, n_samples: int,
                    chunk_rays: int = 4096) -> Tensor:
    """Resolution-free line integrals: the midpoint rule with ``n_samples`` points along each ray's
    chord of the reconstruction circle, ``chunk_rays`` rays per field evaluation: (R, 2) -> (R, C).

    Differentiable (any order, any mode) through ``attenuation``; no grid is involved.
    """
    parts = []
    centre, radius = rotation_centre(size), circle_radius(size)
    frac = (torch.arange(n_samples, dtype=rays.dtype, device=rays.device) + 0.5) / n_samples * 2 - 1  # (S,)
    for i in range(0, max(rays.shape[0], 1), chunk_rays):
        theta, t = rays[i:i + chunk_rays, 0:1], rays[i:i + chunk_rays, 1:2]
        cos, sin = torch.cos(theta), torch.sin(theta)
        offset = t - centre * (cos - sin)  # signed distance of the ray from the circle's centre
        half = torch.sqrt(torch.clamp(radius**2 - offset**2, min=0.0))  # half chord (r, 1)
        v = centre * (cos + sin) + half * frac  # (r, S): the circle's centre along e_u, then the samples
        points = torch.stack([-t * sin + v * cos, t * cos + v * sin], dim=-1)  # (r, S, 2) as (row, col)
        f = attenuation(points.reshape(-1, 2))
        f = f.reshape(*v.shape, f.shape[-1])
        parts.append(f.sum(dim=1) * (2 * half / n_samples))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
