"""Images: a field ``(row, col) -> value`` observed at every pixel centre (the identity forward model)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import Tensor

from ..config import Config
from ..data.images import grid_coords, image_to_values, load_dataset, load_image, resize_center_crop
from ..functional import FieldFn
from ..limits import check_side
from ..metrics import psnr, ssim
from ..disk import atomic_write_bytes
from .base import Batch, Task, observe_batch, register_task


def auto_patch_size(side: int, max_patches_per_side: int = 8) -> int:
    """The smallest divisor p of ``side`` with ``side / p <= max_patches_per_side``."""
    return next(p for p in range(1, side + 1) if side % p == 0 and side // p <= max_patches_per_side)


@dataclass(frozen=True)
class ImageConfig(Config):
    """Images of one size with values in [0, 1]."""

    resolution: int = 0
    """image side in pixels: files are resized and centre-cropped to it (0: faces 25, others 32)"""
    channels: int = 0
    """value channels: 1 grey, 3 RGB (0: those of the data)"""
    patch_size: int = 0
    """side of the patches a hypernetwork reads (0: the smallest giving at most 8 patches a side)"""

    def __post_init__(self) -> None:
        if self.resolution < 0 or self.channels not in (0, 1, 3) or self.patch_size < 0:
            raise ValueError(f"need resolution >= 0, channels 0/1/3 and patch_size >= 0; got {self.resolution}, "
                             f"{self.channels}, {self.patch_size}")
        check_side(self.resolution, "an image of this resolution")


@register_task
class ImageTask(Task):
    """Images ``(n, H, W, C)`` in [0, 1], observed at every pixel; PSNR and SSIM per image."""

    name = "image"
    Config = ImageConfig

    @property
    def in_dim(self) -> int:
        return 2

    @property
    def out_dim(self) -> int:
        return self.config.channels or 3

    def settled(self, batch: Batch) -> "ImageTask":
        """With ``channels`` and ``resolution`` (when 0) taken from a batch of square images."""
        fixes = {}
        if not self.config.channels:
            fixes["channels"] = int(batch.values.shape[-1])
        ref = batch.reference
        if not self.config.resolution and ref is not None and ref.shape[1] == ref.shape[2]:
            fixes["resolution"] = int(ref.shape[1])
        return type(self)(self.config, **fixes) if fixes else self

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        pred = observe_batch(self, field_fn, params, batch)
        out = {}
        if "psnr" in names:
            out["psnr"] = psnr(pred, batch.values)
        if "ssim" in names and batch.reference is not None and min(batch.reference.shape[1:3]) >= 11:
            out["ssim"] = ssim(pred.reshape(batch.reference.shape), batch.reference)
        return out

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Images (B, H, W, C) clamped to [0, 1]."""
        pred = observe_batch(self, field_fn, params, batch).clamp(0, 1)
        return pred.reshape(batch.reference.shape) if batch.reference is not None else pred

    def batch(self, signals: Tensor) -> Batch:
        """images (B, H, W, C) -> every pixel; the images are kept as the metrics' reference."""
        if signals.dim() != 4:
            raise ValueError(f"images must be (B, H, W, C), got {tuple(signals.shape)}")
        _, h, w, _ = signals.shape
        return Batch(grid_coords(h, w, device=signals.device), image_to_values(signals), reference=signals)

    def load(self, source: str, split: str) -> Tensor:
        """``faces`` / ``patches`` (bundled) or a folder of images -> (n, H, W, C)."""
        resolution = self.config.resolution or (25 if source == "faces" else 32)
        images = load_dataset(source, split, resolution).images
        if self.config.channels and images.shape[-1] != self.config.channels:
            raise ValueError(f"{source} has {images.shape[-1]} channels but the task has {self.config.channels}")
        return images

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One image file (resized to ``resolution`` when set) as a batch of one (an image is its
        own reference: ``reference`` is not used)."""
        image = load_image(path, channels=self.config.channels or None)
        if self.config.resolution:
            image = resize_center_crop(image, self.config.resolution)
        return self.batch(image[None])

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One image (H, W, C) in [0, 1] as an 8-bit PNG, written atomically."""
        from PIL import Image

        array = (signal.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        return [Path(path)]

    def patch_size(self, side: int) -> int:
        """The patch side used for images of side ``side``."""
        p = self.config.patch_size or auto_patch_size(side)
        if side % p:
            raise ValueError(f"patch_size {p} does not divide the image side {side}")
        return p

    def tokens(self, batch: Batch) -> Tensor:
        """Square images -> non-overlapping patches (B, (side / p)^2, p * p * C), row-major."""
        b, h, w, c = batch.reference.shape
        if h != w:
            raise ValueError(f"the hypernetwork reads square images, got {h}x{w}")
        p = self.patch_size(h)
        k = h // p
        return batch.reference.reshape(b, k, p, k, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, k * k, p * p * c)
