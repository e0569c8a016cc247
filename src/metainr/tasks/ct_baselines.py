"""Classical CT reconstruction (scikit-image's FBP and SART) and the image scores every CT method
is compared with.

Every method maps sinograms ``(B, n, V)`` (scikit-image units, see :mod:`.ct_geometry`) taken
at ``angles`` (V,) degrees to images ``(B, n, n)``. A field is fitted to the same scan with
:func:`metainr.fit` on :meth:`CTTask.scan <metainr.tasks.ct.CTTask.scan>`, whose metrics are
:func:`circle_psnr` and :func:`circle_ssim`. Quality is measured inside the reconstruction circle,
where a scanner measures anything at all; outside it every method's image is zero by construction.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.ct import circle_mask
from ..metrics import psnr, ssim

FBP_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def _angles(angles: Tensor | Sequence[float]) -> np.ndarray:
    return np.asarray(angles.detach().cpu() if isinstance(angles, Tensor) else angles, dtype=np.float64).reshape(-1)


def fbp(sinograms: Tensor, angles: Tensor | Sequence[float], filter_name: str = "ramp") -> Tensor:
    """Filtered back-projection (``skimage.transform.iradon``): sinograms (B, n, V), angles (V,)
    degrees -> images (B, n, n) float32, on the sinograms' device."""
    from skimage.transform import iradon

    if filter_name not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose from {FBP_FILTERS}")
    theta = _angles(angles)
    n = sinograms.shape[-2]
    images = [iradon(s, theta=theta, filter_name=filter_name, circle=True, output_size=n)
              for s in sinograms.detach().double().cpu().numpy()]
    return torch.from_numpy(np.stack(images)).float().to(sinograms.device)


def sart(sinograms: Tensor, angles: Tensor | Sequence[float], iterations: int, relaxation: float = 0.15,
         clip: Sequence[float] | None = None, record: Sequence[int] | None = None) -> dict[int, Tensor]:
    """SART (``skimage.transform.iradon_sart``, one call per iteration): sinograms (B, n, V) ->
    iteration -> images (B, n, n) for each iteration count in ``record`` (default: the last);
    iteration 0 is the zero image. ``clip`` = (low, high) constrains every iterate (e.g. (0, 1):
    non-negative attenuation below the known maximum)."""
    from skimage.transform import iradon_sart

    theta = _angles(angles)
    record = sorted(set(record if record is not None else [iterations]))
    b, n = sinograms.shape[0], sinograms.shape[-2]
    arrays = sinograms.detach().double().cpu().numpy()
    current = [np.zeros((n, n)) for _ in range(b)]
    out = {0: torch.zeros(b, n, n, device=sinograms.device)} if 0 in record else {}
    for it in range(1, max(record) + 1):
        current = [iradon_sart(s, theta=theta, image=img, relaxation=relaxation,
                               clip=None if clip is None else tuple(clip)) for s, img in zip(arrays, current)]
        if it in record:
            out[it] = torch.from_numpy(np.stack(current)).float().to(sinograms.device)
    return out


def circle_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR (dB, :func:`metainr.metrics.psnr`) over the pixels inside the reconstruction
    circle, predictions clamped to [0, 1]: pred, target (B, n, n) -> (B,)."""
    inside = circle_mask(target.shape[-1], device=target.device)
    return psnr(pred[:, inside], target[:, inside])


def circle_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM of predictions clamped to [0, 1] and zeroed outside the reconstruction circle
    (the targets are zero there): (B, n, n) -> (B,); images need at least 11 pixels a side."""
    inside = circle_mask(target.shape[-1], device=target.device)
    return ssim((pred.clamp(0.0, 1.0) * inside)[..., None], target[..., None])
