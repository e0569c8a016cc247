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


def _bilinear_taps(rays: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Where scikit-image's rotate-and-sum reads the image for each ray.

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
        corner = (r0 * side + c0).to(torch.int32)[..., None]
        idx = (corner + torch.tensor([0, 1, side, side + 1], dtype=torch.int32)).flatten(1)
        w = (torch.cat([1 - dr, dr], -1)[..., :, None] * torch.cat([1 - dc, dc], -1)[..., None, :]).flatten(1)
    return idx, w


def _padded(pixels: Tensor, size: int) -> Tensor:
    """(size * size, C) row-major -> ((size + 3) ** 2, C) with zero rows/cols: 1 before, 2 after."""
    image = pixels.reshape(size, size, -1)
    return nn.functional.pad(image, (0, 0, 1, 2, 1, 2)).reshape(-1, pixels.shape[-1])


def project_pixels(pixels: Tensor, rays: Tensor, size: int, taps: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Pixel sums of an image along rays, as scikit-image's rotate-and-sum computes them.

    pixels: (size * size, C) row-major; rays: (R, 2) -> (R, C). ``taps`` are
    ``_bilinear_taps(rays, size)`` when already at hand. Differentiable to any order in ``pixels``
    (a gather and a weighted sum), so second-order meta-learning can go through it.
    """
    idx, w = _bilinear_taps(rays, size) if taps is None else taps
    gathered = _padded(pixels, size).index_select(0, idx.flatten()).reshape(*idx.shape, pixels.shape[-1])
    return (gathered * w.to(pixels.dtype)[..., None]).sum(dim=1)


class _TapsCache:
    """The last few rays' bilinear taps: fitting projects the same rays at every step.

    An entry holds a reference to its rays, so their memory cannot be reused while it is cached:
    a tensor with the same address, shape, strides and version counter is the same data.
    """

    def __init__(self, size: int, slots: int = 3) -> None:
        self.size, self.slots = size, slots
        self.entries: dict[tuple, tuple[Tensor, int, tuple[Tensor, Tensor]]] = {}

    def __call__(self, rays: Tensor) -> tuple[Tensor, Tensor]:
        try:
            key = (rays.data_ptr(), tuple(rays.shape), rays.stride(), rays.dtype)
            version = rays._version
        except (RuntimeError, NotImplementedError):  # a functorch wrapper: no storage to key on
            return _bilinear_taps(rays, self.size)
        hit = self.entries.pop(key, None)
        if hit is None or hit[1] != version:
            hit = (rays, version, _bilinear_taps(rays, self.size))
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


class RayIntegral(nn.Module):
    """An image field observed through parallel-beam line integrals: ``rays (R, 2) -> (R, C)``.

    Two forward models, both differentiable w.r.t. the field's params:

    - ``sampling="pixels"``: render the field on the ``size x size`` pixel grid (zero outside the
      reconstruction circle), then integrate that image as scikit-image's radon does. This is the
      exact discrete model of sinograms made by ``radon``; it costs ``size**2`` field evaluations
      per call however many rays are asked for, which is cheap for dense sinograms.
    - ``sampling="field"``: resolution-free; sample the field itself at ``n_samples`` midpoints of
      each ray's chord of the reconstruction circle (no grid at all), ``chunk_rays`` rays at a time.

    The field's submodules and buffers are registered on this module under their own names (not
    under a ``field.`` prefix), so ``named_parameters()`` and ``state_dict()`` are exactly the image
    field's: a learner around a ``RayIntegral`` meta-learns, and checkpoints, an image-field init.
    ``image_field`` is the field itself (it shares every tensor with this module).
    """

    def __init__(self, field: nn.Module, size: int, sampling: Sampling = "pixels", n_samples: int = 0,
                 chunk_rays: int = 4096) -> None:
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
        self.config = field.config
        self.size, self.sampling, self.chunk_rays = size, sampling, max(1, int(chunk_rays))
        self.n_samples = int(n_samples) or size
        self.register_buffer("_grid", grid_coords(size, size), persistent=False)
        self.register_buffer("_inside", circle_mask(size).reshape(-1, 1), persistent=False)
        self._taps = _TapsCache(size)

    def _apply(self, fn, recurse: bool = True):  # keep the field's own buffers the ones registered here
        super()._apply(fn, recurse)
        for name in self._mirrored:
            self.image_field._buffers[name] = self._buffers[name]
        return self

    def image(self) -> Tensor:
        """The field rendered on the pixel grid, zero outside the reconstruction circle: (size * size, C)."""
        return self.image_field(self._grid) * self._inside

    def forward(self, rays: Tensor) -> Tensor:
        """rays: (R, 2) rows (theta, t) -> line integrals (R, C) in field units."""
        if self.sampling == "pixels":
            return project_pixels(self.image(), rays, self.size, self._taps(rays)) * pixel_spacing(self.size)
        return torch.cat([self._sample_field(rays[i:i + self.chunk_rays])
                          for i in range(0, rays.shape[0], self.chunk_rays)])

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
        f = self.image_field(points.reshape(-1, 2)).reshape(*v.shape, -1)
        return f.sum(dim=1) * (2 * half / self.n_samples)

    def extra_repr(self) -> str:
        return f"size={self.size}, sampling={self.sampling!r}, n_samples={self.n_samples}"


def render(obs: RayIntegral, params: dict[str, Tensor]) -> Tensor:
    """Images of a batch of params: name -> (B, *shape) -> (B, size, size, C), zero outside the
    reconstruction circle."""
    from torch.func import functional_call

    images = torch.vmap(lambda p: functional_call(obs.image_field, p, (obs._grid,)))(params)
    return (images * obs._inside).reshape(-1, obs.size, obs.size, images.shape[-1])
