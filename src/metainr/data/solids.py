"""3D shapes as signed distance functions: procedural solids with exact SDFs, and triangle meshes.

Convention (that of :mod:`metainr.tasks.distance`, which data does not import): a signed distance is in coordinate units over
[-1, 1]^3, NEGATIVE inside.

- Procedural solids (:func:`procedural_solids`): a sphere, box, rounded box, torus, capsule or
  capped cylinder of random size, turned by a uniformly random rotation and moved by a random
  offset, so that it lies within :data:`SOLID_RADIUS` of the origin. Each primitive's SDF is exact
  (rotations and translations keep distances), so one primitive's SDF is exact everywhere. A
  fraction :data:`UNION_FRACTION` of the solids are unions of two primitives, whose SDF is the
  minimum of the two: exact outside the union, but inside only a bound (its magnitude is at most
  the true distance to the surface, smaller where the parts overlap).
- Meshes (:func:`load_mesh_file`, :func:`folder_meshes`, :func:`random_urdf_meshes`): triangle
  meshes read with trimesh (``pip install 'metainr[meshes]'``), centred (bounding-box centre at the
  origin) and scaled so that the farthest vertex lies at :data:`SOLID_RADIUS`. Their SDF
  (:func:`mesh_sdf`) is computed here in torch: the exact distance to the nearest triangle, signed
  by the generalised winding number (inside where it is above 1/2), which is robust to small holes.
  (``trimesh.proximity.signed_distance`` gives the same values, positive inside, but measured 2.4 s
  for 20k points on a 474-face random_urdfs mesh, too slow for a 32^3 grid per shape.)

A :class:`Shape` is what a task samples: an SDF callable and points on its surface drawn by area.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_signals
from .files import folder_files
from .images import grid_coords
from .meshes import MAX_FACES, SPLIT_IDS, random_urdfs_root

SOLID_RADIUS = 0.8
"""every shape lies within this distance of the origin (inside [-1, 1]^3 with a margin)"""
PRIMITIVES = ("sphere", "box", "rounded_box", "torus", "capsule", "cylinder")
"""the procedural primitives (exact SDFs)"""
UNION_FRACTION = 0.3
"""fraction of procedural solids that are the union of two primitives"""
SPLITS = ("train", "val", "test")
MESH_SUFFIXES = (".obj", ".ply", ".stl")
"""mesh files a folder may hold"""
PAIRS = 1 << 21
"""point-triangle pairs evaluated at once by :func:`mesh_sdf` (bounds its memory)"""
MESH_EXTRA = "pip install 'metainr[meshes]'"

SDF = Callable[[Tensor], Tensor]
"""``sdf(points (M, 3)) -> signed distances (M,)``, negative inside"""


# -- primitives --------------------------------------------------------------------------------------
def _length(x: Tensor) -> Tensor:
    return x.norm(dim=-1)


def _box(p: Tensor, half: Tensor) -> Tensor:
    q = p.abs() - half
    return _length(q.clamp(min=0)) + q.amax(dim=-1).clamp(max=0)


def primitive_sdf(kind: str, size: Sequence[float], p: Tensor) -> Tensor:
    """Exact SDF (M,) of a primitive centred at the origin, at points p (M, 3).

    sphere (r); box (hx, hy, hz half-extents); rounded_box (hx, hy, hz, corner radius r <= min h);
    torus (R, r) around z; capsule (h, r): segment z in [-h, h] thickened by r; cylinder (r, h):
    radius r around z, z in [-h, h], capped.
    """
    s = [float(v) for v in size]
    if kind == "sphere":
        return _length(p) - s[0]
    if kind == "box":
        return _box(p, p.new_tensor(s[:3]))
    if kind == "rounded_box":
        return _box(p, p.new_tensor(s[:3]) - s[3]) - s[3]
    if kind == "torus":
        q = torch.stack([_length(p[..., :2]) - s[0], p[..., 2]], dim=-1)
        return _length(q) - s[1]
    if kind == "capsule":
        q = p.clone()
        q[..., 2] = p[..., 2] - p[..., 2].clamp(-s[0], s[0])
        return _length(q) - s[1]
    if kind == "cylinder":
        d = torch.stack([_length(p[..., :2]) - s[0], p[..., 2].abs() - s[1]], dim=-1)
        return d.amax(dim=-1).clamp(max=0) + _length(d.clamp(min=0))
    raise ValueError(f"unknown primitive {kind!r}; choose from {', '.join(PRIMITIVES)}")


def _bound_radius(kind: str, s: Sequence[float]) -> float:
    """Radius of a ball around the origin holding the primitive."""
    if kind == "sphere":
        return s[0]
    if kind in ("box", "rounded_box"):
        return math.sqrt(sum(v * v for v in s[:3]))
    if kind == "torus":
        return s[0] + s[1]
    if kind == "capsule":
        return s[0] + s[1]
    return math.hypot(s[0], s[1])


@dataclass(frozen=True)
class Primitive:
    """A primitive turned by ``rotation`` and moved by ``offset``: world = R @ local + offset."""

    kind: str
    """one of :data:`PRIMITIVES`"""
    size: tuple[float, ...]
    """its sizes (see :func:`primitive_sdf`)"""
    rotation: tuple[tuple[float, ...], ...]
    """3x3 rotation matrix R"""
    offset: tuple[float, float, float]
    """translation"""

    def sdf(self, points: Tensor) -> Tensor:
        """Exact signed distances (M,) at world points (M, 3)."""
        r = points.new_tensor(self.rotation)
        local = (points - points.new_tensor(self.offset)) @ r  # R^T (p - t), as rows
        return primitive_sdf(self.kind, self.size, local)


@dataclass(frozen=True)
class Solid:
    """A union of primitives; its SDF is their minimum (exact outside, a bound inside)."""

    parts: tuple[Primitive, ...]

    def sdf(self, points: Tensor) -> Tensor:
        return torch.stack([p.sdf(points) for p in self.parts]).amin(dim=0)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (3, 3) (a normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def random_primitive(rng: np.random.Generator, reach: float = SOLID_RADIUS, shift: float = 0.15) -> Primitive:
    """A random primitive with a random rotation and an offset of at most ``shift`` per axis,
    scaled down where needed so that it lies within ``reach`` of the origin."""
    kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
    u = lambda lo, hi, n=1: list(rng.uniform(lo, hi, n))  # noqa: E731
    size = {"sphere": lambda: u(0.35, 0.7), "box": lambda: u(0.2, 0.55, 3),
            "rounded_box": lambda: (b := u(0.2, 0.55, 3)) + [rng.uniform(0.05, 0.6) * min(b)],
            "torus": lambda: (big := u(0.3, 0.55)) + [rng.uniform(0.1, 0.5) * big[0]],
            "capsule": lambda: u(0.1, 0.45) + u(0.12, 0.3), "cylinder": lambda: u(0.15, 0.5) + u(0.15, 0.5)}[kind]()
    offset = rng.uniform(-shift, shift, 3)
    room = reach - float(np.linalg.norm(offset))
    scale = min(1.0, room / _bound_radius(kind, size))
    return Primitive(kind, tuple(float(v) * scale for v in size), tuple(map(tuple, random_rotation(rng).tolist())),
                     tuple(float(v) for v in offset))


def random_solid(rng: np.random.Generator) -> Solid:
    """One primitive, or (with probability :data:`UNION_FRACTION`) the union of two further apart."""
    if rng.random() < UNION_FRACTION:
        return Solid((random_primitive(rng, shift=0.3), random_primitive(rng, shift=0.3)))
    return Solid((random_primitive(rng),))


# -- meshes --------------------------------------------------------------------------------------------
def _trimesh():
    try:
        import trimesh
    except ImportError:
        raise MetaINRError(f"reading meshes needs trimesh: {MESH_EXTRA}") from None
    return trimesh


MAX_MESH_BYTES = 256 * MAX_FACES
"""the largest mesh file read (checked before parsing): 256 bytes a triangle of MAX_FACES covers ASCII
OBJ / PLY with normals and texture coordinates"""


def load_mesh_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of a .obj / .ply / .stl file (via
    trimesh). A missing, unreadable or empty file, one with a non-finite vertex or over
    :data:`metainr.data.meshes.MAX_FACES` triangles (or :data:`MAX_MESH_BYTES` bytes, checked before
    parsing) is a one-line MetaINRError naming it."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "mesh file")
    if path.stat().st_size > MAX_MESH_BYTES:
        raise MetaINRError(f"mesh file {path} has {path.stat().st_size:,} bytes, over the {MAX_MESH_BYTES:,} of "
                           "metainr.data.solids.MAX_MESH_BYTES (256 bytes for each of MAX_FACES triangles)")
    trimesh = _trimesh()
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
        v = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
        f = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    except MetaINRError:
        raise
    except Exception as err:  # trimesh raises many kinds on corrupt files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MetaINRError(f"cannot read mesh file {path}: {msg}") from None
    if len(f) == 0 or len(v) == 0:
        raise MetaINRError(f"mesh file {path} has no triangles")
    if len(f) > MAX_FACES or len(v) > MAX_FACES:
        raise MetaINRError(f"mesh file {path} has more than {MAX_FACES:,} triangles or vertices, over "
                           "metainr.data.meshes.MAX_FACES")
    if not np.isfinite(v).all() or f.min() < 0 or f.max() >= len(v):
        raise MetaINRError(f"mesh file {path} has a non-finite vertex or a face out of range")
    return v, f


def normalise_mesh(vertices: np.ndarray, path: str | Path = "mesh") -> np.ndarray:
    """Vertices with the bounding-box centre at the origin, the farthest at :data:`SOLID_RADIUS`."""
    v = vertices - 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    size = float(np.linalg.norm(v, axis=1).max())
    if not size > 0:
        raise MetaINRError(f"{path}: the mesh has zero size")
    return v * (SOLID_RADIUS / size)


SAMPLE_SPACING = 0.04
"""spacing of the lattice points that stand for each triangle in :func:`mesh_sdf`'s search tree"""


