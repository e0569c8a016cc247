"""2D shapes as signed distance images: glyphs of the fonts matplotlib ships, unions and
differences of primitives, and users' binary masks.

Every shape is first a binary mask rendered ``SUPERSAMPLE`` times finer than the output grid
(``(n - 1) * SUPERSAMPLE + 1`` samples a side, so every ``SUPERSAMPLE``-th sample is an output
pixel centre of :func:`metainr.data.images.grid_coords`); its signed distance comes from
scipy's exact Euclidean distance transform on that fine grid, half a fine pixel off each side
of the boundary, in coordinate units ([-1, 1] a side), negative inside
(:func:`mask_to_sdf`). Within a fine pixel of the true distance (see the disc test).

Splits never share a font: ``glyphs`` train on DejaVu Sans / Serif / Mono and Computer Modern
faces, validate on STIX, and test on the oblique / italic / bold DejaVu faces. ``primitives``
splits differ by seed.
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError
from ..limits import check_signals, check_side
from .files import folder_files
from .images import IMAGE_SUFFIXES, load_image

SUPERSAMPLE = 4
CHARACTERS = string.ascii_letters + string.digits
GLYPH_FONTS = {
    "train": ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "cmr10.ttf",
              "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "DejaVuSerif-Bold.ttf"),
    "val": ("STIXGeneral.ttf", "STIXGeneralBol.ttf"),
    "test": ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-BoldItalic.ttf"),
}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
DATASETS = ("glyphs", "primitives")


def fine_side(resolution: int) -> int:
    """Side of the supersampled mask of an output grid of ``resolution`` pixels."""
    return (resolution - 1) * SUPERSAMPLE + 1


def mask_to_sdf(mask: np.ndarray) -> np.ndarray:
    """Signed distance (float32, coordinate units, negative inside) of a boolean mask (S, S) that
    spans [-1, 1] a side; the boundary lies half a pixel outside the inside pixels' centres."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ValueError("a mask needs both inside and outside pixels (it has no boundary)")
    spacing = 2.0 / (mask.shape[0] - 1)
    outside = distance_transform_edt(~mask) - 0.5
    inside = distance_transform_edt(mask) - 0.5
    return (np.where(mask, -inside, outside) * spacing).astype(np.float32)


def downsample(fine: np.ndarray) -> np.ndarray:
    """The output pixels (every ``SUPERSAMPLE``-th sample) of a fine grid."""
    return fine[::SUPERSAMPLE, ::SUPERSAMPLE]


def _font_path(name: str) -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if not path.is_file():
        raise MetaINRError(f"font {name} is not in matplotlib's data ({path.parent})")
    return path


def glyph_mask(font: Path, char: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A glyph drawn with ``font`` into a boolean (side, side) mask: its larger extent 55-85% of
    the side, turned by up to 20 degrees, shifted by up to 10% of the side."""
    from PIL import Image, ImageDraw, ImageFont

    big = 2 * side
    face = ImageFont.truetype(str(font), size=big // 2)
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).text((big // 2, big // 2), char, fill=255, font=face, anchor="mm")
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{font.name} draws nothing for {char!r}")
    glyph = canvas.crop(box).rotate(float(rng.uniform(-20, 20)), expand=True, resample=Image.BILINEAR)
    scale = rng.uniform(0.55, 0.85) * side / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))), Image.BILINEAR)
    out = Image.new("L", (side, side), 0)
    shift = rng.uniform(-0.1, 0.1, 2) * side
    out.paste(glyph, (int((side - glyph.size[0]) / 2 + shift[0]), int((side - glyph.size[1]) / 2 + shift[1])))
    return np.asarray(out) > 127


def _primitive(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact SDF of a random disc, box or rounded box on coordinates x, y."""
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    kind = rng.integers(3)
    if kind == 0:
        return np.hypot(u, v) - rng.uniform(0.15, 0.45)
    hx, hy = rng.uniform(0.1, 0.45, 2)
    r = rng.uniform(0.02, 0.6 * min(hx, hy)) if kind == 2 else 0.0
    qx, qy = np.abs(u) - hx + r, np.abs(v) - hy + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def primitive_mask(side: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (side, side) mask: the union of 1-3 random discs / boxes / rounded boxes, minus
    another one half the time (kept only if something is left)."""
    axis = np.linspace(-1.0, 1.0, side)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    while True:
        d = np.min([_primitive(rng, x, y) for _ in range(rng.integers(1, 4))], axis=0)
        if rng.random() < 0.5:
            d = np.maximum(d, -_primitive(rng, x, y))
        mask = d < 0
        if 0.02 < mask.mean() < 0.9:
            return mask


def shapes(source: str, split: str, resolution: int, count: int) -> Tensor:
    """``count`` signed distance images (count, resolution, resolution) of a bundled class:
    ``glyphs`` (letters and digits of this split's fonts) or ``primitives``."""
    if source not in DATASETS:
        raise ValueError(f"unknown 2D shape set {source!r}; choose from {DATASETS} or give a folder of masks")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    check_signals(count, f"{source}/{split}")
    check_side(fine_side(resolution), f"a {source} mask")
    rng = np.random.default_rng(1000 * SPLIT_SEEDS[split] + (17 if source == "primitives" else 0))
    side = fine_side(resolution)
    fonts = [_font_path(name) for name in GLYPH_FONTS[split]] if source == "glyphs" else []
    out = np.empty((count, resolution, resolution), dtype=np.float32)
    for i in range(count):
        while True:
            if fonts:
                mask = glyph_mask(fonts[rng.integers(len(fonts))], CHARACTERS[rng.integers(len(CHARACTERS))], side,
                                  rng)
            else:
                mask = primitive_mask(side, rng)
            if mask.any() and not mask.all():
                break
        out[i] = downsample(mask_to_sdf(mask))
    return torch.from_numpy(out)


def read_mask(path: str | Path, resolution: int | None = None) -> Tensor:
    """The signed distance image (n, n) of a binary mask file (an image; bright = inside, the grey
    level thresholded at 0.5), resized and centre-cropped to ``resolution`` when given (else its
    own size; it must be square). A mask without a boundary is a one-line MetaINRError."""
    from PIL import Image

    image = load_image(path, channels=1)[..., 0]  # (H, W) in [0, 1], checked against the limits
    h, w = image.shape
    if resolution is None:
        if h != w:
            raise MetaINRError(f"mask {path} is {w}x{h}: give a square mask or set --resolution")
        resolution = h
    check_side(fine_side(resolution), f"mask {path} at resolution {resolution}")
    side = fine_side(resolution)
    crop = min(h, w)
    top, left = (h - crop) // 2, (w - crop) // 2
    grey = Image.fromarray((image[top:top + crop, left:left + crop].numpy() * 255).astype(np.uint8))
    fine = np.asarray(grey.resize((side, side), Image.BILINEAR)) > 127
    if fine.all() or not fine.any():
        raise MetaINRError(f"mask {path} has no boundary: it is all inside or all outside (bright = inside)")
    return torch.from_numpy(downsample(mask_to_sdf(fine)).copy())


def mask_folder(path: str | Path, resolution: int) -> Tensor:
    """Signed distance images (n, resolution, resolution) of every mask image in a folder."""
    files = folder_files(path, IMAGE_SUFFIXES, f"mask images (nor a bundled 2D shape set {DATASETS})")
    return torch.stack([read_mask(f, resolution) for f in files])
