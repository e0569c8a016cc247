"""Image signals: pixel grids as coordinates in [-1, 1] and values in [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor


def grid_coords(*shape: int) -> Tensor:
    """Coordinates of a pixel grid of ``shape`` (e.g. H, W): ``(prod(shape), len(shape))``.

    Pixel centres are spread evenly over [-1, 1] per axis (meshgrid 'ij', endpoints included),
    flattened in row-major order to match ``image.reshape(-1, C)``.
    """
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"grid shape must be positive, got {shape}")
    axes = [torch.linspace(-1.0, 1.0, s) if s > 1 else torch.zeros(1) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def image_to_values(images: Tensor) -> Tensor:
    """images: (B, H, W, C) -> values (B, H*W, C)."""
    return images.reshape(images.shape[0], -1, images.shape[-1])


def values_to_image(values: Tensor, height: int, width: int) -> Tensor:
    """values: (..., H*W, C) -> images (..., H, W, C)."""
    return values.reshape(*values.shape[:-2], height, width, values.shape[-1])
