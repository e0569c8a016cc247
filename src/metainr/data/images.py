"""Image datasets: a user's folder, and the embedded defaults that ship with scikit-image.

A dataset is a tensor ``images: (n, H, W, C)`` in [0, 1] with a fixed resolution. Splits and
crops are deterministic functions of a seed.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Colour photos bundled inside scikit-image. cat and chelsea show the same cat, so both are in
# the test split: train and test crops never come from the same photo.
PATCH_TRAIN_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina")
PATCH_TEST_PHOTOS = ("chelsea", "cat", "rocket")


def grid_coords(*shape: int, device: torch.device | str | None = None) -> Tensor:
    """Coordinates of a pixel grid of ``shape`` (e.g. H, W): ``(prod(shape), len(shape))``.

    Pixel centres are spread evenly over [-1, 1] per axis (meshgrid 'ij', endpoints included),
    flattened in row-major order to match ``image.reshape(-1, C)``.
    """
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"grid shape must be positive, got {shape}")
    axes = [torch.linspace(-1.0, 1.0, s, device=device) if s > 1 else torch.zeros(1, device=device) for s in shape]
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


def to_float_image(array: np.ndarray, channels: int | None = None) -> Tensor:
    """Any uint8/bool/float image (H, W[, C]) -> float tensor (H, W, C) in [0, 1].

    ``channels`` forces 1 (grey) or 3 (RGB); alpha channels are dropped.
    """
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 4:
        a = a[..., :3]
    if channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif channels == 1 and a.shape[-1] == 3:
        a = a @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
        a = a[..., None]
    return torch.from_numpy(np.clip(a, 0.0, 1.0).copy())


def resize_center_crop(image: Tensor, resolution: int) -> Tensor:
    """(H, W, C) -> (resolution, resolution, C): scale the short side, then crop the centre."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    arr = resize(image.numpy(), (nh, nw), anti_aliasing=scale < 1, preserve_range=True)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return torch.from_numpy(arr[top : top + resolution, left : left + resolution].astype(np.float32))


def load_image(path: str | Path, channels: int | None = None) -> Tensor:
    """Read one image file as (H, W, C) in [0, 1]; a missing or corrupt file raises MetaINRError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MetaINRError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = "L" if im.mode in ("L", "I;16", "I", "1") else "RGB"
            array = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MetaINRError(f"cannot read image {path}: {exc}") from None
    return to_float_image(array, channels)


def image_folder(path: str | Path, resolution: int, channels: int = 3) -> ImageDataset:
    """All images in a folder (sorted by name), resized and centre-cropped to ``resolution``."""
    _check_resolution(resolution)
    folder = Path(path)
    if not folder.is_dir():
        raise MetaINRError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MetaINRError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
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
