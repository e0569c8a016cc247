"""3D shapes: a field ``(x, y, z) in [-1, 1]^3 -> normalised signed distance`` (identity forward model).

Values follow :mod:`.distance`: ``v = sdf_to_values(d, truncation)``, 0.5 on the surface, below
inside. A signal is a shape (:mod:`metainr.data.solids`: procedural solids with exact SDFs, or
triangle meshes); it is observed at ``samples`` points drawn as DeepSDF draws them (Park et al.
2019, section 5): 80 % near the surface, surface points drawn uniformly by area plus Gaussian noise,
half with sigma 0.05 and half with sigma 0.0158 (DeepSDF's variances 0.0025 and 0.00025), and 20 %
uniform in [-1, 1]^3 (near points pushed outside the cube are clamped onto it), shuffled. The draw
is seeded per shape, so a shape always gives the same samples.

Metrics: ``psnr`` of the values at the samples; ``iou`` of the inside regions on a ``grid``^3
lattice against the true SDF's (the batch's reference); ``chamfer`` (only when asked: numpy) between
:data:`CHAMFER_POINTS` points drawn by area on the marching-cubes surface of the predicted grid and
as many on the true surface, ``inf`` when the prediction has no surface. ``render`` shows the
field's zero level from a turntable of cameras by sphere tracing (see :meth:`SDF3DTask.render`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..data.box_objects import NERF_SYNTHETIC_FOV
from ..data.cameras import camera_rays, focal_from_fov, orbit_cameras
from ..data.images import grid_coords
from ..data.solids import Shape, file_shape, folder_meshes, procedural_solids, random_urdf_meshes
from ..errors import MetaINRError
from ..fields.config import FieldConfig
from ..functional import FieldFn, coordinate_chunks
from ..limits import check_pixels, check_signals
from ..metrics import psnr
from ..disk import atomic_write_bytes
from .base import Batch, Preset, Task, observe_batch, register_task
from ..data.surfaces import chamfer_distance, grid_surface, surface_points
from .distance import inside_iou, sdf_to_values, values_to_sdf

CHAMFER_POINTS = 10_000
"""points drawn on each surface for the Chamfer distance"""
TOKEN_POINTS, TOKEN_GROUP = 1024, 8
"""samples a hypernetwork reads per shape, and how many make one token"""
CAMERA_RADIUS = 3.0
"""distance of the turntable's cameras from the origin"""
TRACE_STEPS = 64
"""sphere-tracing steps of a turntable render"""
EVAL_ROWS = 1 << 16
"""points evaluated at once on grids and renders"""


@dataclass(frozen=True)
class SDF3DConfig(Config):
    """Shapes as signed distance fields over [-1, 1]^3, observed at DeepSDF-style samples."""

    samples: int = 4096
    """sample points per shape (80 % near the surface, 20 % uniform)"""
    truncation: float = 1.0
    """distances are clipped to +-truncation before normalising to [0, 1]"""
    grid: int = 32
    """side of the lattice that metrics and reconstructions evaluate the field on"""
    count: int = 300
    """shapes of the train split of a named dataset"""
    val_count: int = 16
    """shapes of the val and test splits of a named dataset"""
    surface_points: int = 4096
    """points drawn by area on each true surface (near-surface samples, Chamfer reference)"""
    resolution: int = 64
    """pixels a side of a turntable render"""
    seed: int = 0
    """seed of the procedural shapes and of every shape's sample draw"""

    def __post_init__(self) -> None:
        if self.samples < 8 or self.grid < 4 or min(self.count, self.val_count, self.surface_points,
                                                     self.resolution) < 1:
            raise ValueError(f"need samples >= 8, grid >= 4 and positive counts, got {self}")
        if not (math.isfinite(self.truncation) and self.truncation > 0):
            raise ValueError(f"truncation must be a positive number, got {self.truncation}")
        check_pixels(self.grid ** 3, f"a {self.grid}^3 grid")
        check_pixels(self.samples, "a shape's sample draw (--samples)")
        check_pixels(self.surface_points, "a shape's surface draw (--surface-points)")
        check_pixels(self.resolution ** 2, f"renders of {self.resolution}x{self.resolution}")


