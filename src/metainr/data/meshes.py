"""Real triangle meshes as a harder class of objects, rendered by an independent ray caster.

The objects are pybullet's ``random_urdfs`` (1000 random blobs, ``NNN/NNN.obj`` + ``NNN.urdf``
with the colour, shipped in the ``pybullet`` wheel: ``pip install metainr[meshes]``): objects
0-799 are train, 800-899 val, 900-999 test. Each mesh is centred (its bounding box) and scaled
to :data:`MESH_RADIUS`, inside :data:`.box_objects.OBJECT_RADIUS`, so the cameras, depth range
and lighting are those of :func:`.box_objects.box_objects`. Every ray is intersected exactly with
every triangle (Möller–Trumbore's barycentric test, in the Plücker form below, chunked over rays),
the nearest hit shaded with :func:`.box_objects.shade` on the face normal turned towards the
viewer (two-sided), and missed rays show the background.
"""
from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError
from ..limits import check_pixels
from .box_objects import NERF_SYNTHETIC_FOV, OBJECT_RADIUS, SPLITS, Lighting, shade
from .cameras import PosedViews, camera_rays, focal_from_fov, orbit_cameras

MAX_FACES = 200_000
"""the most triangles (and vertices) an OBJ file may declare"""
MESH_RADIUS = 1.0
"""a normalised mesh's farthest vertex lies this far from the origin"""
PAIRS = 1 << 20
"""ray-triangle pairs tested at once (bounds the caster's memory)"""
GREY = (0.5, 0.5, 0.5)
"""the colour of a mesh whose urdf gives none"""
SPLIT_IDS = {"train": range(0, 800), "val": range(800, 900), "test": range(900, 1000)}
"""which random_urdfs numbers belong to each split"""


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 (0-based) of a Wavefront OBJ file.

    Reads ``v`` and ``f`` lines only; polygons are split into fans ``(0, k, k+1)``; face corners may
    be ``a``, ``a/b``, ``a//c`` or ``a/b/c`` and negative (relative to the vertices read so far).
    A missing or malformed file, or one over :data:`MAX_FACES`, is a one-line MetaINRError.
    """
    vertices: list[list[float]] = []
    faces: list[tuple[int, int, int]] = []
    try:
        with open(path, encoding="utf-8") as file:
            for n, line in enumerate(file, 1):
                words = line.split()
                if not words or words[0] not in ("v", "f"):
                    continue
                try:
                    if words[0] == "v":
                        vertices.append([float(x) for x in words[1:4]])
                        if len(vertices[-1]) != 3:
                            raise ValueError("a vertex needs x y z")
                        continue
                    corners = [int(w.split("/")[0]) for w in words[1:]]
                    if len(corners) < 3:
                        raise ValueError("a face needs at least 3 corners")
                    corners = [c - 1 if c > 0 else len(vertices) + c if c < 0 else -1 for c in corners]
                    if min(corners) < 0 or max(corners) >= len(vertices):
                        raise ValueError(f"a face refers to a vertex out of 1..{len(vertices)}")
                    faces += [(corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1)]
                except ValueError as err:
                    raise MetaINRError(f"OBJ file {path}: line {n}: {err}") from None
                if len(faces) > MAX_FACES or len(vertices) > MAX_FACES:
                    raise MetaINRError(f"OBJ file {path} has more than {MAX_FACES:,} triangles or vertices, over "
                                       "metainr.data.meshes.MAX_FACES")
    except (OSError, UnicodeDecodeError) as err:
        raise MetaINRError(f"cannot read OBJ file {path}: {str(err).splitlines()[0]}") from None
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if not faces or not np.isfinite(v).all():
        raise MetaINRError(f"OBJ file {path} has no faces or a non-finite vertex")
    return v, np.asarray(faces, dtype=np.int64)


@dataclass(frozen=True)
class MeshObject:
    """A triangle mesh of one colour (in the object's frame), turned by ``angle`` about +z."""

    vertices: Tensor
    """(V, 3) float64, object frame"""
    faces: Tensor
    """(F, 3) int64 vertex indices of triangles"""
    colour: Tensor
    """(3,) float64 in [0, 1]"""
    angle: float = 0.0
    """rotation about world +z in radians: world = Rz(angle) @ object"""

    def __post_init__(self) -> None:
        v, f = self.vertices, self.faces
        if v.dim() != 2 or v.shape[1] != 3 or f.dim() != 2 or f.shape[1] != 3 or f.shape[0] == 0 \
                or self.colour.shape != (3,) or f.min() < 0 or f.max() >= v.shape[0]:
            raise ValueError(f"a mesh object needs vertices (V, 3), faces (F >= 1, 3) indexing them and colour (3,), "
                             f"got {tuple(v.shape)}, {tuple(f.shape)}, {tuple(self.colour.shape)}")

    @classmethod
    def normalised(cls, vertices: Tensor | np.ndarray, faces: Tensor | np.ndarray,
                   colour: Tensor | tuple[float, float, float] = GREY, angle: float = 0.0,
                   radius: float = MESH_RADIUS) -> "MeshObject":
        """The mesh with its bounding box centred on the origin and scaled so that its farthest
        vertex lies at ``radius`` (<= :data:`OBJECT_RADIUS`)."""
        v = torch.as_tensor(vertices, dtype=torch.float64)
        v = v - 0.5 * (v.amin(dim=0) + v.amax(dim=0))
        size = float(v.norm(dim=-1).max()) if v.numel() else 0.0
        if not 0 < radius <= OBJECT_RADIUS or size == 0:
            raise ValueError(f"need 0 < radius <= {OBJECT_RADIUS} and a mesh of positive size, got {radius}, {size}")
        return cls(v * (radius / size), torch.as_tensor(faces, dtype=torch.int64),
                   torch.as_tensor(colour, dtype=torch.float64), angle)

    def radius(self) -> float:
        """Distance from the origin of the farthest vertex."""
        return float(self.vertices.norm(dim=-1).max())


def _turn(v: Tensor, angle: float) -> Tensor:
    """Rotate vectors (..., 3) by ``angle`` about +z."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], dim=-1)


def cast_mesh(obj: MeshObject, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of rays with the mesh's triangles, for rays from outside it.

    origins, directions: (R, 3) world. Returns depth (R,) (``inf`` where the ray misses), the hit
    face's unit normal turned towards the ray's origin (R, 3) (zero where missed) and the colour
    (R, 3) (zero where missed). Möller–Trumbore's determinant, barycentrics u, v and depth t are
    triple products; with the ray's moment m = d x o each is linear in (d, m, o, 1), so one matmul
    (R, 10) @ (10, 4F) gives them all: det = -d.n, u det = d.(a x e2) - m.e2, v det = m.e1 - d.(a x e1),
    t det = o.n - a.n for a triangle (a, a + e1, a + e2) of normal n = e1 x e2.
    """
    kw = dict(dtype=origins.dtype, device=origins.device)
    v = _turn(obj.vertices.to(**kw), obj.angle)
    a, b, c = (v[obj.faces[:, k].to(origins.device)] for k in range(3))  # (F, 3) corners
    e1, e2 = b - a, c - a
    n = torch.linalg.cross(e1, e2)
    zero, one = torch.zeros_like(n), torch.ones_like(n[:, :1])
    weights = torch.stack([torch.cat(w, dim=-1) for w in (  # (4, F, 10) over (d, m, o, 1)
        [-n, zero, zero, 0 * one],
        [torch.linalg.cross(a, e2), -e2, zero, 0 * one],
        [-torch.linalg.cross(a, e1), e1, zero, 0 * one],
        [zero, zero, n, -(a * n).sum(-1, keepdim=True)])]).reshape(-1, 10).T  # (10, 4F)
    area = n.norm(dim=-1)
    f = n.shape[0]
    depth = torch.full(origins.shape[:1], math.inf, **kw)
    face = torch.zeros(origins.shape[:1], dtype=torch.long, device=origins.device)
    moment = torch.linalg.cross(directions, origins)  # (R, 3): |m| / |d| is the ray's distance from 0
    near = (moment.norm(dim=-1) <= 1.000001 * directions.norm(dim=-1) * v.norm(dim=-1).max()).nonzero()[:, 0]
    chunk = max(1, PAIRS // f)
    for s in range(0, near.shape[0], chunk):  # only rays that pass through the mesh's bounding ball
        rows = near[s:s + chunk]
        o, d = origins[rows], directions[rows]
        rays = torch.cat([d, moment[rows], o, torch.ones_like(o[:, :1])], dim=-1)  # (r, 10)
        det, u, w, t = (rays @ weights).reshape(-1, 4, f).unbind(1)  # (r, F) each, times det
        size, sign = det.abs(), det.sign()
        u, w, t = u * sign, w * sign, t * sign  # u, w, t times |det|: no division before the test
        ok = (size > 1e-12 * area * d.norm(dim=-1, keepdim=True)) & (u >= 0) & (w >= 0) & (u + w <= size) & (t > 0)
        nearest, index = torch.where(ok, t / size, math.inf).min(dim=-1)
        depth[rows], face[rows] = nearest, index
    hit = torch.isfinite(depth)[:, None]
    normal = n[face] / area[face].clamp(min=torch.finfo(n.dtype).tiny)[:, None]
    normal = torch.where((normal * directions).sum(-1, keepdim=True) > 0, -normal, normal) * hit
    return depth, normal, obj.colour.to(**kw).expand_as(normal) * hit


def render_mesh_views(obj: MeshObject, c2w: Tensor, height: int, width: int, focal: float, background: float = 1.0,
                      lighting: Lighting = Lighting(), supersample: int = 1) -> tuple[Tensor, Tensor]:
    """Render a mesh from cameras c2w (V, 4, 4): rgb (V, H, W, 3) in [0, 1], mask (V, H, W), as
    :func:`.box_objects.render_views` does (pixel centres, ``supersample`` s x s sub-pixels averaged,
    missed rays exactly ``background``); dtype and device follow c2w."""
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    v = c2w.shape[0]
    origins, directions = camera_rays(c2w, height * s, width * s, focal * s)
    depth, normal, colour = cast_mesh(obj, origins.reshape(-1, 3), directions.reshape(-1, 3))
    hit = torch.isfinite(depth).to(c2w.dtype)[:, None]
    rgb = shade(normal, colour, lighting) * hit + background * (1.0 - hit)
    both = torch.cat([rgb, hit], dim=-1).reshape(v, height, s, width, s, 4).mean(dim=(2, 4))
    return both[..., :3], both[..., 3]


def random_urdfs_root() -> Path:
    """pybullet_data's ``random_urdfs`` folder (a one-line MetaINRError when pybullet is missing)."""
    spec = importlib.util.find_spec("pybullet_data")
    if spec is None or not spec.submodule_search_locations:
        raise MetaINRError("the meshes dataset needs pybullet's data: pip install pybullet (or pip install "
                           "metainr[meshes])")
    return Path(list(spec.submodule_search_locations)[0]) / "random_urdfs"


def read_urdf_colour(path: Path) -> tuple[float, float, float]:
    """The rgb of the first ``<color rgba="r g b a"/>`` of a urdf (:data:`GREY` when missing or bad)."""
    try:
        node = ET.parse(path).getroot().find(".//color")
        rgb = tuple(float(x) for x in node.get("rgba", "").split()[:3])  # type: ignore[union-attr]
    except (OSError, ET.ParseError, AttributeError, ValueError):
        return GREY
    return rgb if len(rgb) == 3 and all(0 <= x <= 1 for x in rgb) else GREY  # type: ignore[return-value]


def load_mesh(folder: Path, angle: float = 0.0) -> MeshObject:
    """Object ``NNN`` of a random_urdfs folder ``.../NNN`` (``NNN.obj``, colour from ``NNN.urdf``), normalised."""
    vertices, faces = read_obj(folder / f"{folder.name}.obj")
    return MeshObject.normalised(vertices, faces, read_urdf_colour(folder / f"{folder.name}.urdf"), angle)


def _next_usable(folder: Path, ids: list[int], candidates, angle: float, split: str, count: int) -> MeshObject:
    """The next mesh of the permutation that reads (pybullet's random_urdfs/168 holds NaN vertices:
    such files are skipped, so object i stays a function of (seed, split, i) given the data)."""
    for k in candidates:
        try:
            return load_mesh(folder / f"{ids[k]:03d}", angle)
        except MetaINRError:
            continue
    raise MetaINRError(f"{folder} holds fewer than count={count} readable {split} meshes")


def mesh_objects(split: str = "train", count: int = 100, views: int = 25, resolution: int = 32, seed: int = 0,
                 rotate: bool = False, radius: float = 4.0, camera_angle_x: float = NERF_SYNTHETIC_FOV,
                 background: float = 1.0, root: str | Path | None = None,
                 elevation_range: tuple[float, float] = (0.0, 0.5 * math.pi)) -> PosedViews:
    """``count`` meshes of a split (object i: the i-th of a permutation of the split's numbers that
    ``root`` holds, seeded by ``(seed, split)``), each seen from ``views`` random cameras as in
    :func:`.box_objects.box_objects`: images (count, V, H, W, 3), poses (count, V, 4, 4), masks
    (count, V, H, W) float32, near/far = radius -+ OBJECT_RADIUS. ``root`` is the random_urdfs
    folder (default: pybullet_data's)."""
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if count < 1 or views < 1 or resolution < 2 or radius <= OBJECT_RADIUS:
        raise MetaINRError(f"need count >= 1, views >= 1, resolution >= 2 and radius > {OBJECT_RADIUS}, got "
                           f"count={count}, views={views}, resolution={resolution}, radius={radius}")
    check_pixels(views * resolution * resolution, f"mesh objects ({views} views of {resolution}x{resolution})")
    folder = Path(root) if root is not None else random_urdfs_root()
    ids = [i for i in SPLIT_IDS[split] if (folder / f"{i:03d}" / f"{i:03d}.obj").is_file()]
    if count > len(ids):
        raise MetaINRError(f"{folder} holds {len(ids)} {split} meshes (numbers {SPLIT_IDS[split].start}-"
                           f"{SPLIT_IDS[split].stop - 1}), fewer than count={count}")
    order = np.random.default_rng([seed, SPLITS.index(split), 7]).permutation(len(ids))
    focal = focal_from_fov(camera_angle_x, resolution)
    images, masks, poses = [], [], []
    candidates = iter(order)
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), 7, i])
        angle = float(rng.uniform(0.0, 2 * math.pi)) if rotate else 0.0
        obj = _next_usable(folder, ids, candidates, angle, split, count)
        cameras = orbit_cameras(views, elevation_range, radius, torch.Generator().manual_seed(int(rng.integers(2**62))),
                                dtype=torch.float64)
        rgb, mask = render_mesh_views(obj, cameras, resolution, resolution, focal, background)
        images.append(rgb)
        masks.append(mask)
        poses.append(cameras)
    return PosedViews(torch.stack(images).float(), torch.stack(poses).float(), focal, radius - OBJECT_RADIUS,
                      radius + OBJECT_RADIUS, torch.stack(masks).float(), name=f"meshes-{split}")
