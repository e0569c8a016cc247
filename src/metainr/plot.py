"""Plots as plain functions: curves, image grids and training logs, written atomically as PNG."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from .disk import atomic_write_bytes  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_psnr_curves(steps: Sequence[int], curves: Mapping[str, Sequence[float]], path: str | Path,
                     title: str = "held-out PSNR vs test-time steps") -> None:
    """One line per method: mean PSNR (dB) against the number of fitting steps (symlog x)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in curves.items():
        ax.plot(steps, ys, marker="o", ms=3, label=label)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("test-time steps")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_image_grid(rows: Mapping[str, Tensor], path: str | Path, max_cols: int = 8) -> None:
    """rows: label -> images (n, H, W, C) in [0, 1]; one labelled row per entry."""
    n_cols = min(max_cols, min(r.shape[0] for r in rows.values()))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.4 * n_cols, 1.5 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            img = images[c].detach().clamp(0, 1).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    _save(fig, path)


def plot_training(records: Sequence[dict], path: str | Path) -> None:
    """Outer loss (log scale) and, where logged, validation PSNR against the outer step."""
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="outer loss")
    ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("outer loss (MSE)")
    val = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*np.array(val).T, color="tab:orange", marker="o", ms=3, label="val PSNR")
        ax2.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_selected(image: Tensor, masks: Mapping[str, Tensor], path: str | Path) -> None:
    """The image, then one panel per mask (H, W) bool: kept coordinates drawn over a dimmed copy."""
    img = image.detach().clamp(0, 1).cpu().numpy()
    grey = img.mean(axis=-1)
    fig, axes = plt.subplots(1, 1 + len(masks), figsize=(2.2 * (1 + len(masks)), 2.4), squeeze=False)
    axes[0][0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title("signal", fontsize=9)
    for ax, (label, mask) in zip(axes[0][1:], masks.items()):
        overlay = np.stack([0.35 * grey] * 3, axis=-1)
        overlay[mask.cpu().numpy()] = (1.0, 0.25, 0.1)
        ax.imshow(overlay, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