@dataclass
class Shapes:
    """Sampled shapes: what :meth:`SDF3DTask.batch` is made from (indexable like a tensor)."""

    points: Tensor
    """(n, N, 3) sample points"""
    distances: Tensor
    """(n, N) signed distances there"""
    grids: Tensor
    """(n, G, G, G) signed distances on the lattice (linspace(-1, 1, G), 'ij' order)"""
    surface: Tensor
    """(n, S, 3) points on each true surface, drawn by area"""

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> "Shapes":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Shapes(self.points[index], self.distances[index], self.grids[index], self.surface[index])


@dataclass
class SDFBatch(Batch):
    """A batch of shapes that also carries points on each true surface (for ``chamfer``)."""

    surface: Tensor | None = None
    """(B, S, 3) points on the true surfaces"""

    def signals(self, index: slice | Tensor) -> "SDFBatch":
        part = super().signals(index)
        return dataclasses.replace(part, surface=None if self.surface is None else self.surface[index])

    def to(self, device: torch.device | str) -> "SDFBatch":
        part = super().to(device)
        return dataclasses.replace(part, surface=None if self.surface is None else self.surface.to(device))


def draw_samples(shape: Shape, count: int, seed: int | Sequence[int]) -> Tensor:
    """DeepSDF's sample draw (module docstring): points (count, 3) float64 in [-1, 1]^3, shuffled."""
    rng = np.random.default_rng(seed)
    n_uniform = count // 5
    n_near = count - n_uniform
    picks = shape.surface[rng.integers(len(shape.surface), size=n_near)]
    sigma = np.where(np.arange(n_near) < n_near // 2, 0.05, 0.0158)[:, None]
    near = picks + sigma * rng.normal(size=(n_near, 3))
    points = np.concatenate([near, rng.uniform(-1, 1, (n_uniform, 3))]).clip(-1, 1)
    return torch.from_numpy(points[rng.permutation(count)])


def sample_shapes(shapes: Sequence[Shape], samples: int, grid: int, seed: int = 0) -> Shapes:
    """Every shape's samples, true SDF there and on the lattice, and its surface points."""
    coords = grid_coords(grid, grid, grid, dtype=torch.float64)
    points, dists, grids, surface = [], [], [], []
    for i, shape in enumerate(shapes):
        p = draw_samples(shape, samples, [seed, 19, i])
        points.append(p.float())
        dists.append(shape.sdf(p).float())
        grids.append(shape.sdf(coords).float().reshape(grid, grid, grid))
        surface.append(torch.from_numpy(shape.surface).float())
    return Shapes(torch.stack(points), torch.stack(dists), torch.stack(grids), torch.stack(surface))


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, obj: bool) -> bytes:
    """A triangle mesh as ASCII OBJ (``obj``) or binary little-endian PLY."""
    if obj:
        lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
        return ("\n".join(lines) + "\n").encode()
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\nproperty float x\n"
              f"property float y\nproperty float z\nelement face {len(faces)}\nproperty list uchar int "
              "vertex_indices\nend_header\n").encode()
    face_rows = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face_rows["n"], face_rows["i"] = 3, faces
    return header + np.asarray(vertices, dtype="<f4").tobytes() + face_rows.tobytes()