def _lattice_points(tri: np.ndarray, spacing: float = SAMPLE_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """Points (P, 3) on a barycentric lattice over each triangle (n subdivisions, n from its longest
    edge and ``spacing``; corners included) and the triangle each belongs to (P,)."""
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1).max(axis=1)
    subdivisions = np.clip(np.ceil(edges / spacing), 1, 32).astype(int)
    points, owners = [], []
    for n in np.unique(subdivisions):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        bary = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1) / n  # (L, 3)
        which = np.nonzero(subdivisions == n)[0]
        points.append(np.einsum("kj,fjd->fkd", bary, tri[which]).reshape(-1, 3))
        owners.append(np.repeat(which, len(bary)))
    return np.concatenate(points), np.concatenate(owners)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """np.cross for (..., 3) arrays, without its overhead."""
    return np.stack([u[..., 1] * v[..., 2] - u[..., 2] * v[..., 1], u[..., 2] * v[..., 0] - u[..., 0] * v[..., 2],
                     u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]], axis=-1)


def triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Euclidean distances (...,) of points p (..., 3) to triangles tri (..., 3, 3): to the plane
    where the point projects inside the triangle, else to the nearest of its edges."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    n = _cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=-1)
    inside = norm > 0
    edge = np.full(p.shape[:-1], np.inf)
    for e0, e1 in ((a, b), (b, c), (c, a)):
        e = e1 - e0
        inside &= (_cross(e, p - e0) * n).sum(-1) >= 0
        t = np.clip(((p - e0) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-300), 0, 1)
        edge = np.minimum(edge, np.linalg.norm(p - e0 - t[..., None] * e, axis=-1))
    plane = np.abs(((p - a) * n).sum(-1)) / np.maximum(norm, 1e-300)
    return np.where(inside, plane, edge)


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: Tensor) -> Tensor:
    """Generalised winding numbers (M,) of a mesh at points (M, 3) (1 inside a closed mesh, 0
    outside): the sum of the triangles' solid angles (Van Oosterom & Strackee) over 4 pi."""
    tri = torch.as_tensor(vertices[faces], dtype=points.dtype, device=points.device)  # (F, 3, 3)
    out = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    chunk = max(1, PAIRS // tri.shape[0])
    for s in range(0, points.shape[0], chunk):
        ra, rb, rc = (points[s:s + chunk, None, :] - tri[None, :, k] for k in range(3))  # (m, F, 3)
        la, lb, lc = ra.norm(dim=-1), rb.norm(dim=-1), rc.norm(dim=-1)
        num = (ra * torch.linalg.cross(rb, rc)).sum(-1)
        den = la * lb * lc + (ra * rb).sum(-1) * lc + (rb * rc).sum(-1) * la + (rc * ra).sum(-1) * lb
        out[s:s + chunk] = torch.atan2(num, den).sum(dim=1) / (2 * math.pi)
    return out


def mesh_sdf(vertices: np.ndarray, faces: np.ndarray, points: Tensor, candidates: int = 8) -> Tensor:
    """Signed distances (M,) of points (M, 3) to a triangle mesh, negative inside.

    Distance: exact to the nearest of the triangles owning the ``candidates`` nearest lattice
    points (:func:`_lattice_points`, :data:`SAMPLE_SPACING` apart) in a k-d tree; the nearest
    triangle is among them unless a point's nearest lattice points all lie on other triangles
    (tests/test_sdf3d.py checks the result against trimesh's closest points). Sign: inside
    where the generalised winding number (:func:`winding_numbers`) is above 1/2, which is robust
    to small holes; computed only for points within the mesh's bounding ball (the others are
    outside). dtype and device of ``points``.
    """
    from scipy.spatial import cKDTree

    tri = vertices[faces]  # (F, 3, 3)
    samples, owner = _lattice_points(tri)
    p = points.detach().cpu().double().numpy()
    k = min(candidates, len(samples))
    _, idx = cKDTree(samples).query(p, k=k)
    cand = owner[idx.reshape(len(p), k)]  # (M, k) triangle numbers (repeats are harmless)
    dist = triangle_distance(p[:, None, :], tri[cand]).min(axis=1)
    sign = np.ones(len(p))
    near = np.linalg.norm(p, axis=1) <= np.linalg.norm(vertices, axis=1).max() * (1 + 1e-9)
    if near.any():
        inside = winding_numbers(vertices, faces, torch.from_numpy(p[near]).float()).abs() > 0.5
        sign[near] = np.where(inside.numpy(), -1.0, 1.0)
    return torch.from_numpy(sign * dist).to(dtype=points.dtype, device=points.device)


# -- shapes --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What a task samples: an SDF and points drawn by area on its surface."""

    sdf: SDF
    """signed distances of points (M, 3) (float64 in, float64 out)"""
    surface: np.ndarray
    """(S, 3) points on the surface, drawn uniformly by area"""
    name: str = ""


def solid_shape(solid: Solid, surface_count: int, seed: int, grid: int = 48) -> Shape:
    """A procedural solid's :class:`Shape`: surface points drawn by area on the marching-cubes mesh
    of its SDF on a ``grid``^3 lattice, then projected onto the exact surface (p - d grad d, the
    gradient by central differences)."""
    from .surfaces import grid_surface, surface_points

    coords = grid_coords(grid, grid, grid, dtype=torch.float64)
    mesh = grid_surface(solid.sdf(coords).reshape(grid, grid, grid).numpy(), level=0.0)
    if mesh is None:
        raise ValueError("a procedural solid has no surface inside [-1, 1]^3")
    p = torch.from_numpy(surface_points(*mesh, surface_count, seed=seed))
    h = 1e-5
    eye = torch.eye(3, dtype=torch.float64) * h
    grad = torch.stack([(solid.sdf(p + eye[k]) - solid.sdf(p - eye[k])) / (2 * h) for k in range(3)], dim=-1)
    p = p - solid.sdf(p)[:, None] * grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return Shape(solid.sdf, p.numpy(), name=" + ".join(q.kind for q in solid.parts))


def mesh_shape(vertices: np.ndarray, faces: np.ndarray, surface_count: int, seed: int, name: str = "") -> Shape:
    """A normalised mesh's :class:`Shape` (SDF: :func:`mesh_sdf`)."""
    from .surfaces import surface_points

    surface = surface_points(vertices, faces, surface_count, seed=seed)
    return Shape(lambda p: mesh_sdf(vertices, faces, p), surface, name)


def procedural_solids(split: str, count: int, surface_count: int = 4096, seed: int = 0) -> list[Shape]:
    """``count`` random solids of a split; solid i is a function of (seed, split, i) only."""
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_signals(count, f"procedural solids ({split})")
    shapes = []
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), 13, i])
        shapes.append(solid_shape(random_solid(rng), surface_count, int(rng.integers(2**31))))
    return shapes


