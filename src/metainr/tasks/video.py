"""Video: clips (T, H, W, C) in [0, 1] observed at every sample (the identity forward model).

How a clip presents its query rows depends on the field (``VideoConfig.rows``):

- ``pixels`` (coordinate fields: siren, fourier, pe): one row per sample, the coordinates
  ``(t, y, x)`` each evenly over [-1, 1] (endpoints included, row-major like ``clip.reshape(-1, C)``);
  an observation is the sample's C values. A context is a set of samples.
- ``frames`` (frame-valued fields: nerv): one row per frame, the coordinate ``t`` alone, (T, 1);
  an observation is the whole frame flattened row-major, (H * W * C). A context is then a set of
  whole frames, so GradNCP keeps or drops frames as the paper's NeRV code does, and every learner,
  ``fit`` and the metrics run unchanged: they only ever see rows.

Either way the loss is the mean squared error over all samples, and metrics are per-frame PSNR
and SSIM averaged over the frames. Data: :mod:`metainr.data.clips` (``pans``: camera pans and
zooms over the bundled photos; a folder of GIF / MP4 files or of frame folders).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from torch import Tensor

from ..config import Config
from ..data.clips import load_clips, read_clip, write_gif, write_mp4, write_strip
from ..disk import atomic_group
from ..data.images import grid_coords
from ..fields.config import FieldConfig
from ..functional import FieldFn
from ..limits import check_pixels, check_signals
from ..metrics import psnr, ssim
from .base import Batch, Preset, Task, observe_batch, register_task
from .image import auto_patch_size

ROWS = ("pixels", "frames")
DEFAULT_FRAMES, DEFAULT_RESOLUTION = 8, 32
"""frames and frame side of ``pans`` and of folders when the config leaves them to the data"""


@dataclass(frozen=True)
class VideoConfig(Config):
    """Clips of one size with values in [0, 1]."""

    frames: int = 0
    """frames a clip (0: those of the data; pans and folders: 8); files keep their first frames"""
    resolution: int = 0
    """frame side in pixels: frames are resized and centre-cropped to it, as images are (0: those of
    the data; pans and folders: 32)"""
    channels: int = 0
    """value channels: 1 grey, 3 RGB (0: those of the data)"""
    rows: str = "pixels"
    """query rows: pixels ((t, y, x) samples, coordinate fields) | frames (t -> whole frame, nerv)"""
    fps: float = 8.0
    """frame rate of the GIF / MP4 files written"""
    sprites: bool = True
    """pans: moving shapes over the camera motion"""
    count: int = 400
    """pans: training clips"""
    val_count: int = 16
    """pans: validation (and test) clips"""
    patch_size: int = 0
    """side of a hypernetwork's spatio-temporal patches (0: the smallest giving at most 8 a side)"""
    patch_frames: int = 0
    """frames of those patches (0: the smallest giving at most 4 slices in time)"""

    def __post_init__(self) -> None:
        if min(self.frames, self.resolution, self.patch_size, self.patch_frames) < 0:
            raise ValueError("frames, resolution, patch_size and patch_frames must be >= 0")
        if self.channels not in (0, 1, 3) or self.rows not in ROWS:
            raise ValueError(f"need channels 0/1/3 and rows in {ROWS}, got {self.channels}, {self.rows!r}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count}, {self.val_count}")
        check_signals(max(self.count, self.val_count), "pans (count)")
        if self.frames or self.resolution:  # sizes left to the data are checked where a file declares them
            t, side = self.frames or 1, self.resolution or 1
            check_pixels(t * side * side * (self.channels or 1), f"a clip of {self.frames or 'any'} frames of "
                         f"{self.resolution or 'any'}x{self.resolution or 'any'}")


