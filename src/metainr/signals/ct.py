"""CT signals: parallel-beam geometry, a grid projector and a field observed through line integrals.

Geometry follows ``skimage.transform.radon(circle=True)`` so that sinograms made by scikit-image,
its ``iradon`` / ``iradon_sart`` and the fields here all describe the same scan. For an image of
side ``n`` (= the detector count):

- pixel ``(i, j)`` sits at field coordinates ``(-1 + h i, -1 + h j)`` with ``h = 2 / (n - 1)``
  (:func:`metainr.signals.grid_coords`, rows first);
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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .image import grid_coords

Sampling = Literal["pixels", "field"]


def pixel_spacing(size: int) -> float:
    """Distance ``h`` between neighbouring pixel centres, in field coordinates."""
    if size < 2:
        raise ValueError(f"a CT image needs at least 2 pixels a side, got {size}")
    return 2.0 / (size - 1)


def rotation_centre(size: int) -> float:
    """Field coordinate (same on both axes) of scikit-image's rotation centre, pixel ``size // 2``."""
    return -1.0 + pixel_spacing(size) * (size // 2)


def circle_radius(size: int) -> float:
    """Radius of the reconstruction circle in field coordinates (``size // 2`` pixels)."""
    return pixel_spacing(size) * (size // 2)


def circle_mask(size: int) -> Tensor:
    """(size, size) bool: pixels inside the reconstruction circle (scikit-image's rule)."""
    idx = torch.arange(size) - size // 2
    return idx[:, None] ** 2 + idx[None, :] ** 2 <= (size // 2) ** 2


def parallel_beam_rays(angles: Tensor | list[float], n_detectors: int, dtype: torch.dtype | None = None) -> Tensor:
    """Rays of a parallel-beam scan: angles (V,) in degrees -> (V * n_detectors, 2) rows (theta, t)
    (in ``dtype``, default: torch's default dtype).

    Rays are ordered view by view (all detectors of view 0, then view 1, ...), so the values of a
    sinogram ``(n_detectors, V)`` are ``sinogram.T.reshape(-1)`` (:func:`sinogram_to_values`).
    """
    theta = torch.deg2rad(torch.as_tensor(angles, dtype=torch.float64).reshape(-1))
    h, c = pixel_spacing(n_detectors), rotation_centre(n_detectors)
    s = (torch.arange(n_detectors, dtype=torch.float64) - n_detectors // 2) * h
    t = c * (torch.cos(theta) - torch.sin(theta))[:, None] + s[None, :]
    rays = torch.stack([theta[:, None].expand_as(t), t], dim=-1).reshape(-1, 2)
    return rays.to(dtype or torch.get_default_dtype())


def sinogram_to_values(sinogram: Tensor) -> Tensor:
    """Sinograms (..., n_detectors, V) in pixel sums -> line integrals (..., V * n_detectors, 1) in
    field units, ordered like :func:`parallel_beam_rays`."""
    n = sinogram.shape[-2]
    return (sinogram.transpose(-1, -2).reshape(*sinogram.shape[:-2], -1, 1) * pixel_spacing(n))


def values_to_sinogram(values: Tensor, n_detectors: int) -> Tensor:
    """Inverse of :func:`sinogram_to_values`: (..., V * n_detectors, 1) -> (..., n_detectors, V)."""
    v = values.reshape(*values.shape[:-2], -1, n_detectors)
    return v.transpose(-1, -2) / pixel_spacing(n_detectors)


def bilinear_taps(rays: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Where scikit-image's rotate-and-sum reads the image for each ray (what
    :func:`project_pixels` needs; compute it once for rays that are projected many times).

    rays: (R, 2). Returns indices (R, 4 * size) into the image padded by one zero pixel before and
    two after each axis (``(size + 3) ** 2`` pixels, see :func:`_padded`) and bilinear weights
    (R, 4 * size): ``size`` samples one pixel apart along the ray (the rows of the rotated square),
    4 taps each. Samples off the image are clamped into the zero padding, which reproduces
    scikit-image's constant-zero border.
    """
    with torch.no_grad():
        theta, t = rays[:, 0:1], rays[:, 1:2]
        cos, sin = torch.cos(theta), torch.sin(theta)
        c = size // 2
        s = (t - rotation_centre(size) * (cos - sin)) / pixel_spacing(size)  # detector offset, pixels
        u = torch.arange(size, dtype=rays.dtype) - c  # sample offsets along the ray
        row = (c + 1 - s * sin + u * cos).clamp_(0, size + 1)  # (R, size), in padded pixels
        col = (c + 1 + s * cos + u * sin).clamp_(0, size + 1)
        r0, c0 = row.floor(), col.floor()
        dr, dc = (row - r0)[..., None], (col - c0)[..., None]
        side = size + 3
        corner = (r0 * side + c0).long()[..., None]
        idx = (corner + torch.tensor([0, 1, side, side + 1])).flatten(1)
        w = (torch.cat([1 - dr, dr], -1)[..., :, None] * torch.cat([1 - dc, dc], -1)[..., None, :]).flatten(1)
    return idx, w


def _padded(pixels: Tensor, size: int) -> Tensor:
    """(size * size, C) row-major -> ((size + 3) ** 2, C) with zero rows/cols: 1 before, 2 after."""
    image = pixels.reshape(size, size, -1)
    return nn.functional.pad(image, (0, 0, 1, 2, 1, 2)).reshape(-1, pixels.shape[-1])


def _point_taps(points: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps of points (P, 2) (row, col) in field coordinates into the padded image:
    indices and weights (P, 4), like :func:`bilinear_taps` (pixel centres read one pixel exactly)."""
    with torch.no_grad():
        h = pixel_spacing(size)
        row = ((points[:, 0] + 1) / h + 1).clamp(0, size + 1)
        col = ((points[:, 1] + 1) / h + 1).clamp(0, size + 1)
        r0, c0 = row.floor(), col.floor()
        dr, dc = (row - r0)[:, None], (col - c0)[:, None]
        side = size + 3
        idx = (r0 * side + c0).long()[:, None] + torch.tensor([0, 1, side, side + 1])
        w = (torch.cat([1 - dr, dr], -1)[:, :, None] * torch.cat([1 - dc, dc], -1)[:, None, :]).flatten(1)
    return idx, w


def _gather_sum(pixels: Tensor, size: int, taps: tuple[Tensor, Tensor]) -> Tensor:
    """sum_k w[r, k] * padded_pixels[idx[r, k]]: pixels (size * size, C), taps (R, K) -> (R, C).

    A gather (whose backward is a fast scatter-add) and a weighted sum: differentiable to any order
    in ``pixels``, so second-order meta-learning can go through it.
    """
    idx, w = taps
    channels = pixels.shape[-1]
    padded = _padded(pixels, size).T  # (C, (size + 3) ** 2)
    gathered = torch.gather(padded, 1, idx.reshape(1, -1).expand(channels, -1)).reshape(channels, *idx.shape)
    return (gathered * w.to(pixels.dtype)).sum(dim=-1).T


def project_pixels(pixels: Tensor, rays: Tensor, size: int, taps: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Pixel sums of an image along rays, as scikit-image's rotate-and-sum computes them.

    pixels: (size * size, C) row-major; rays: (R, 2) -> (R, C); ``taps`` are
    ``bilinear_taps(rays, size)`` when already at hand. Differentiable to any order in ``pixels``.
    """
    return _gather_sum(pixels, size, bilinear_taps(rays, size) if taps is None else taps)


@dataclass(frozen=True)
class _Plan:
    """How a RayIntegral reads the rows of one coords tensor (see :meth:`RayIntegral.forward`)."""

    rays: Tensor | None
    """(R, 2) the ray rows (theta, t)"""
    points: Tensor | None
    """(P, 2) the point rows (row, col); None for a plain ray tensor"""
    order: Tensor | None
    """(R + P,) where each input row lies in cat([rays, points]); None for a plain ray tensor"""
    ray_taps: tuple[Tensor, Tensor] | None = None
    point_taps: tuple[Tensor, Tensor] | None = None


def _plan(coords: Tensor, size: int, taps: bool) -> _Plan:
    """Split ``coords`` into rays and points (tagged rows) and, for pixel sampling, find their taps."""
    if coords.dim() != 2 or coords.shape[-1] not in (2, 3):
        raise ValueError(f"CT coordinates are rays (R, 2) or tagged rows (N, 3), got {tuple(coords.shape)}")
    if coords.shape[-1] == 2:
        return _Plan(coords, None, None, bilinear_taps(coords, size) if taps else None)
    is_point = coords[:, 0] > 0.5
    ray_rows, point_rows = torch.nonzero(~is_point)[:, 0], torch.nonzero(is_point)[:, 0]
    rays, points = coords[ray_rows, 1:], coords[point_rows, 1:]
    order = torch.empty(coords.shape[0], dtype=torch.long)
    order[torch.cat([ray_rows, point_rows])] = torch.arange(coords.shape[0])
    if not taps:
        return _Plan(rays, points, order)
    return _Plan(rays, points, order, bilinear_taps(rays, size), _point_taps(points, size))


class _PlanCache:
    """The plans of the last few coords tensors: fitting projects the same rays at every step.

    An entry holds a reference to its rays, so their memory cannot be reused while it is cached:
    a tensor with the same address, shape, strides and version counter is the same data.
    """

    def __init__(self, size: int, taps: bool, slots: int = 3) -> None:
        self.size, self.taps, self.slots = size, taps, slots
        self.entries: dict[tuple, tuple[Tensor, int, _Plan]] = {}

    def __call__(self, coords: Tensor) -> _Plan:
        try:
            key = (coords.data_ptr(), tuple(coords.shape), coords.stride(), coords.dtype)
            version = coords._version
        except (RuntimeError, NotImplementedError):  # a functorch wrapper: no storage to key on
            return _plan(coords, self.size, self.taps)
        hit = self.entries.pop(key, None)
        if hit is None or hit[1] != version:
            hit = (coords, version, _plan(coords, self.size, self.taps))
        self.entries[key] = hit  # most recent last
        while len(self.entries) > self.slots:
            self.entries.pop(next(iter(self.entries)))
        return hit[2]


def radon(image: Tensor, angles: Tensor | list[float]) -> Tensor:
    """Grid projector: image (..., n, n), angles (V,) in degrees -> sinogram (..., n, V).

    Matches ``skimage.transform.radon(image, angles, circle=True)`` (bilinear rotation about pixel
    ``n // 2``, then a sum over rows) for images that are zero outside the reconstruction circle.
    """
    if image.dim() < 2 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"radon expects square images (..., n, n), got {tuple(image.shape)}")
    n = image.shape[-1]
    rays = parallel_beam_rays(angles, n, image.dtype)
    lead = image.shape[:-2]
    pixels = image.reshape(-1, n * n).T  # (n*n, batch): one gather serves the whole batch
    sums = project_pixels(pixels, rays, n)  # (V*n, batch)
    return sums.T.reshape(*lead, -1, n).transpose(-1, -2)


def _non_negative(x: Tensor, slope: float) -> Tensor:
    return x if slope == 1.0 else nn.functional.leaky_relu(x, slope)


class RayIntegral(nn.Module):
    """An image field observed through parallel-beam line integrals: ``rays (R, 2) -> (R, C)``.

    Two forward models, both differentiable w.r.t. the field's params:

    - ``sampling="pixels"``: render the field on the ``size x size`` pixel grid (zero outside the
      reconstruction circle), then integrate that image as scikit-image's radon does. This is the
      exact discrete model of sinograms made by ``radon``; it costs ``size**2`` field evaluations
      per call however many rays are asked for, which is cheap for dense sinograms.
    - ``sampling="field"``: resolution-free; sample the field itself at ``n_samples`` midpoints of
      each ray's chord of the reconstruction circle (no grid at all), ``chunk_rays`` rays at a time.

    The image is ``leaky_relu(field, negative_slope)`` (see :meth:`attenuation`). Besides rays,
    :meth:`forward` takes tagged rows that mix rays and points, so that a training task can be
    scored on its image next to its sinogram.

    The field's submodules and buffers are registered on this module under their own names (not
    under a ``field.`` prefix), so ``named_parameters()`` and ``state_dict()`` are exactly the image
    field's: a learner around a ``RayIntegral`` meta-learns, and checkpoints, an image-field init.
    ``image_field`` is the field itself (it shares every tensor with this module).

    Args:
        field: an image field ``(P, 2) -> (P, C)`` whose parameters all live in submodules.
        size: image side = detector count; fixes the geometry (pixel spacing, rotation centre,
            reconstruction circle) and the grid of ``sampling="pixels"``.
        sampling: "pixels" or "field" (above).
        n_samples: points per ray for ``sampling="field"`` (0: ``size``).
        chunk_rays: rays per field evaluation for ``sampling="field"``.
        negative_slope: slope of the image for negative field outputs (1: unconstrained).
    """

    def __init__(self, field: nn.Module, size: int, sampling: Sampling = "pixels", n_samples: int = 0,
                 chunk_rays: int = 4096, negative_slope: float = 0.01) -> None:
        super().__init__()
        if sampling not in ("pixels", "field"):
            raise ValueError(f"sampling must be 'pixels' or 'field', got {sampling!r}")
        if any(True for _ in field.named_parameters(recurse=False)):
            raise ValueError("RayIntegral needs a field whose parameters all live in submodules")
        pixel_spacing(size)
        for name, child in field.named_children():
            self.add_module(name, child)
        self._mirrored = [name for name, _ in field.named_buffers(recurse=False)]
        for name in self._mirrored:
            self.register_buffer(name, getattr(field, name), persistent=name not in field._non_persistent_buffers_set)
        self.__dict__["image_field"] = field  # not a submodule: its tensors are already registered above
        self.config = getattr(field, "config", None)
        self.size, self.sampling, self.chunk_rays = size, sampling, max(1, int(chunk_rays))
        self.negative_slope = float(negative_slope)
        self.n_samples = int(n_samples) or size
        self.register_buffer("_grid", grid_coords(size, size), persistent=False)
        self.register_buffer("_inside", circle_mask(size).reshape(-1, 1), persistent=False)
        self._plans = _PlanCache(size, taps=sampling == "pixels")

    def _apply(self, fn, recurse: bool = True):  # keep the field's own buffers the ones registered here
        super()._apply(fn, recurse)
        for name in self._mirrored:
            self.image_field._buffers[name] = self._buffers[name]
        return self

    def attenuation(self, points: Tensor) -> Tensor:
        """The image the field describes at points (P, 2): ``leaky_relu(field, negative_slope)``.

        Attenuation cannot be negative (SART's clip to [0, ...] is the same knowledge): negative
        outputs are scaled down to about zero, yet keep a gradient, so a field pushed below zero
        everywhere can recover (a plain ReLU, slope 0, can die). Slope 1 disables the constraint.
        """
        return _non_negative(self.image_field(points), self.negative_slope)

    def image(self) -> Tensor:
        """The image rendered on the pixel grid, zero outside the reconstruction circle: (size * size, C)."""
        return self.attenuation(self._grid) * self._inside

    def forward(self, coords: Tensor) -> Tensor:
        """Observations of the field: rays (R, 2) rows ``(theta, t)`` -> line integrals (R, C) in
        field units; or tagged rows (N, 3) ``(0, theta, t)`` for a ray and ``(1, row, col)`` for the
        field's value at a point (so a training task can score the image next to its sinogram)."""
        plan = self._plans(coords)
        if self.sampling == "pixels":
            image = self.image()
            out = _gather_sum(image, self.size, plan.ray_taps) * pixel_spacing(self.size)
            if plan.points is not None:
                out = torch.cat([out, _gather_sum(image, self.size, plan.point_taps)])
        else:
            rays = plan.rays
            out = torch.cat([self._sample_field(rays[i:i + self.chunk_rays])
                             for i in range(0, rays.shape[0], self.chunk_rays)])
            if plan.points is not None:
                out = torch.cat([out, self.attenuation(plan.points) * self._in_circle(plan.points)])
        return out if plan.order is None else out[plan.order]

    def _in_circle(self, points: Tensor) -> Tensor:
        """(P, 2) -> (P, 1): 1 inside the reconstruction circle, 0 outside."""
        d2 = ((points - rotation_centre(self.size)) ** 2).sum(dim=-1, keepdim=True)
        return (d2 <= circle_radius(self.size) ** 2 + 1e-9).to(points.dtype)

    def _sample_field(self, rays: Tensor) -> Tensor:
        """Midpoint rule along each ray's chord of the reconstruction circle: (R, 2) -> (R, C)."""
        theta, t = rays[:, 0:1], rays[:, 1:2]
        cos, sin = torch.cos(theta), torch.sin(theta)
        centre, radius = rotation_centre(self.size), circle_radius(self.size)
        offset = t - centre * (cos - sin)  # signed distance of the ray from the circle's centre
        half = torch.sqrt(torch.clamp(radius**2 - offset**2, min=0.0))  # half chord (R, 1)
        mid = centre * (cos + sin)  # position of the circle's centre along e_u
        frac = (torch.arange(self.n_samples, dtype=rays.dtype) + 0.5) / self.n_samples * 2 - 1  # (S,)
        v = mid + half * frac  # (R, S)
        points = torch.stack([-t * sin + v * cos, t * cos + v * sin], dim=-1)  # (R, S, 2) as (row, col)
        f = self.attenuation(points.reshape(-1, 2)).reshape(*v.shape, -1)
        return f.sum(dim=1) * (2 * half / self.n_samples)

    def extra_repr(self) -> str:
        return (f"size={self.size}, sampling={self.sampling!r}, n_samples={self.n_samples}, "
                f"negative_slope={self.negative_slope}")


def render(obs: RayIntegral, params: dict[str, Tensor]) -> Tensor:
    """Images of a batch of params: name -> (B, *shape) -> (B, size, size, C), as ``obs`` sees them
    (see :meth:`RayIntegral.attenuation`), zero outside the reconstruction circle."""
    from torch.func import functional_call

    images = torch.vmap(lambda p: functional_call(obs.image_field, p, (obs._grid,)))(params)
    images = _non_negative(images, obs.negative_slope)
    return (images * obs._inside).reshape(-1, obs.size, obs.size, images.shape[-1])
