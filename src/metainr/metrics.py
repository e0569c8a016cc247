"""Per-signal metrics: PSNR and SSIM. Always one number per signal, never batch-level."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mse_per_signal(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target: (B, ...) -> (B,) mean squared error over everything but the signal dim."""
    return ((pred - target) ** 2).flatten(1).mean(dim=1)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, clamp: bool = True) -> Tensor:
    """Per-signal PSNR in dB, predictions clamped to [0, data_range] unless ``clamp=False``.

    pred, target: (B, ...) -> (B,). A perfect fit gives +inf; cap it when averaging.
    """
    if clamp:
        pred = pred.clamp(0.0, data_range)
    return 10.0 * torch.log10(data_range**2 / mse_per_signal(pred, target))


def mean_psnr(values: Tensor, cap: float = 60.0) -> float:
    """Mean of per-signal PSNRs, each capped (above ~60 dB differences are float noise)."""
    return float(values.clamp(max=cap).mean())


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5, device: torch.device | None = None) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0, band_values: int = 1 << 21) -> Tensor:
    """Per-signal SSIM with a Gaussian window (sigma 1.5), averaged over channels.

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)`` on the interior (valid) region.
    pred, target: (B, H, W, C) -> (B,). Computed in bands of output rows (each with its window's
    halo) of about ``band_values`` values, so memory stays bounded at any image size.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim expects two (B, H, W, C) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}")
    b, h, w, c = pred.shape
    win = _gaussian_window(device=pred.device)
    k = win.numel()
    if h < k or w < k:
        raise ValueError(f"ssim needs images of at least {k}x{k} pixels, got {h}x{w}")
    kh = win.view(1, 1, k, 1).repeat(c, 1, 1, 1)
    kw = win.view(1, 1, 1, k).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    rows_out = h - k + 1
    band = max(1, band_values // max(1, b * w * c) - (k - 1))
    total = pred.new_zeros(b, dtype=torch.float64)
    for r0 in range(0, rows_out, band):
        r1 = min(r0 + band, rows_out)
        x = pred[:, r0:r1 + k - 1].clamp(0.0, data_range).permute(0, 3, 1, 2).double()
        y = target[:, r0:r1 + k - 1].permute(0, 3, 1, 2).double()
        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        cxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        total += s.sum(dim=(1, 2, 3))
    return (total / (rows_out * (w - k + 1) * c)).to(pred.dtype)
