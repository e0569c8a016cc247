"""Image datasets: a user's folder, and the embedded defaults that ship with scikit-image.

A dataset is a tensor ``images: (n, H, W, C)`` in [0, 1] with a fixed resolution. Splits and
crops are deterministic functions of a seed.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_pixels, check_signals
from .png import check_png_data

if TYPE_CHECKING:
    import PIL.Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Colour photos bundled inside scikit-image. cat and chelsea show the same cat, so both are in
# the test split: train and test crops never come from the same photo.
PATCH_TRAIN_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina")
PATCH_TEST_PHOTOS = ("chelsea", "cat", "rocket")


def grid_coords(*shape: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Coordinates of a pixel (or voxel) grid of ``shape`` (e.g. H, W): ``(prod(shape), len(shape))``.

    Pixel centres are spread evenly over [-1, 1] per axis (meshgrid 'ij', endpoints included),
    flattened in row-major order to match ``image.reshape(-1, C)``; ``dtype`` default: float32.
    """
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"grid shape must be positive, got {shape}")
    axes = [torch.linspace(-1.0, 1.0, s, device=device, dtype=dtype) if s > 1
            else torch.zeros(1, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def image_to_values(images: Tensor) -> Tensor:
    """images: (B, H, W, C) -> values (B, H*W, C)."""
    return images.reshape(images.shape[0], -1, images.shape[-1])


def values_to_image(values: Tensor, height: int, width: int) -> Tensor:
    """values: (..., H*W, C) -> images (..., H, W, C)."""
    return values.reshape(*values.shape[:-2], height, width, values.shape[-1])


@dataclass(frozen=True)
class ImageDataset:
    """A stack of same-sized images ``(n, H, W, C)`` with values in [0, 1]."""

    images: Tensor
    name: str = "images"

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[0] == 0:
            raise MetaINRError(f"dataset {self.name!r} is empty or not (n, H, W, C)")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def coords(self) -> Tensor:
        """(H*W, 2) pixel coordinates in [-1, 1], shared by every image."""
        return grid_coords(*self.images.shape[1:3])

    @property
    def values(self) -> Tensor:
        """(n, H*W, C) pixel values."""
        return image_to_values(self.images)

    def __getitem__(self, index: Tensor | slice | list[int]) -> Tensor:
        """The images at ``index``: (k, H, W, C)."""
        return self.images[index]

    def subset(self, index: Tensor | slice | list[int]) -> "ImageDataset":
        """The images at ``index``."""
        return ImageDataset(self.images[index], self.name)


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution <= 0:
        raise MetaINRError(f"resolution must be a positive integer, got {resolution!r}")


def to_float_image(array: np.ndarray, channels: int | None = None, *, name: str = "image") -> Tensor:
    """Any bool/integer/float image (H, W[, C]) -> float tensor (H, W, C) in [0, 1].

    Integers are divided by the largest value of their dtype (255 for uint8, 65535 for uint16);
    floats are taken as already in [0, 1] and clipped (NaN or inf raises MetaINRError, naming
    ``name``). C may be 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA); alpha is dropped.
    ``channels`` forces 1 (grey, by luminance) or 3 (RGB, grey repeated).
    """
    if channels not in (None, 1, 3):
        raise MetaINRError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise MetaINRError(f"{name} has shape {a.shape}; expected (H, W) or (H, W, C) with C = 1 (grey), "
                           "2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    a = a[..., : 1 if a.shape[-1] <= 2 else 3]  # drop alpha
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise MetaINRError(f"{name} has NaN or infinite values")
        a = a.astype(np.float32)
    else:
        raise MetaINRError(f"{name} has unsupported pixel type {a.dtype}")
    if channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif channels == 1 and a.shape[-1] == 3:
        a = (a @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32))[..., None]
    return torch.from_numpy(np.ascontiguousarray(np.clip(a, 0.0, 1.0)))


def cover_shape(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """The size an (h, w) image is scaled to so it covers (height, width) with its aspect kept."""
    scale = max(height / h, width / w)
    return max(height, round(h * scale)), max(width, round(w * scale))


def resize_center_crop(image: Tensor, resolution: int, width: int | None = None) -> Tensor:
    """(H, W, C) -> (resolution, width or resolution, C): scale so the image covers the target
    (the short side, for a square), then crop the centre."""
    from skimage.transform import resize

    height, width = resolution, width or resolution
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    nh, nw = cover_shape(h, w, height, width)
    arr = resize(image.numpy(), (nh, nw), anti_aliasing=nh < h or nw < w, preserve_range=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return torch.from_numpy(arr[top : top + height, left : left + width].astype(np.float32))


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Pillow reads 16-bit colour PNGs through these unpackers, which keep only each sample's high byte.
_PNG16_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")


def _check_size(path: Path, width: int, height: int) -> None:
    check_pixels(width * height, f"image {path} ({width}x{height})")


def _open_pil(path: Path) -> "PIL.Image.Image":
    """Pillow's header read, without Pillow's own decompression-bomb limit (ours counts)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            pass
    # Over twice Pillow's limit: open through the format's plugin, as Image.open does, minus the check.
    Image.init()
    with path.open("rb") as fp:
        prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        ok = accept is None or accept(prefix)
        if ok and not isinstance(ok, str):
            return factory(str(path))
    raise MetaINRError(f"cannot read image {path}: unknown format")


def _pil_decode(path: Path, rawmode: str) -> np.ndarray:
    """The first frame of a PNG decoded with another Pillow unpacker (same filters, other bytes)."""
    with _open_pil(path) as im:
        im.tile = [im.tile[0]._replace(args=rawmode)]
        im.load()
        return np.asarray(im)


def _read_pil(path: Path) -> np.ndarray:
    """Pixels through Pillow at full depth: (H, W[, C]) bool, uint8, uint16, int32 or float32
    (alpha kept; a palette image with transparency gives RGBA)."""
    with _open_pil(path) as im:
        _check_size(path, *im.size)
        if im.format == "PNG":
            check_png_data(path)
        rawmode = im.tile[0].args if im.format == "PNG" and len(im.tile) == 1 else None
        if rawmode == "LA;16B":  # no 16-bit LA unpacker: read each pixel's 4 bytes as R, G, B, A
            b = _pil_decode(path, "RGBA").astype(np.uint16)
            return (b[..., 0::2] << 8) | b[..., 1::2]  # (H, W, 2): grey, alpha
        im.load()
        if rawmode in _PNG16_RAWMODES:  # high bytes now, low bytes from a second pass
            low = _pil_decode(path, rawmode.replace(";16B", ";16L")).astype(np.uint16)
            return (np.asarray(im).astype(np.uint16) << 8) | low
        if im.mode in ("1", "L", "LA", "RGB", "RGBA", "I", "F") or im.mode.startswith("I;16"):
            return np.asarray(im)
        return np.asarray(im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else "RGB"))  # CMYK, ...


def _read_tiff(path: Path) -> np.ndarray | None:
    """A TIFF's first image through tifffile: (H, W[, S]) at full depth, or None if Pillow reads it.

    tifffile reads plain grey/RGB samples of any type; palette, CMYK, YCbCr, min-is-white and
    compressions that need the ``imagecodecs`` package (LZW, JPEG, CCITT) are left to Pillow.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_size(path, page.imagewidth, page.imagelength)
        photometric = tifffile.PHOTOMETRIC
        if (page.photometric not in (photometric.MINISBLACK, photometric.RGB)
                or page.compression not in tifffile.TIFF.DECOMPRESSORS):
            return None
        array = page.asarray()
        return np.moveaxis(array, page.axes.index("S"), -1) if "S" in page.axes else array


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header alone (no pixel is decoded)."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "image file")
    try:
        with path.open("rb") as fp:
            if fp.read(4) in _TIFF_MAGIC:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    return tif.pages[0].imagewidth, tif.pages[0].imagelength
        with _open_pil(path) as im:
            return im.size
    except MetaINRError:
        raise
    except Exception as exc:  # decoders raise many types on bad input
        raise MetaINRError(f"cannot read image {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def read_pixels(path: str | Path) -> np.ndarray:
    """One image file's pixels as stored: (H, W[, C]) at full depth (bool, uint8, uint16, int32,
    float32, ...), alpha kept. The declared size is checked against ``metainr.limits`` before any
    pixel is decoded, and data shorter than the header declares is refused (never read as zeros).
    Every failure is a one-line MetaINRError."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "image file")
    try:
        with path.open("rb") as fp:
            is_tiff = fp.read(4) in _TIFF_MAGIC
        array = _read_tiff(path) if is_tiff else None
        return _read_pil(path) if array is None else array
    except MetaINRError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ValueError, ...) on bad input
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise MetaINRError(f"cannot read image {path}: {detail}") from None


def load_image(path: str | Path, channels: int | None = None) -> Tensor:
    """Read one image file as (H, W, C) in [0, 1], keeping its bit depth (8/16-bit, float).

    Plain grey/RGB TIFFs (any sample type) are read with tifffile; everything else (PNG, JPEG,
    BMP, WEBP, palette or LZW/JPEG-compressed TIFF, ...) with Pillow, 16-bit colour PNGs at full
    depth (see :func:`read_pixels`); alpha is dropped. Every failure is a one-line MetaINRError.
    """
    return to_float_image(read_pixels(path), channels, name=f"image {Path(path)}")


def image_folder(path: str | Path, resolution: int, channels: int = 3) -> ImageDataset:
    """All images in a folder (sorted by name), resized and centre-cropped to ``resolution``."""
    _check_resolution(resolution)
    folder = Path(path)
    if not folder.is_dir():
        raise not_found(folder, "image folder", folder=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MetaINRError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    check_signals(len(files), f"image folder {folder}")
    images = [resize_center_crop(load_image(f, channels), resolution) for f in files]
    return ImageDataset(torch.stack(images), name=str(folder))


def _split(n: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def faces(split: str = "train", resolution: int = 25, seed: int = 0, n_test: int = 20) -> ImageDataset:
    """The 100 LFW faces bundled with scikit-image (25x25 grey), with a fixed train/test split."""
    _check_resolution(resolution)
    from skimage.data import lfw_subset

    imgs = torch.from_numpy(lfw_subset()[:100].astype(np.float32))[..., None]
    if resolution != 25:
        imgs = torch.stack([resize_center_crop(im, resolution) for im in imgs])
    train, test = _split(len(imgs), n_test, seed)
    _check_split(split)
    return ImageDataset(imgs[train if split == "train" else test].clamp(0, 1), name=f"faces-{split}")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise MetaINRError(f"split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=16)
def _photo(name: str, short_side: int) -> Tensor:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = to_float_image(getattr(skimage.data, name)(), channels=3)
    return resize_center_crop(image, short_side) if min(image.shape[:2]) != short_side else image


def patches(
    split: str = "train",
    resolution: int = 32,
    count: int | None = None,
    seed: int = 0,
    photo_side: int = 256,
) -> ImageDataset:
    """Random square crops of scikit-image's bundled colour photos.

    Each photo is first rescaled so its short side is ``photo_side`` (centre-cropped square),
    then ``count`` crops of ``resolution`` are drawn uniformly. Train and test crops come from
    different photos (see ``PATCH_TRAIN_PHOTOS`` / ``PATCH_TEST_PHOTOS``).
    """
    _check_resolution(resolution)
    if resolution > photo_side:
        raise MetaINRError(f"patch resolution {resolution} exceeds photo_side {photo_side}")
    _check_split(split)
    names = PATCH_TRAIN_PHOTOS if split == "train" else PATCH_TEST_PHOTOS
    count = count if count is not None else (1000 if split == "train" else 24)
    photos = [_photo(n, photo_side) for n in names]
    g = torch.Generator().manual_seed(seed * 7919 + (0 if split == "train" else 1))
    which = torch.randint(len(photos), (count,), generator=g)
    span = photo_side - resolution + 1
    tops = torch.randint(span, (count,), generator=g)
    lefts = torch.randint(span, (count,), generator=g)
    crops = [photos[p][t : t + resolution, l : l + resolution] for p, t, l in zip(which, tops, lefts)]
    return ImageDataset(torch.stack(crops), name=f"patches-{split}")


DATASETS = {"faces": faces, "patches": patches}


def load_dataset(name_or_path: str, split: str, resolution: int, **kwargs) -> ImageDataset:
    """An embedded dataset by name (``faces``, ``patches``) or a folder of images."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path](split=split, resolution=resolution, **kwargs)
    return image_folder(name_or_path, resolution)
