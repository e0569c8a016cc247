"""Pinhole cameras, their rays, and posed views (images with their cameras).

Conventions (those of NeRF-synthetic's Blender scenes, so that its poses and ours mean the same):

- world: right-handed, **+z is up**; objects sit around the origin;
- camera: OpenGL axes, a camera-to-world matrix ``c2w`` (4, 4) whose columns are the camera's
  **+x (right), +y (up), +z (backwards: the camera looks down its -z)** in world coordinates and
  its position; the last row is ``(0, 0, 0, 1)``;
- angles are in **radians** (as NeRF-synthetic's ``camera_angle_x``); azimuth is measured from
  +x towards +y, elevation from the xy-plane towards +z;
- pixel ``(i, j)`` (row ``i`` from the top, column ``j`` from the left) is sampled at its centre
  ``(j + 0.5, i + 0.5)``; the principal point is the image centre ``(W / 2, H / 2)``; rays are
  row-major, like ``image.reshape(-1, C)``.

Every tensor is made on the device (and in the dtype) of the inputs it derives from.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor


def focal_from_fov(camera_angle_x: float, width: int) -> float:
    """Focal length in pixels of a camera whose horizontal field of view is ``camera_angle_x``
    (radians) across ``width`` pixels: ``0.5 * width / tan(0.5 * camera_angle_x)``."""
    if not 0.0 < camera_angle_x < math.pi:
        raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {camera_angle_x}")
    return 0.5 * width / math.tan(0.5 * camera_angle_x)


def look_at_sphere(azimuth: Tensor | float, elevation: Tensor | float, radius: Tensor | float) -> Tensor:
    """Cameras on a sphere about the origin, looking at it, with world +z as up: c2w (V, 4, 4).

    azimuth, elevation: (V,) radians (or floats; broadcast together), radius: float or (V,).
    The camera sits at ``radius * (cos e cos a, cos e sin a, sin e)``; its right axis is
    ``(-sin a, cos a, 0)`` (horizontal), up ``(-sin e cos a, -sin e sin a, cos e)``, backwards
    the unit position. This closed form stays orthonormal at the poles (e = +-pi/2), where the
    camera looks straight down (up) with its up axis along ``-(cos a, sin a, 0)`` (resp. +).
    dtype and device follow the first tensor among the inputs (default dtype otherwise).
    """
    like = next((x for x in (azimuth, elevation, radius) if isinstance(x, Tensor)), None)
    kw = dict(dtype=like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype(),
              device=like.device if like is not None else None)
    a, e, r = (torch.as_tensor(x, **kw).reshape(-1) for x in (azimuth, elevation, radius))
    a, e, r = torch.broadcast_tensors(a, e, r)
    ca, sa, ce, se = torch.cos(a), torch.sin(a), torch.cos(e), torch.sin(e)
    zero = torch.zeros_like(a)
    right = torch.stack([-sa, ca, zero], dim=-1)
    up = torch.stack([-se * ca, -se * sa, ce], dim=-1)
    back = torch.stack([ce * ca, ce * sa, se], dim=-1)
    rotation = torch.stack([right, up, back], dim=-1)  # (V, 3, 3): columns are the camera axes
    top = torch.cat([rotation, (back * r[:, None])[..., None]], dim=-1)  # (V, 3, 4)
    bottom = torch.stack([zero, zero, zero, torch.ones_like(a)], dim=-1)[:, None, :]  # (V, 1, 4)
    return torch.cat([top, bottom], dim=-2)


def orbit_cameras(n: int, elevation_range: tuple[float, float] = (0.0, 0.5 * math.pi), radius: float = 4.0,
                  generator: torch.Generator | None = None, fixed: bool = False,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """``n`` cameras on a sphere of ``radius`` looking at the origin: c2w (n, 4, 4).

    Random (``fixed=False``): azimuth uniform in [0, 2 pi), elevation uniform *on the sphere*
    between ``elevation_range`` (radians; sin(elevation) is uniform, so views cover the band
    evenly), drawn from ``generator`` (torch's global generator when None) on the CPU in float64.
    Turntable (``fixed=True``): azimuths ``2 pi k / n`` at the middle elevation, no randomness.
    """
    lo, hi = (float(x) for x in elevation_range)
    if n < 1 or not -0.5 * math.pi <= lo <= hi <= 0.5 * math.pi or radius <= 0:
        raise ValueError(f"need n >= 1, -pi/2 <= elevation lo <= hi <= pi/2 and radius > 0, got n={n}, "
                         f"elevation_range={elevation_range}, radius={radius}")
    if fixed:
        azimuth = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        elevation = torch.full((n,), 0.5 * (lo + hi), dtype=torch.float64)
    else:
        u = torch.rand(2, n, generator=generator, dtype=torch.float64)
        azimuth = 2 * math.pi * u[0]
        elevation = torch.asin(math.sin(lo) + (math.sin(hi) - math.sin(lo)) * u[1])
    c2w = look_at_sphere(azimuth, elevation, radius)
    return c2w.to(dtype=dtype or torch.get_default_dtype(), device=device)


def camera_rays(c2w: Tensor, height: int, width: int, focal: Tensor | float) -> tuple[Tensor, Tensor]:
    """Rays through the pixel centres of pinhole cameras (conventions in the module docstring).

    c2w: (..., 4, 4) camera-to-world (e.g. (V, 4, 4)); focal: pixels, a float or a tensor
    broadcastable to c2w's leading shape (e.g. (V,)). Returns origins (..., H*W, 3) (the camera
    positions) and unit directions (..., H*W, 3), row-major like ``image.reshape(-1, C)``, in
    c2w's dtype and on its device.
    """
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be (..., 4, 4), got {tuple(c2w.shape)}")
    kw = dict(dtype=c2w.dtype, device=c2w.device)
    f = torch.as_tensor(focal, **kw)[..., None]  # (..., 1): one focal per camera
    j = torch.arange(width, **kw) + 0.5
    i = torch.arange(height, **kw) + 0.5
    x = ((j - 0.5 * width)[None, :].expand(height, width)).reshape(-1)  # (H*W,)
    y = (-(i - 0.5 * height)[:, None].expand(height, width)).reshape(-1)
    cam = torch.stack([x / f, y / f, -torch.ones_like(x / f)], dim=-1)  # (..., H*W, 3) camera axes
    directions = cam @ c2w[..., :3, :3].transpose(-1, -2)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = c2w[..., None, :3, 3].expand(directions.shape)
    return origins, directions


def rays_to_query(origins: Tensor, directions: Tensor) -> Tensor:
    """Rays as query rows: origins (..., R, 3), directions (..., R, 3) -> (..., R, 6)."""
    return torch.cat([origins, directions], dim=-1)


@dataclass(frozen=True)
class PosedViews:
    """Images with the cameras that took them: one scene ``(V, ...)`` or n objects ``(n, V, ...)``.

    All views share one pinhole focal length and one near/far depth range.
    """

    images: Tensor
    """(..., V, H, W, 3) in [0, 1], composited on the background"""
    poses: Tensor
    """(..., V, 4, 4) camera-to-world matrices (OpenGL axes, world +z up)"""
    focal: float
    """focal length in pixels"""
    near: float
    """depth where rays start sampling (every object lies beyond it)"""
    far: float
    """depth where rays stop sampling (every object lies before it)"""
    masks: Tensor | None = None
    """(..., V, H, W) in [0, 1]: the object's coverage (alpha) of each pixel"""
    name: str = "views"

    def __post_init__(self) -> None:
        if self.images.dim() < 4 or self.images.shape[-1] != 3 or self.poses.shape != (*self.images.shape[:-3], 4, 4):
            raise ValueError(f"posed views need images (..., V, H, W, 3) and poses (..., V, 4, 4), got "
                             f"{tuple(self.images.shape)} and {tuple(self.poses.shape)}")
        if self.masks is not None and self.masks.shape != self.images.shape[:-1]:
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}")
        if not 0 <= self.near < self.far:
            raise ValueError(f"need 0 <= near < far, got near={self.near}, far={self.far}")

    @property
    def height(self) -> int:
        return self.images.shape[-3]

    @property
    def width(self) -> int:
        return self.images.shape[-2]

    def rays(self) -> tuple[Tensor, Tensor]:
        """origins, directions (..., V, H*W, 3) of every pixel (see :func:`camera_rays`)."""
        return camera_rays(self.poses, self.height, self.width, self.focal)

    def values(self) -> Tensor:
        """(..., V, H*W, 3) pixel values, in the order of :meth:`rays`."""
        return self.images.reshape(*self.images.shape[:-3], -1, 3)

    # -- a set of objects (n, V, ...): what datasets and the trainer index -------------------------
    @property
    def is_set(self) -> bool:
        """True for n objects (n, V, H, W, 3), False for one scene (V, H, W, 3)."""
        return self.images.dim() == 5

    def as_set(self) -> "PosedViews":
        """A set of objects: itself, or one scene as a set of one (1, V, ...)."""
        if self.is_set:
            return self
        return dataclasses.replace(self, images=self.images[None], poses=self.poses[None],
                                   masks=None if self.masks is None else self.masks[None])

    def __len__(self) -> int:
        """Number of objects of a set (one scene is not a set: TypeError, see :meth:`as_set`)."""
        if not self.is_set:
            raise TypeError("one scene (V, H, W, 3) has no length; use views.as_set() for a set of one object")
        return self.images.shape[0]

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> "PosedViews":
        """Objects of a set, as tensors index: an int gives one scene (V, ...); a slice, a list or
        an index tensor (long or bool, on any device) gives a set (k, V, ...)."""
        if not self.is_set:
            raise TypeError("one scene (V, H, W, 3) cannot be indexed by object; use views.as_set()")
        if isinstance(index, Tensor):
            index = index.to(self.images.device)
        elif isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        return dataclasses.replace(self, images=self.images[index], poses=self.poses[index],
                                   masks=None if self.masks is None else self.masks[index])

    def select_views(self, index: slice | Tensor | list[int]) -> "PosedViews":
        """The views ``index`` (a slice, a list or an index tensor) of every object (or of the scene)."""
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.images.device)
        lead = (slice(None),) * (self.images.dim() - 4)
        return dataclasses.replace(self, images=self.images[(*lead, index)], poses=self.poses[(*lead, index)],
                                   masks=None if self.masks is None else self.masks[(*lead, index)])

    def to(self, device: torch.device | str) -> "PosedViews":
        """The same views on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), poses=self.poses.to(device),
                                   masks=None if self.masks is None else self.masks.to(device))
