"""Procedural 3D objects made of coloured boxes, rendered by an independent analytic ray caster.

Ground truth never comes from a NeRF: each pixel's ray is intersected exactly with every box
(the slab method), the nearest hit is shaded (Lambertian from a fixed world light + ambient, on
the box's colour and the hit face's normal) and missed rays show the background. Shading depends
on the surface only, not on the viewer, so a view-independent radiance field can fit it exactly.

Objects live in the world of :mod:`.cameras` (+z up), within :data:`OBJECT_RADIUS` of the origin,
and may be rotated about +z. Two classes: chairs (seat, back, four legs) and tables (top, four
legs), with random proportions and colours; and ``photos`` (learnit's Phototourism setting,
offline): ONE chair photographed under a random light direction, ambient level and colour cast per
photo. Object ``i`` of a split depends only on ``(seed, split, kind, i)``, so a longer list starts
the same way and splits never share a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError
from ..limits import check_pixels
from .cameras import PosedViews, camera_rays, focal_from_fov, orbit_cameras

OBJECT_RADIUS = 1.2
"""every object lies inside the ball of this radius about the origin"""
LIGHT = (0.4, 0.3, 1.0)
"""direction towards the light, world axes (normalised when used)"""
AMBIENT = 0.35
"""the share of a box's colour that every lit or unlit face shows"""
SPLITS = ("train", "val", "test")
NERF_SYNTHETIC_FOV = 0.6911112070083618
"""camera_angle_x of NeRF-synthetic's scenes (radians)"""


@dataclass(frozen=True)
class Lighting:
    """How a photo is lit: a directional light + ambient, and a colour cast on everything lit."""

    light: tuple[float, float, float] = LIGHT
    """direction towards the light, world axes"""
    ambient: float = AMBIENT
    """the share of a box's colour that every face shows"""
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """per-channel gain of the reflected colour (clipped to [0, 1] after shading)"""


def random_lighting(rng: np.random.Generator) -> Lighting:
    """A light on the upper hemisphere (at least 15 degrees up), ambient in [0.15, 0.5], a colour
    cast of gains in [0.6, 1.25] per channel."""
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(15), math.radians(85))
    light = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation))
    return Lighting(light, float(rng.uniform(0.15, 0.5)), tuple(rng.uniform(0.6, 1.25, 3).tolist()))


@dataclass(frozen=True)
class BoxObject:
    """A union of K axis-aligned boxes (in the object's frame), turned by ``angle`` about +z."""

    lo: Tensor
    """(K, 3) float64 lower corners, object frame"""
    hi: Tensor
    """(K, 3) float64 upper corners, object frame"""
    colours: Tensor
    """(K, 3) float64 in [0, 1]"""
    angle: float = 0.0
    """rotation about world +z in radians: world = Rz(angle) @ object"""

    def __post_init__(self) -> None:
        k = self.lo.shape[0]
        if self.lo.shape != (k, 3) or self.hi.shape != (k, 3) or self.colours.shape != (k, 3) or k == 0:
            raise ValueError(f"a box object needs lo, hi, colours (K, 3), got {tuple(self.lo.shape)}, "
                             f"{tuple(self.hi.shape)}, {tuple(self.colours.shape)}")

    def radius(self) -> float:
        """Distance from the origin of the farthest box corner."""
        return float(torch.maximum(self.lo.abs(), self.hi.abs()).norm(dim=-1).max())


def _uniform(rng: np.random.Generator) -> Callable[[float, float], float]:
    return lambda lo, hi: float(rng.uniform(lo, hi))


def _colour(rng: np.random.Generator) -> list[float]:
    return rng.uniform(0.1, 0.9, 3).tolist()


def _object(boxes: list[tuple[list[float], list[float]]], colours: list[list[float]], rng: np.random.Generator,
            rotate: bool) -> BoxObject:
    lo = torch.tensor([b[0] for b in boxes], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in boxes], dtype=torch.float64)
    angle = float(rng.uniform(0.0, 2 * math.pi)) if rotate else 0.0
    return BoxObject(lo, hi, torch.tensor(colours, dtype=torch.float64), angle)


def _legs(half_x: float, half_y: float, leg: float, z0: float, z1: float) -> list[tuple[list[float], list[float]]]:
    """Four square legs of half-side ``leg`` in the corners of [-half_x, half_x] x [-half_y, half_y]."""
    centres = [(sx * (half_x - leg), sy * (half_y - leg)) for sx in (-1, 1) for sy in (-1, 1)]
    return [([x - leg, y - leg, z0], [x + leg, y + leg, z1]) for x, y in centres]