@register_task
class SDF3DTask(Task):
    """Shapes (``Shapes``) observed at DeepSDF-style samples; PSNR, IoU and Chamfer per shape."""

    name = "sdf3d"
    Config = SDF3DConfig
    # a small SIREN regressing values around 0.5; Meta-SGD: in equal trials (120 CPU-s each, 1 thread,
    # 12 held-out solids) its learned step sizes reached 35.5 dB / Chamfer 0.033 after 10 steps,
    # MAML's fixed 1e-2 33.4 dB / 0.048
    preset = Preset(field=FieldConfig(kind="siren", width=64, depth=4, w0=15.0, w0_first=15.0, output_offset=0.5),
                    learner="metasgd", learner_options={"inner_steps": 3, "inner_lr": 1e-2},
                    train={"outer_lr": 3e-3, "batch_size": 4}, data="shapes")

    @property
    def in_dim(self) -> int:
        return 3

    @property
    def out_dim(self) -> int:
        return 1

    # -- metrics and reconstructions ----------------------------------------------------------------
    def _grid_values(self, field_fn: FieldFn, params: Mapping[str, Tensor], count: int) -> Tensor:
        """Field values (B, G, G, G) on the lattice, params name -> (B, *shape)."""
        g = self.config.grid
        like = next(iter(params.values()))
        coords = grid_coords(g, g, g, device=like.device, dtype=like.dtype)
        probe = Batch(coords, coords.new_zeros(count, coords.shape[0], 1))
        return observe_batch(self, field_fn, params, probe, max(1, EVAL_ROWS // count))[..., 0].reshape(count, g, g, g)

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr`` on the samples; ``iou`` and ``chamfer`` on the lattice when the batch has a reference."""
        out = {}
        if "psnr" in names:
            out["psnr"] = psnr(observe_batch(self, field_fn, params, batch), batch.values)
        if batch.reference is None or not {"iou", "chamfer"} & set(names):
            return out
        grids = self._grid_values(field_fn, params, len(batch))
        if "iou" in names:
            out["iou"] = inside_iou(grids, batch.reference)
        if "chamfer" in names:
            surface = getattr(batch, "surface", None)
            out["chamfer"] = torch.tensor([self._chamfer(grids[b], batch.reference[b], None if surface is None
                                                         else surface[b]) for b in range(len(batch))],
                                          dtype=grids.dtype, device=grids.device)
        return out

    def _chamfer(self, pred: Tensor, true: Tensor, surface: Tensor | None) -> float:
        mesh = grid_surface(pred.detach().float().cpu().numpy())
        if mesh is None:
            return math.inf
        if surface is None:
            ref = grid_surface(true.float().cpu().numpy())
            if ref is None:
                return math.inf
            surface_true = surface_points(*ref, CHAMFER_POINTS, seed=1)
        else:
            surface_true = surface.float().cpu().numpy()
        return chamfer_distance(surface_points(*mesh, CHAMFER_POINTS, seed=0), surface_true)

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Predicted value grids (B, G, G, G) on the lattice."""
        return self._grid_values(field_fn, params, len(batch))

    # -- data ----------------------------------------------------------------------------------------
    def batch(self, signals: Shapes) -> SDFBatch:
        """Every sample of every shape (B, N, 3) -> values (B, N, 1); reference: the true value grids."""
        if not isinstance(signals, Shapes):
            raise ValueError(f"sdf3d signals must be Shapes, got {type(signals).__name__}")
        t = self.config.truncation
        return SDFBatch(signals.points, sdf_to_values(signals.distances, t)[..., None],
                        reference=sdf_to_values(signals.grids, t), surface=signals.surface)

    def load(self, source: str, split: str) -> Shapes:
        """``shapes`` (procedural solids), ``meshes`` (pybullet's random_urdfs) or a folder of
        .obj / .ply / .stl files (every file, whatever the split)."""
        cfg = self.config
        count = cfg.count if split == "train" else cfg.val_count
        if source in ("shapes", "meshes"):
            check_signals(count, f"{source} ({split})")
            make = procedural_solids if source == "shapes" else random_urdf_meshes
            shapes = make(split, count, cfg.surface_points, seed=cfg.seed)
        else:
            shapes = folder_meshes(source, cfg.surface_points)
        return sample_shapes(shapes, cfg.samples, cfg.grid, cfg.seed)

    def read(self, path: str | Path, reference: str | Path | None = None) -> SDFBatch:
        """One mesh file (.obj / .ply / .stl), normalised, as a batch of one (``reference`` unused)."""
        cfg = self.config
        return self.batch(sample_shapes([file_shape(path, cfg.surface_points)], cfg.samples, cfg.grid, cfg.seed))

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """The marching-cubes surface (level 0.5) of a value grid (G, G, G) (outward faces: skimage's order),
        as binary PLY (or ASCII OBJ when ``path`` ends in .obj), written atomically."""
        out = self.output_paths(path)[0]
        mesh = grid_surface(signal.detach().float().cpu().numpy())
        if mesh is None:
            raise MetaINRError(f"nothing written to {out}: the field has no surface (its values never cross 0.5)")
        vertices, faces = mesh
        atomic_write_bytes(out, mesh_bytes(vertices, faces, out.suffix.lower() == ".obj"))
        return [out]

    def output_paths(self, path: str | Path) -> list[Path]:
        path = Path(path)
        return [path if path.suffix.lower() in (".ply", ".obj") else path.with_suffix(".ply")]

    def tokens(self, batch: Batch) -> Tensor:
        """The first 1024 samples (x, y, z, value), 8 consecutive ones a token: (B, 128, 32)."""
        rows = torch.cat([batch.query, batch.values], dim=-1)
        if rows.dim() != 3:
            raise ValueError("sdf3d tokens need per-shape samples (B, N, 3)")
        p = min(TOKEN_POINTS, rows.shape[1]) // TOKEN_GROUP * TOKEN_GROUP
        return rows[:, :p].reshape(rows.shape[0], p // TOKEN_GROUP, TOKEN_GROUP * rows.shape[-1])

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, field_fn: FieldFn, params: Mapping[str, Tensor], n_views: int) -> Tensor:
        """(n_views, R, R, 3) renders in [0, 1] of ONE shape's surface (the field's level 0.5).

        Cameras: azimuths ``2 pi k / n_views`` at 45 degrees of elevation, CAMERA_RADIUS from the
        origin, NeRF-synthetic's field of view, R = ``resolution``. Each ray is clipped to the
        [-1, 1]^3 cube and sphere-traced: TRACE_STEPS steps of the distance the field gives
        (values_to_sdf of its value); a ray hits where that distance falls under half a lattice
        cell inside the cube. Hits are shaded Lambertian (grey albedo, 0.3 ambient, a light from
        the camera and above) on normals from central differences of the field; misses are white.
        """
        cfg = self.config
        if n_views < 1:
            raise ValueError(f"a turntable needs at least one view, got {n_views}")
        r = cfg.resolution
        check_pixels(n_views * r * r, f"{n_views} views of {r}x{r}")
        like = next(iter(params.values()))
        c2w = orbit_cameras(n_views, radius=CAMERA_RADIUS, fixed=True, dtype=like.dtype, device=like.device)
        origins, dirs = camera_rays(c2w, r, r, focal_from_fov(NERF_SYNTHETIC_FOV, r))
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        sdf = lambda p: values_to_sdf(field_fn(params, p)[..., 0], cfg.truncation)  # noqa: E731
        colour = torch.ones_like(origins)
        for rows in coordinate_chunks(origins.shape[0], max(1, EVAL_ROWS // 8)):
            colour[rows] = self._trace(sdf, origins[rows], dirs[rows])
        return colour.reshape(n_views, r, r, 3)

    def _trace(self, sdf, o: Tensor, d: Tensor) -> Tensor:
        safe = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t0, t1 = (-1 - o) / safe, (1 - o) / safe
        near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0)
        far = torch.maximum(t0, t1).amin(dim=-1)
        t = near.clone()
        eps = 1.0 / self.config.grid
        for _ in range(TRACE_STEPS):
            p = (o + t[:, None] * d).clamp(-1, 1)
            t = torch.minimum(t + sdf(p).clamp(min=-eps), far)
        p = (o + t[:, None] * d).clamp(-1, 1)
        hit = (near < far) & (sdf(p) < eps) & (t < far)
        h = 0.5 * eps
        eye = torch.eye(3, dtype=o.dtype, device=o.device) * h
        normal = torch.stack([sdf(p + eye[k]) - sdf(p - eye[k]) for k in range(3)], dim=-1)
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        light = -d + d.new_tensor([0.0, 0.0, 0.6])
        light = light / light.norm(dim=-1, keepdim=True)
        shade = 0.8 * (0.3 + 0.7 * (normal * light).sum(-1).clamp(min=0))
        return torch.where(hit[:, None], shade[:, None].expand(-1, 3), torch.ones_like(o))