def file_shape(path: str | Path, surface_count: int = 4096, seed: int = 0) -> Shape:
    """One mesh file, normalised, as a :class:`Shape`."""
    v, f = load_mesh_file(path)
    return mesh_shape(normalise_mesh(v, path), f, surface_count, seed, name=str(path))


def folder_meshes(folder: str | Path, surface_count: int = 4096) -> list[Shape]:
    """Every .obj / .ply / .stl file of a folder (sorted by name), normalised."""
    files = folder_files(folder, MESH_SUFFIXES, "meshes (nor a dataset name: shapes, meshes)")
    return [file_shape(p, surface_count, seed=i) for i, p in enumerate(files)]


def random_urdf_meshes(split: str, count: int, surface_count: int = 4096, seed: int = 0) -> list[Shape]:
    """``count`` of pybullet's random_urdfs meshes of a split (a seeded permutation of the split's
    numbers, see :data:`metainr.data.meshes.SPLIT_IDS`; unreadable ones are skipped)."""
    if split not in SPLITS:
        raise MetaINRError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_signals(count, f"meshes ({split})")
    _trimesh()
    root = random_urdfs_root()
    ids = [i for i in SPLIT_IDS[split] if (root / f"{i:03d}" / f"{i:03d}.obj").is_file()]
    order = np.random.default_rng([seed, SPLITS.index(split), 17]).permutation(len(ids))
    shapes: list[Shape] = []
    for k in order:
        if len(shapes) == count:
            break
        try:
            path = root / f"{ids[k]:03d}" / f"{ids[k]:03d}.obj"
            shapes.append(file_shape(path, surface_count, seed=int(ids[k])))
        except MetaINRError:  # e.g. random_urdfs/168 holds NaN vertices
            continue
    if len(shapes) < count:
        raise MetaINRError(f"{root} holds fewer than count={count} readable {split} meshes")
    return shapes