def chair(rng: np.random.Generator, rotate: bool = False) -> BoxObject:
    """A chair: seat, a back along its -y edge and four legs, with random proportions and two
    colours (seat and back, legs); turned by a random angle about +z when ``rotate``."""
    u = _uniform(rng)
    w, d, seat, legs, leg, back, back_th = (u(0.35, 0.55), u(0.35, 0.55), u(0.06, 0.12), u(0.4, 0.7),
                                           u(0.03, 0.07), u(0.35, 0.75), u(0.04, 0.09))
    z0 = -0.5 * (legs + seat + back)
    top = z0 + legs + seat
    boxes = _legs(w, d, leg, z0, z0 + legs)
    boxes += [([-w, -d, z0 + legs], [w, d, top]), ([-w, -d, top], [w, -d + 2 * back_th, top + back])]
    body, frame = _colour(rng), _colour(rng)
    return _object(boxes, [frame] * 4 + [body, body], rng, rotate)


def table(rng: np.random.Generator, rotate: bool = False) -> BoxObject:
    """A table: a rectangular top on four legs (possibly set in from the edge), random proportions,
    two colours (top, legs); turned by a random angle about +z when ``rotate``."""
    u = _uniform(rng)
    wx, wy, top, legs, leg, inset = u(0.45, 0.8), u(0.3, 0.65), u(0.04, 0.1), u(0.45, 0.8), u(0.03, 0.08), u(0, 0.1)
    z0 = -0.5 * (legs + top)
    boxes = _legs(wx - inset, wy - inset, leg, z0, z0 + legs) + [([-wx, -wy, z0 + legs], [wx, wy, z0 + legs + top])]
    board, frame = _colour(rng), _colour(rng)
    return _object(boxes, [frame] * 4 + [board], rng, rotate)


PHOTO_SCENE = 20240601
"""the seed of the one chair that ``photos`` shows (every split, every photo)"""


def photo_scene(rng: np.random.Generator, rotate: bool = False) -> BoxObject:
    """The one chair of the ``photos`` class (``rng`` and ``rotate`` do not change it)."""
    return chair(np.random.default_rng(PHOTO_SCENE), False)


KINDS: dict[str, Callable[..., BoxObject]] = {"chairs": chair, "tables": table, "photos": photo_scene}
RELIT = {"photos"}
"""kinds whose objects differ by their lighting (each photo a random :class:`Lighting`)"""


def _turn(v: Tensor, angle: float) -> Tensor:
    """Rotate vectors (..., 3) by ``angle`` about +z."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], dim=-1)


def cast_rays(obj: BoxObject, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of rays with the object's boxes (slab method), for rays starting outside them.

    origins, directions: (R, 3) world. Returns depth (R,) (``inf`` where the ray misses), the hit
    face's outward normal (R, 3) in world axes (zero where missed) and the hit box's colour (R, 3).
    """
    kw = dict(dtype=origins.dtype, device=origins.device)
    lo, hi, colours = obj.lo.to(**kw), obj.hi.to(**kw), obj.colours.to(**kw)
    o, d = _turn(origins, -obj.angle), _turn(directions, -obj.angle)  # into the object's frame
    tiny = torch.finfo(d.dtype).tiny ** 0.5
    inv = 1.0 / torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)  # (R, 3): no 0 * inf
    t1 = (lo[None] - o[:, None]) * inv[:, None]  # (R, K, 3)
    t2 = (hi[None] - o[:, None]) * inv[:, None]
    enter, axis = torch.minimum(t1, t2).max(dim=-1)  # (R, K): entry depth and the face's axis
    leave = torch.maximum(t1, t2).min(dim=-1).values
    depth = torch.where((leave >= enter) & (enter > 0), enter, torch.full_like(enter, math.inf))
    nearest, box = depth.min(dim=-1)  # (R,)
    hit = torch.isfinite(nearest)
    k = axis.gather(1, box[:, None])[:, 0]  # (R,) axis of the face hit
    normal = torch.nn.functional.one_hot(k, 3).to(**kw) * -torch.sign(d.gather(1, k[:, None]))
    normal = _turn(normal * hit[:, None], obj.angle)
    return nearest, normal, colours[box] * hit[:, None]


