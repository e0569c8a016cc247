"""3D view synthesis: a radiance field ``(x, y, z) -> (density, rgb)`` seen through posed views,
observed by volume rendering (:mod:`.volume_rendering`); rays and batches: :mod:`.views_batches`.

Signals are objects, each a set of posed views (:class:`metainr.data.cameras.PosedViews` of n
objects: images (n, V, H, W, 3), poses (n, V, 4, 4)); every object has its own cameras, so query
rows are per signal: ray segments ``(start, extent)`` (B, N, 6) with their colours (B, N, 3) as
values. What each batch holds:

- ``train_batch``: ``rays`` random pixels per object drawn from all its views (learnit's random ray
  batches), their segments jittered by a random fraction of a sample bin; context None (inner loops
  and outer losses see the same rays: Reptile's recipe). With ``inner_views`` = k > 0 the query
  starts with ``rays`` pixels of only the object's first k views (after a random per-step view
  order) and the context is those rows, while outer losses (MAML family) score every row: a
  few-view inner loop, scored on all views.
- ``batch``: every pixel of every view, in view order.
- ``validation_batches`` / ``read``: every pixel of the first ``input_views`` views only (what a
  test-time fit from few views sees).

In every batch ``reference`` holds the object's packed views (B, V, H, W, 9): per pixel its segment
and colour, in the batch's view order (shuffled in training batches). Its first ``input_views``
views are the input views (what TransINR's tokens read); the others are the novel views that
:meth:`ViewsTask.metrics` renders and scores and :meth:`ViewsTask.reconstruct` returns (every view
when an object has no others, e.g. a file with one view).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..config import Config
from ..data.box_objects import KINDS, NERF_SYNTHETIC_FOV, box_objects
from ..data.cameras import PosedViews, camera_rays, focal_from_fov, orbit_cameras
from ..data.meshes import mesh_objects
from ..data.nerf_synthetic import FAR, NEAR, nerf_synthetic_objects, read_scene, transforms_file
from ..errors import MetaINRError
from ..fields.config import FieldConfig
from ..functional import FieldFn
from ..limits import check_pixels, check_side, check_signals
from ..metrics import psnr, ssim
from ..disk import atomic_write_bytes
from .base import Batch, Preset, Task, observe_batch, register_task
from .image import auto_patch_size
from .views_batches import (grid_png, jitter_rows, pack_views, random_rows, scored_views, shuffle_views,
                            view_tokens)
from .volume_rendering import DENSITIES, render_query

RENDER_POINTS = 1 << 18
"""samples alive at once (over the signals of a batch) when metrics render whole views"""


@dataclass(frozen=True)
class ViewsConfig(Config):
    """Objects seen in posed views, volume-rendered from a field (x, y, z) -> (density, rgb)."""

    resolution: int = 32
    """view width in pixels: procedural views are rendered at it, files resized to it"""
    views: int = 25
    """chairs / tables / photos / meshes: posed views per object"""
    input_views: int = 1
    """views a test-time (and validation) fit sees, each object's first ones; metrics score the others"""
    rays: int = 256
    """meta-training: random rays per object per step, drawn from all its views"""
    inner_views: int = 0
    """meta-training: inner loops see rays of only this many views per object (0: the rays of all views)"""
    n_samples: int = 32
    """samples per ray, at the midpoints of equal bins between near and far"""
    jitter: bool = True
    """meta-training: shift each ray's samples by a random fraction of a bin (stratified sampling)"""
    density: str = "softplus"
    """density from the field's channel 0: softplus | relu (relu densities died in Reptile trials here)"""
    background: float = 1.0
    """background grey level (1 white, 0 black): views are composited on it and rendered over it"""
    near: float = 0.0
    """depth where rays start (0: the data's: chairs/tables 2.8, NeRF-synthetic folders 2)"""
    far: float = 0.0
    """depth where rays end (0: the data's: chairs/tables 5.2, NeRF-synthetic folders 6)"""
    patch_size: int = 0
    """side of the patches a hypernetwork reads (0: the smallest giving at most 8 patches a side)"""
    rotate: bool = False
    """chairs / tables / meshes: turn each object by a random angle about the vertical axis"""
    count: int = 500
    """chairs / tables / photos / meshes: training objects (photos: lightings of one chair; meshes: at most 800)"""
    val_count: int = 4
    """chairs / tables / photos / meshes: validation (and test) objects (meshes: at most 100)"""

    def __post_init__(self) -> None:
        if min(self.resolution, self.views, self.input_views, self.rays, self.count, self.val_count) < 1:
            raise ValueError("resolution, views, input_views, rays, count and val_count must be >= 1")
        if self.n_samples < 2 or self.inner_views < 0 or self.patch_size < 0:
            raise ValueError(f"need n_samples >= 2, inner_views >= 0 and patch_size >= 0, got {self.n_samples}, "
                             f"{self.inner_views}, {self.patch_size}")
        if self.density not in DENSITIES:
            raise ValueError(f"density must be one of {DENSITIES}, got {self.density!r}")
        if not 0.0 <= self.background <= 1.0 or self.near < 0 or self.far < 0 or (0 < self.far <= self.near):
            raise ValueError(f"need background in [0, 1], near, far >= 0 and near < far when both are set; got "
                             f"{self.background}, {self.near}, {self.far}")
        check_side(self.resolution, "a view of this resolution")
        check_pixels(self.views * self.resolution ** 2, f"an object of {self.views} views of {self.resolution}x"
                     f"{self.resolution}")
        check_pixels(self.rays * self.n_samples, f"{self.rays} rays x {self.n_samples} samples")
        check_signals(max(self.count, self.val_count), "chairs / tables (count)")


