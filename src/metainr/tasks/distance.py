"""Signed distances as field values, and the IoU of inside regions, for the SDF tasks (2D and 3D).

Convention (both SDF tasks): a signed distance ``d`` is in coordinate units (the domain is
[-1, 1] per axis), negative inside a shape. A field regresses the *normalised* value

    v = 0.5 + 0.5 * clamp(d / truncation, -1, 1)   in [0, 1],

so the surface is the level ``v = 0.5`` and PSNR is taken on ``v`` with a data range of 1, as for
images (Meta-SparseINR regresses 2D distance images as grey images with an MSE loss). Distances
farther than ``truncation`` from the surface are clipped (DeepSDF clamps the same way).
"""
from __future__ import annotations

import torch
from torch import Tensor


def sdf_to_values(d: Tensor, truncation: float) -> Tensor:
    """Signed distances (any shape) -> normalised field values in [0, 1] (0.5 on the surface)."""
    return 0.5 + 0.5 * (d / truncation).clamp(-1.0, 1.0)


def values_to_sdf(v: Tensor, truncation: float) -> Tensor:
    """Normalised field values -> signed distances (inverse of :func:`sdf_to_values` inside the band)."""
    return (2.0 * v - 1.0) * truncation


def inside_iou(pred_values: Tensor, true_values: Tensor) -> Tensor:
    """Per-signal IoU of the inside regions (value < 0.5): (B, ...) x (B, ...) -> (B,).
    Two empty insides count as a perfect match (1)."""
    a, b = (pred_values < 0.5).flatten(1), (true_values < 0.5).flatten(1)
    inter = (a & b).sum(dim=1).to(pred_values.dtype)
    union = (a | b).sum(dim=1).to(pred_values.dtype)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
