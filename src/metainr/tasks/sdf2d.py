"""2D signed distance fields: a field ``(row, col) -> normalised distance`` regressed on the pixel
grid with the MSE (Meta-SparseINR's SDF benchmark), observed at every pixel like an image.

Values are :func:`.distance.sdf_to_values` of the signed distance (coordinate units, negative
inside): 0.5 on the shape's outline, distances beyond ``truncation`` clipped. PSNR is taken on
those values (data range 1); ``iou`` compares the inside regions (value < 0.5). Data:
:mod:`metainr.data.glyphs` (font glyphs, primitive unions / differences, users' binary masks).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import Tensor

from ..config import Config
from ..data.files import write_grey
from ..data.glyphs import mask_folder, read_mask, shapes
from ..fields.config import FieldConfig
from ..functional import FieldFn
from ..limits import check_side
from ..metrics import psnr
from ..disk import atomic_group, atomic_write_bytes
from .base import Batch, Preset, observe_batch, register_task
from .distance import inside_iou, sdf_to_values
from .image import ImageTask


@dataclass(frozen=True)
class SDF2DConfig(Config):
    """Square signed distance images of one size."""

    resolution: int = 32
    """image side in pixels (masks are resized and centre-cropped to it; 0: a mask file's own side)"""
    truncation: float = 1.0
    """distances beyond this (coordinate units; the image spans 2) are clipped; values = 0.5 + 0.5 d / truncation"""
    patch_size: int = 0
    """side of the patches a hypernetwork reads (0: the smallest giving at most 8 patches a side)"""
    count: int = 1000
    """glyphs / primitives: training shapes"""
    val_count: int = 32
    """glyphs / primitives: validation (and test) shapes"""

    def __post_init__(self) -> None:
        if self.resolution < 0 or self.resolution == 1 or self.patch_size < 0 or not self.truncation > 0:
            raise ValueError(f"need resolution 0 or >= 2, patch_size >= 0 and truncation > 0; got {self.resolution}, "
                             f"{self.patch_size}, {self.truncation}")
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count}, {self.val_count}")
        check_side(self.resolution, "a signed distance image of this resolution")


@register_task
class SDF2DTask(ImageTask):
    """Signed distance images ``(n, H, W, 1)`` of normalised values, observed at every pixel; PSNR
    on the values and IoU of the inside regions per shape."""

    name = "sdf2d"
    Config = SDF2DConfig
    # Meta-SparseINR's SIREN (w0 = 200 at its resolution) is too high-frequency for 32^2 grids:
    # w0 = 30 learns the distance ramps without ringing
    preset = Preset(field=FieldConfig(kind="siren", width=64, depth=4, w0=30.0, w0_first=30.0, output_offset=0.5),
                    learner="maml", learner_options={"inner_steps": 2, "inner_lr": 1e-2},
                    train={"outer_lr": 1e-3}, data="glyphs")

    @property
    def out_dim(self) -> int:
        return 1

    def settled(self, batch: Batch) -> "SDF2DTask":
        """With ``resolution`` (when 0) taken from a batch of square images."""
        ref = batch.reference
        if not self.config.resolution and ref is not None and ref.shape[1] == ref.shape[2]:
            return type(self)(self.config, resolution=int(ref.shape[1]))
        return self

    def values(self, sdf: Tensor) -> Tensor:
        """Signed distance images (n, H, W) -> normalised value images (n, H, W, 1)."""
        return sdf_to_values(sdf, self.config.truncation)[..., None]

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr`` of the values (clamped to [0, 1]) and ``iou`` of the inside regions."""
        pred = observe_batch(self, field_fn, params, batch)
        out = {}
        if "psnr" in names:
            out["psnr"] = psnr(pred, batch.values)
        if "iou" in names:
            out["iou"] = inside_iou(pred, batch.values)
        return out

    def load(self, source: str, split: str) -> Tensor:
        """``glyphs`` / ``primitives`` (bundled) or a folder of binary masks -> (n, H, W, 1) values."""
        resolution = self.config.resolution or 32
        if source in ("glyphs", "primitives"):
            count = self.config.count if split == "train" else self.config.val_count
            return self.values(shapes(source, split, resolution, count))
        return self.values(mask_folder(source, resolution))

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One binary mask image (bright = inside) as a batch of one signed distance image."""
        return self.batch(self.values(read_mask(path, self.config.resolution or None))[None])

    def output_paths(self, path: str | Path) -> list[Path]:
        """The distance image (PNG) at ``path`` and its zero level set beside it (``.level.png``)."""
        return [Path(path), Path(path).with_suffix(".level.png")]

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One value image (H, W, 1) as an 8-bit grey PNG, and a 4x larger PNG of its zero level
        set (the outline black, the inside light grey, the outside white), both written atomically."""
        from PIL import Image

        values = signal.detach().cpu().float().clamp(0, 1).numpy().reshape(signal.shape[0], signal.shape[1])
        image, outline = self.output_paths(path)
        big = np.asarray(Image.fromarray(values).resize((4 * values.shape[1], 4 * values.shape[0]), Image.BILINEAR))
        inside = big < 0.5
        edge = np.zeros_like(inside)
        edge[:-1] |= inside[:-1] != inside[1:]
        edge[:, :-1] |= inside[:, :-1] != inside[:, 1:]
        picture = np.where(edge, 0, np.where(inside, 200, 255)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="PNG")
        with atomic_group():  # both files or neither
            write_grey(image, values)
            atomic_write_bytes(outline, buf.getvalue())
        return [image, outline]