@register_task
class VideoTask(Task):
    """Clips ``(n, T, H, W, C)`` in [0, 1], observed at every sample; per-frame PSNR and SSIM."""

    name = "video"
    Config = VideoConfig
    # SIREN on (t, y, x) with Meta-SGD's learned step sizes: measured (1 thread, 90 CPU-s, 8x32x32 pans)
    # 20.3 dB after 2 steps vs MAML's 18.4 and the best Adam lr of a random init 17.1
    preset = Preset(field=FieldConfig(kind="siren", width=128, depth=4, w0=30.0, w0_first=30.0),
                    learner="metasgd", learner_options={"inner_steps": 2, "inner_lr": 1e-2},
                    train={"outer_lr": 1e-3}, data="pans")

    @property
    def frame_mode(self) -> bool:
        """True when a query row is a whole frame."""
        return self.config.rows == "frames"

    @property
    def in_dim(self) -> int:
        return 1 if self.frame_mode else 3

    @property
    def out_dim(self) -> int:
        c = self.config.channels or 3
        if not self.frame_mode:
            return c
        if not self.config.resolution:
            raise ValueError("a video task with rows=frames needs its frame size: give resolution, or settle it on data "
                             "first (Task.settled)")
        return self.config.resolution ** 2 * c

    # -- frame rows (capability FrameRows) ------------------------------------------------------
    def frame_rows(self) -> "VideoTask":
        """This task with one query row per frame (for NeRV)."""
        return self if self.frame_mode else type(self)(self.config, rows="frames")

    def frame_shape(self) -> tuple[int, int] | None:
        """(H, W) when the rows are frames, else None."""
        return (self.config.resolution, self.config.resolution) if self.frame_mode else None

    # -- batches, metrics, reconstructions -------------------------------------------------------
    def query(self, frames: int, height: int, width: int, device=None, dtype=None) -> Tensor:
        """Query rows of a clip: (T H W, 3) (t, y, x) for pixel rows, (T, 1) t for frame rows."""
        if self.frame_mode:
            return grid_coords(frames, device=device, dtype=dtype)
        return grid_coords(frames, height, width, device=device, dtype=dtype)

    def batch(self, signals: Tensor) -> Batch:
        """clips (B, T, H, W, C) -> every sample (or frame); the clips are the metrics' reference."""
        if signals.dim() != 5:
            raise ValueError(f"clips must be (B, T, H, W, C), got {tuple(signals.shape)}")
        b, t, h, w, c = signals.shape
        query = self.query(t, h, w, device=signals.device, dtype=signals.dtype)
        values = signals.reshape(b, t, h * w * c) if self.frame_mode else signals.reshape(b, t * h * w, c)
        return Batch(query, values, reference=signals)

    def settled(self, batch: Batch) -> "VideoTask":
        """With frames, resolution (of square frames) and channels (when 0) taken from a batch of clips."""
        _, t, h, w, c = batch.reference.shape
        sizes = [("frames", t), ("channels", c)] + ([("resolution", h)] if h == w else [])
        fixes = {k: v for k, v in sizes if not getattr(self.config, k)}
        return type(self)(self.config, **fixes) if fixes else self

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Clips (B, T, H, W, C) clamped to [0, 1]."""
        return observe_batch(self, field_fn, params, batch).clamp(0, 1).reshape(batch.reference.shape)

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr`` and ``ssim`` (B,): each frame's, averaged over the frames (SSIM where frames
        are at least 11 pixels a side)."""
        ref = batch.reference
        frames = self.reconstruct(field_fn, params, batch).flatten(0, 1)
        out = {}
        if "psnr" in names:
            out["psnr"] = psnr(frames, ref.flatten(0, 1)).view(ref.shape[:2]).mean(dim=1)
        if "ssim" in names and min(ref.shape[2:4]) >= 11:
            out["ssim"] = ssim(frames, ref.flatten(0, 1)).view(ref.shape[:2]).mean(dim=1)
        return out

    # -- files ---------------------------------------------------------------------------------------
    def _size(self) -> tuple[int, int, int]:
        side = self.config.resolution or DEFAULT_RESOLUTION
        return self.config.frames or DEFAULT_FRAMES, side, side

    def load(self, source: str, split: str) -> Tensor:
        """``pans`` (procedural) or a folder of GIF / MP4 files and frame folders (or one clip)
        -> clips (n, T, R, R, C) (sizes 0 in the config: 8 frames of 32x32)."""
        from ..data.clips import pans

        t, h, w = self._size()
        c = self.config
        if source == "pans":
            clips = pans(split, c.count if split == "train" else c.val_count, t, h, w, sprites=c.sprites)
        else:
            clips = load_clips(source, split, t, h, w, c.count, c.val_count)
        return clips.mean(dim=-1, keepdim=True) if c.channels == 1 and clips.shape[-1] == 3 else clips

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One clip (a GIF, an MP4 or a folder of frames; its first ``frames`` frames, resized and
        centre-cropped to ``resolution`` when set) as a batch of one (a clip is its own reference)."""
        c = self.config
        clip = read_clip(path, c.frames, c.resolution, c.resolution, c.channels or 3)
        return self.batch(clip[None])

    def output_paths(self, path: str | Path) -> list[Path]:
        """``.gif`` / ``.mp4``: that file and a PNG strip of the frames beside it; otherwise the
        PNG strip at ``path`` and a GIF beside it."""
        path = Path(path)
        if path.suffix.lower() in (".gif", ".mp4"):
            return [path, path.with_suffix(".png")]
        return [path, path.with_suffix(".gif")]

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One clip (T, H, W, C) in [0, 1] as :meth:`output_paths` says, each written atomically."""
        clip = signal.detach().float().cpu().clamp(0, 1)
        if clip.dim() != 4:
            raise ValueError(f"a clip to write must be (T, H, W, C), got {tuple(signal.shape)}")
        paths = self.output_paths(path)
        with atomic_group():  # every file or none
            for p in paths:
                suffix = p.suffix.lower()
                if suffix == ".mp4":
                    write_mp4(p, clip, self.config.fps)
                elif suffix == ".gif":
                    write_gif(p, clip, self.config.fps)
                else:
                    write_strip(p, clip)
        return paths

    # -- capabilities: render (frames in time), tokens (spatio-temporal patches) ----------------
    def render(self, field_fn: FieldFn, params: Mapping[str, Tensor], n_views: int) -> Tensor:
        """(n_views, H, W, 3) frames of ONE clip's field at ``n_views`` times evenly over [-1, 1]
        (any count: the field is continuous in t)."""
        if n_views < 1:
            raise ValueError(f"render needs at least one frame, got {n_views}")
        _, h, w = self._size()
        c = self.config.channels or 3
        like = next(iter(params.values()))
        query = self.query(n_views, h, w, device=like.device, dtype=like.dtype)
        shape_only = like.new_zeros(())  # the batch's values and reference only give shapes: nothing allocated
        batch = Batch(query, shape_only.expand(1, query.shape[0], self.out_dim),
                      reference=shape_only.expand(1, n_views, h, w, c))
        frames = self.reconstruct(field_fn, {n: p[None] for n, p in params.items()}, batch)[0]
        return frames.expand(-1, -1, -1, 3) if c == 1 else frames

    def patch_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(frames, rows, cols) of the patches a hypernetwork reads for clips of this size."""
        c = self.config
        pt = c.patch_frames or auto_patch_size(frames, 4)
        ph = c.patch_size or auto_patch_size(height)
        pw = c.patch_size or auto_patch_size(width)
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"patches of {pt}x{ph}x{pw} do not tile clips of {frames}x{height}x{width}")
        return pt, ph, pw

    def tokens(self, batch: Batch) -> Tensor:
        """Clips (B, T, H, W, C) -> non-overlapping spatio-temporal patches (B, n, pt * ph * pw * C),
        ordered by time slice, then row, then column."""
        b, t, h, w, c = batch.reference.shape
        pt, ph, pw = self.patch_shape(t, h, w)
        x = batch.reference.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
        return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * c)