def shade(normal: Tensor, colour: Tensor, lighting: Lighting = Lighting()) -> Tensor:
    """Lambertian + ambient: ``tint * colour * (ambient + (1 - ambient) * max(0, n . light))``
    (R, 3), clipped to [0, 1]."""
    light = torch.tensor(lighting.light, dtype=normal.dtype, device=normal.device)
    lambert = (normal @ (light / light.norm())).clamp(min=0.0)
    tint = torch.tensor(lighting.tint, dtype=normal.dtype, device=normal.device)
    return (tint * colour * (lighting.ambient + (1.0 - lighting.ambient) * lambert)[:, None]).clamp(0.0, 1.0)


def render_views(obj: BoxObject, c2w: Tensor, height: int, width: int, focal: float, background: float = 1.0,
                 supersample: int = 1, lighting: Lighting = Lighting()) -> tuple[Tensor, Tensor]:
    """Render an object from cameras c2w (V, 4, 4): rgb (V, H, W, 3) in [0, 1], mask (V, H, W).

    Pixels sample their centres (the rays of :func:`.cameras.camera_rays`); ``supersample`` s > 1
    averages an s x s grid of sub-pixel centres (anti-aliasing; the mask is then the coverage).
    Missed rays show ``background`` (1.0 white, 0.0 black) exactly; dtype and device follow c2w.
    """
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    v = c2w.shape[0]
    origins, directions = camera_rays(c2w, height * s, width * s, focal * s)
    depth, normal, colour = cast_rays(obj, origins.reshape(-1, 3), directions.reshape(-1, 3))
    hit = torch.isfinite(depth).to(c2w.dtype)[:, None]
    rgb = shade(normal, colour, lighting) * hit + background * (1.0 - hit)
    both = torch.cat([rgb, hit], dim=-1).reshape(v, height, s, width, s, 4).mean(dim=(2, 4))
    return both[..., :3], both[..., 3]


def box_objects(kind: str = "chairs", split: str = "train", count: int = 100, views: int = 25, resolution: int = 32,
                seed: int = 0, rotate: bool = False, radius: float = 4.0,
                camera_angle_x: float = NERF_SYNTHETIC_FOV,
                elevation_range: tuple[float, float] = (0.0, 0.5 * math.pi), background: float = 1.0,
                supersample: int = 1) -> PosedViews:
    """``count`` random objects of a class, each seen from ``views`` random cameras on the upper
    hemisphere of ``radius`` (see :func:`.cameras.orbit_cameras`), as float32 posed views:
    images (count, V, H, W, 3), poses (count, V, 4, 4), masks (count, V, H, W), one focal, and
    near/far = radius -+ :data:`OBJECT_RADIUS`. Deterministic in ``(seed, split)``; splits use
    disjoint seeds. The default field of view is NeRF-synthetic's, and it holds every object.
    """
    if kind not in KINDS:
        raise MetaINRError(f"unknown box object kind {kind!r}; choose from {', '.join(KINDS)}")
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if count < 1 or views < 1 or resolution < 2 or radius <= OBJECT_RADIUS or supersample < 1:
        raise MetaINRError(f"need count >= 1, views >= 1, resolution >= 2, radius > {OBJECT_RADIUS} and "
                           f"supersample >= 1, got count={count}, views={views}, resolution={resolution}, "
                           f"radius={radius}, supersample={supersample}")
    check_pixels(views * resolution * resolution, f"box objects ({views} views of {resolution}x{resolution})")
    focal = focal_from_fov(camera_angle_x, resolution)
    make = KINDS[kind]
    images, masks, poses = [], [], []
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), list(KINDS).index(kind), i])
        obj = make(rng, rotate)
        lighting = random_lighting(rng) if kind in RELIT else Lighting()
        cameras = orbit_cameras(views, elevation_range, radius, torch.Generator().manual_seed(int(rng.integers(2**62))),
                                dtype=torch.float64)
        rgb, mask = render_views(obj, cameras, resolution, resolution, focal, background, supersample, lighting)
        images.append(rgb)
        masks.append(mask)
        poses.append(cameras)
    return PosedViews(torch.stack(images).float(), torch.stack(poses).float(), focal, radius - OBJECT_RADIUS,
                      radius + OBJECT_RADIUS, torch.stack(masks).float(), name=f"box-{kind}-{split}")