@dataclass
class ViewsBatch(Batch):
    """A batch of views with the depth range its segments span (what :meth:`ViewsTask.settled` reads)."""

    near: float = 0.0
    """depth (world units along the unit ray) where the segments start"""
    far: float = 0.0
    """depth where the segments end"""


@register_task
class ViewsTask(Task):
    """Objects in posed views (see the module docstring); metrics score novel views."""

    name = "views"
    Config = ViewsConfig
    # learnit's "simple NeRF" (ReLU MLP on a positional encoding) at DESIGN's calibration size, and
    # Reptile on random ray batches as learnit's ShapeNet recipe, with settings measured here (32 px
    # chairs, 90 s trials on 1 thread, novel views of held-out chairs from one view): Adam inner
    # steps at 5e-3..1e-2 beat 2e-3 (16.3 vs 15.3 dB before fitting) and SGD at lr 1 (15.8); K=8 on
    # 256 rays, K=16 on 128 and K=4 on 512 were within 0.1 dB after 32 steps (17.8), so the cheapest
    # per step. Random init: Adam 1e-3 was the best of 1e-3 / 5e-3 / 2e-2 from one view.
    preset = Preset(field=FieldConfig(kind="pe", width=128, depth=4, n_freqs=6, output_offset=0.0),
                    learner="reptile", learner_options={"inner_steps": 8, "inner_lr": 1e-2, "inner_optimizer": "adam"},
                    train={"outer_lr": 1e-3, "batch_size": 2, "eval_steps": 16}, data="chairs",
                    holdout=0.1)  # a fit from few views overfits them (held-out stopping, metainr.fit)

    @property
    def in_dim(self) -> int:
        return 3

    @property
    def out_dim(self) -> int:
        return 4

    # -- the forward model, metrics ----------------------------------------------------------------
    def observe(self, field_fn: FieldFn, params: Mapping[str, Tensor], query: Tensor) -> Tensor:
        """ONE object's ray segments (R, 6) -> colours (R, 3): ``n_samples`` midpoints of t in
        [0, 1] along each, composited over the background (no randomness: vmap-safe)."""
        cfg = self.config
        return render_query(field_fn, params, query, 0.0, 1.0, cfg.n_samples, cfg.background, density=cfg.density)

    def _render(self, field_fn: FieldFn, params: Mapping[str, Tensor], rows: Tensor) -> Tensor:
        """Colours (B, N, 3) of segments (B, N, 6) per object, params name -> (B, *shape)."""
        chunk = max(1, RENDER_POINTS // (rows.shape[0] * self.config.n_samples))
        return observe_batch(self, field_fn, params, Batch(rows, rows[..., :3]), chunk)

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """Per-object ``psnr`` over every pixel of its novel views (see :func:`scored_views`) and
        ``ssim`` (the mean over those views, sides >= 11); the observations when the batch has no
        reference."""
        if batch.reference is None:
            pred = observe_batch(self, field_fn, params, batch)
            return {"psnr": psnr(pred, batch.values)} if "psnr" in names else {}
        views = scored_views(batch.reference, self.config.input_views)
        b, v, h, w, _ = views.shape
        rows = views.reshape(b, v * h * w, 9)
        pred = self._render(field_fn, params, rows[..., :6])
        out = {}
        if "psnr" in names:
            out["psnr"] = psnr(pred, rows[..., 6:])
        if "ssim" in names and min(h, w) >= 11:
            per_view = ssim(pred.reshape(b * v, h, w, 3), rows[..., 6:].reshape(b * v, h, w, 3))
            out["ssim"] = per_view.reshape(b, v).mean(dim=1)
        return out

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """The novel views rendered (B, V', H, W, 3) in [0, 1] (the observations (B, N, 3) when
        the batch has no reference)."""
        if batch.reference is None:
            return observe_batch(self, field_fn, params, batch).clamp(0, 1)
        views = scored_views(batch.reference, self.config.input_views)
        b, v, h, w, _ = views.shape
        return self._render(field_fn, params, views.reshape(b, -1, 9)[..., :6]).clamp(0, 1).reshape(b, v, h, w, 3)

    def render(self, field_fn: FieldFn, params: Mapping[str, Tensor], n_views: int) -> Tensor:
        """(n_views, H, W, 3) renders of ONE object's field from a turntable of cameras: azimuths
        ``2 pi k / n_views`` at 45 degrees of elevation, on the sphere halfway between near and far
        (where chairs / tables and NeRF-synthetic scenes put their cameras), NeRF-synthetic's field
        of view, ``resolution`` pixels a side."""
        cfg = self.config
        if n_views < 1:
            raise ValueError(f"a turntable needs at least one view, got {n_views}")
        check_pixels(n_views * cfg.resolution ** 2, f"{n_views} views of {cfg.resolution}x{cfg.resolution}")
        like = next(iter(params.values()))
        near, far = cfg.near or NEAR, cfg.far or FAR
        c2w = orbit_cameras(n_views, radius=0.5 * (near + far), fixed=True, dtype=like.dtype, device=like.device)
        origins, directions = camera_rays(c2w, cfg.resolution, cfg.resolution,
                                          focal_from_fov(NERF_SYNTHETIC_FOV, cfg.resolution))
        rows = torch.cat([origins + near * directions, (far - near) * directions], dim=-1).reshape(1, -1, 6)
        pred = self._render(field_fn, {k: v[None] for k, v in params.items()}, rows)
        return pred.clamp(0, 1).reshape(n_views, cfg.resolution, cfg.resolution, 3)

    # -- batches ------------------------------------------------------------------------------------
    def depth_range(self, signals: PosedViews) -> tuple[float, float]:
        """(near, far) of rays through ``signals``: the config's where set, else the data's."""
        near, far = self.config.near or signals.near, self.config.far or signals.far
        if not 0 <= near < far:
            raise MetaINRError(f"need 0 <= near < far, got near={near}, far={far} (from --near/--far and the data)")
        return near, far

    def pack(self, signals: PosedViews) -> tuple[Tensor, float, float]:
        """Packed views (n, V, H, W, 9) of a set of objects (one scene counts as a set of one),
        with their depth range."""
        if not isinstance(signals, PosedViews):
            raise ValueError(f"views signals must be PosedViews, got {type(signals).__name__}")
        near, far = self.depth_range(signals)
        return pack_views(signals.as_set(), near, far), near, far

    def _batch(self, packed: Tensor, n_views: int, near: float, far: float) -> ViewsBatch:
        rows = packed[:, :n_views].reshape(packed.shape[0], -1, 9)
        return ViewsBatch(rows[..., :6], rows[..., 6:], reference=packed, near=near, far=far)

    def batch(self, signals: PosedViews) -> ViewsBatch:
        """Every pixel of every view: segments (B, V*H*W, 6), colours (B, V*H*W, 3), the packed views."""
        packed, near, far = self.pack(signals)
        return self._batch(packed, packed.shape[1], near, far)

    def fit_batch(self, signals: PosedViews) -> ViewsBatch:
        """What a fit from few views sees: every pixel of the first ``input_views`` views of each
        object (B, input_views*H*W, 6 / 3), the packed views (all of them) as reference."""
        packed, near, far = self.pack(signals)
        return self._batch(packed, self.config.input_views, near, far)

    def validation_batches(self, signals: PosedViews) -> list[Batch]:
        """One fit from the first ``input_views`` views of each object, scored on its other views."""
        return [self.fit_batch(signals)]

    def train_batch(self, signals: PosedViews, generator: torch.Generator) -> ViewsBatch:
        """``rays`` random pixels per object from all its views (with ``inner_views`` k: first
        ``rays`` pixels of its first k views, the context); the views in a random order per object
        as reference; segments jittered with ``jitter``. Everything random comes from ``generator``."""
        cfg = self.config
        packed, near, far = self.pack(signals)
        packed = shuffle_views(packed, generator)
        rows = random_rows(packed, cfg.rays, generator)
        context = None
        if cfg.inner_views:
            rows = torch.cat([random_rows(packed, cfg.rays, generator, cfg.inner_views), rows], dim=1)
            context = torch.arange(cfg.rays, device=packed.device)
        if cfg.jitter:
            rows = jitter_rows(rows, cfg.n_samples, generator)
        return ViewsBatch(rows[..., :6], rows[..., 6:], context, packed, near, far)

    def settled(self, batch: Batch) -> "ViewsTask":
        """With ``near`` / ``far`` (when 0) fixed to the depth range of a batch of its data, so a
        checkpoint fits files over the depth range it was trained on."""
        if not isinstance(batch, ViewsBatch):
            return self
        fixes = {k: float(getattr(batch, k)) for k in ("near", "far") if not getattr(self.config, k)}
        return type(self)(self.config, **fixes) if fixes else self

    def tokens(self, batch: Batch) -> Tensor:
        """TransINR's tokens of the input views (the reference's first ``input_views``): p x p
        patches of per-pixel ray start, unit direction and RGB, (B, input_views*(H/p)*(W/p), 9*p*p)."""
        if batch.reference is None or batch.reference.dim() != 5:
            raise ValueError("view tokens need a batch whose reference holds its packed views (B, V, H, W, 9)")
        _, v, h, w, _ = batch.reference.shape
        return view_tokens(batch.reference, min(self.config.input_views, v), self.patch_size(h, w))

    def patch_size(self, height: int, width: int) -> int:
        """The patch side of views of ``height`` x ``width``."""
        return self.config.patch_size or auto_patch_size(math.gcd(height, width))

    # -- files --------------------------------------------------------------------------------------
    def load(self, source: str, split: str) -> PosedViews:
        """``chairs`` / ``tables`` / ``photos`` (procedural: ``count`` objects for train, ``val_count``
        for val and test, disjoint seeds; ``views`` random views each, ``rotate``), ``meshes``
        (pybullet's random meshes, the same way: :func:`metainr.data.meshes.mesh_objects`), a
        NeRF-synthetic folder (one scene) or a folder of them, or one transforms json -> n objects
        (n, V, H, W, 3)."""
        cfg = self.config
        if source in KINDS or source == "meshes":
            count = cfg.count if split == "train" else cfg.val_count
            views = (mesh_objects(split, count, cfg.views, cfg.resolution, rotate=cfg.rotate, background=cfg.background)
                     if source == "meshes" else
                     box_objects(source, split, count, cfg.views, cfg.resolution, rotate=cfg.rotate,
                                 background=cfg.background))
            near, far = self.depth_range(views)
            return dataclasses.replace(views, near=near, far=far, masks=None)
        path = Path(source)
        if not path.exists():
            raise MetaINRError(f"unknown views dataset {source!r}: chairs, tables, photos, meshes, a NeRF-synthetic "
                               "folder or a transforms json")
        near, far = cfg.near or NEAR, cfg.far or FAR
        if path.is_file():
            return read_scene(path, cfg.background, cfg.resolution, near, far).as_set()
        return nerf_synthetic_objects(path, split, cfg.background, cfg.resolution, near, far)

    def read(self, path: str | Path, reference: str | Path | None = None) -> ViewsBatch:
        """One object from a transforms json (or a NeRF-synthetic folder: its transforms_train.json,
        else transforms.json), views resized to ``resolution``: a fit sees its first ``input_views``
        views, metrics score the others (all of them when it has no others)."""
        if reference is not None:
            raise MetaINRError("a views file holds its own ground truth: --reference does not apply")
        cfg = self.config
        file = transforms_file(path, "train") if Path(path).is_dir() else Path(path)
        views = read_scene(file, cfg.background, cfg.resolution, cfg.near or NEAR, cfg.far or FAR)
        return self.fit_batch(views)

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """Views (V, H, W, 3) (from :meth:`reconstruct`) as one PNG grid, 8 views a row, written atomically."""
        atomic_write_bytes(path, grid_png(signal, background=self.config.background))
        return [Path(path)]

    def output_paths(self, path: str | Path) -> list[Path]:
        """The PNG grid at ``path``."""
        return [Path(path)]
