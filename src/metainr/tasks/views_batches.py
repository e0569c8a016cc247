"""Rays, batches, tokens and pictures of the views task (:mod:`.views`), as plain functions.

A view task's query row is a ray SEGMENT ``(start, extent)`` (6,): ``start = o + near * u`` and
``extent = (far - near) * u`` for a camera at ``o`` and the unit direction ``u`` of a pixel, so the
row carries its own depth range and is rendered over ``t`` in [0, 1] (``o + t d`` of
:mod:`.volume_rendering`, whose intervals scale with ``|d|``: the same samples and weights as
rendering ``(o, u)`` over [near, far]). Objects with different depth ranges can share a batch.

A *packed* view is (..., H, W, 9): per pixel its segment (6) and its colour (3).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import Tensor

from ..data.cameras import PosedViews


def ray_segments(views: PosedViews, near: float, far: float) -> Tensor:
    """Segments (..., V, H*W, 6) of every pixel of posed views between depths near and far."""
    origins, directions = views.rays()
    return torch.cat([origins + near * directions, (far - near) * directions], dim=-1)


def pack_views(views: PosedViews, near: float, far: float) -> Tensor:
    """Posed views (n, V, H, W, 3) -> packed views (n, V, H, W, 9): segments and colours."""
    n, v, h, w, _ = views.images.shape
    segments = ray_segments(views, near, far).reshape(n, v, h, w, 6)
    return torch.cat([segments, views.images.to(segments.dtype)], dim=-1)


def scored_views(packed: Tensor, input_views: int) -> Tensor:
    """The views metrics score, (B, V', H, W, 9): those after the first ``input_views`` (the
    novel views of a fit from them), or every view when there are no others."""
    return packed[:, input_views:] if packed.shape[1] > input_views else packed


def random_rows(packed: Tensor, n_rows: int, generator: torch.Generator, first_views: int = 0) -> Tensor:
    """``n_rows`` pixels (B, n_rows, 9) drawn uniformly (with replacement) per object among every
    view of packed views (B, V, H, W, 9), or among its first ``first_views`` views when > 0.
    Drawn on the CPU ``generator``; made on the device of ``packed``."""
    b, v, h, w, c = packed.shape
    views = min(first_views, v) if first_views > 0 else v
    idx = torch.randint(views * h * w, (b, n_rows), generator=generator).to(packed.device)
    return packed.reshape(b, v * h * w, c).gather(1, idx[..., None].expand(b, n_rows, c))


def shuffle_views(packed: Tensor, generator: torch.Generator) -> Tensor:
    """Packed views (B, V, ...) with each object's views in a random order (CPU ``generator``)."""
    order = torch.stack([torch.randperm(packed.shape[1], generator=generator) for _ in range(packed.shape[0])])
    return packed[torch.arange(packed.shape[0], device=packed.device)[:, None], order.to(packed.device)]


def jitter_rows(rows: Tensor, n_samples: int, generator: torch.Generator) -> Tensor:
    """Shift each segment (rows (B, N, 6+)) along itself by a uniform fraction in [-1/2, 1/2) of
    one of its ``n_samples`` bins, so that the deterministic midpoints of the renderer become
    stratified samples (one random offset per ray); drawn on the CPU ``generator``."""
    shift = (torch.rand(*rows.shape[:-1], 1, generator=generator, dtype=torch.float64) - 0.5) / n_samples
    shift = shift.to(dtype=rows.dtype, device=rows.device)
    return torch.cat([rows[..., :3] + shift * rows[..., 3:6], rows[..., 3:]], dim=-1)


def view_tokens(packed: Tensor, n_views: int, patch: int) -> Tensor:
    """TransINR's view tokens: the first ``n_views`` packed views (B, V, H, W, 9) -> patches
    (B, n_views * (H/p) * (W/p), p * p * 9), row-major within each view; per pixel its ray start,
    unit direction and colour (the paper's origin + direction + RGB)."""
    b, _, h, w, _ = packed.shape
    if h % patch or w % patch:
        raise ValueError(f"patch_size {patch} does not divide the views' size {h}x{w}")
    x = packed[:, :n_views]
    extent = x[..., 3:6]
    x = torch.cat([x[..., :3], extent / extent.norm(dim=-1, keepdim=True).clamp_min(1e-12), x[..., 6:]], dim=-1)
    v, kh, kw = x.shape[1], h // patch, w // patch
    x = x.reshape(b, v, kh, patch, kw, patch, 9).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, v * kh * kw, patch * patch * 9)


def grid_png(views: Tensor, max_cols: int = 8, background: float = 1.0) -> bytes:
    """Views (V, H, W, 3) in [0, 1] (or one (H, W, 3)) as an 8-bit PNG grid: one row of up to
    ``max_cols`` views, then the next; empty cells are ``background``."""
    from PIL import Image

    x = views.detach().float().clamp(0, 1).cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"views to write must be (V, H, W, 3) or (H, W, 3), got {tuple(views.shape)}")
    v, h, w, _ = x.shape
    cols = min(v, max_cols)
    rows = math.ceil(v / cols)
    canvas = torch.full((rows * cols, h, w, 3), float(background))
    canvas[:v] = x
    canvas = canvas.reshape(rows, cols, h, w, 3).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    buf = io.BytesIO()
    Image.fromarray((canvas.numpy() * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
