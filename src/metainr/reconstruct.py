"""CT reconstruction from sparse views: fields fitted to sinograms, and the classical baselines.

Every method maps sinograms ``(B, n, V)`` (scikit-image units, see :mod:`metainr.signals.ct`)
taken at ``angles`` (V,) degrees to images ``(B, n, n)``:

- a field (a meta-learned or a random init) fitted to the line integrals of the views:
  :func:`fit_observations` + :func:`~metainr.signals.ct.render`, wrapped by :func:`field_recon`;
- filtered back-projection, :func:`fbp` (``skimage.transform.iradon``);
- SART, :func:`sart` (``skimage.transform.iradon_sart``, one call per iteration).

Quality is measured inside the reconstruction circle (:func:`circle_psnr`), where a scanner
measures anything at all; outside it every method's image is zero by construction.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .fit import _per_signal
from .functional import LearningRates, Params
from .metrics import ssim
from .signals.ct import RayIntegral, circle_mask, parallel_beam_rays, render, sinogram_to_values

FBP_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def fit_observations(
    model: nn.Module,
    init: Mapping[str, Tensor],
    coords: Tensor,
    values: Tensor,
    steps: int,
    *,
    optimizer: Literal["sgd", "adam"] = "adam",
    lr: LearningRates = 1e-3,
    record: Sequence[int] | None = None,
) -> dict[int, Params]:
    """Fit every signal's params so that ``model(coords)`` matches its observations.

    The same optimisation as :func:`metainr.fit.fit` (loss = sum over signals of each signal's MSE,
    so every signal is fitted as if alone), for any observation model (a :class:`RayIntegral`
    here), returning the params at each step of ``record`` (default: the last) so that a caller
    can score the rendered images along the way.

    init: name -> shape (shared) or (B, *shape); coords: (N, d); values: (B, N, C).
    Returns step -> params name -> (B, *shape).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    batch = values.shape[0]
    record = sorted({min(max(int(s), 0), steps) for s in (record if record is not None else [steps])})
    shapes = {n: p.shape for n, p in model.named_parameters()}
    params = {n: _per_signal(p, shapes[n], batch).requires_grad_(True) for n, p in init.items()}
    adam = torch.optim.Adam(params.values(), lr=float(lr)) if optimizer == "adam" else None  # type: ignore[arg-type]
    predict = torch.vmap(lambda p: functional_call(model, p, (coords,)))
    out: dict[int, Params] = {}
    for step in range(steps + 1):
        if step in record:
            out[step] = {n: p.detach().clone() for n, p in params.items()}
        if step == record[-1]:
            break
        with torch.enable_grad():
            loss = ((predict(params) - values) ** 2).flatten(1).mean(dim=1).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            if adam is not None:
                for p, g in zip(params.values(), grads):
                    p.grad = g
                adam.step()
            else:
                for (n, p), g in zip(params.items(), grads):
                    p.sub_((lr if isinstance(lr, (int, float)) else lr[n]) * g)
    return out


def field_recon(obs: RayIntegral, init: Mapping[str, Tensor], sinograms: Tensor, angles: Tensor, steps: int, *,
                optimizer: Literal["sgd", "adam"], lr: LearningRates,
                record: Sequence[int] | None = None) -> dict[int, Tensor]:
    """Fit a field from ``init`` to sinograms (B, n, V) at ``angles`` (V,) degrees; returns
    step -> images (B, n, n) for every recorded step (default: the last)."""
    rays = parallel_beam_rays(angles, obs.size)
    fitted = fit_observations(obs, init, rays, sinogram_to_values(sinograms.float()), steps, optimizer=optimizer,
                              lr=lr, record=record)
    with torch.no_grad():
        return {s: render(obs, p)[..., 0] for s, p in fitted.items()}


def fbp(sinograms: Tensor, angles: Tensor, filter_name: str = "ramp") -> Tensor:
    """Filtered back-projection (scikit-image): sinograms (B, n, V), angles (V,) -> images (B, n, n)."""
    from skimage.transform import iradon

    if filter_name not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose from {FBP_FILTERS}")
    theta = np.asarray(angles, dtype=np.float64)
    n = sinograms.shape[-2]
    images = [iradon(s.double().numpy(), theta=theta, filter_name=filter_name, circle=True, output_size=n)
              for s in sinograms]
    return torch.from_numpy(np.stack(images)).float()


def sart(sinograms: Tensor, angles: Tensor, iterations: int, relaxation: float = 0.15,
         clip: Sequence[float] | None = None, record: Sequence[int] | None = None) -> dict[int, Tensor]:
    """SART (scikit-image): sinograms (B, n, V) -> iteration -> images (B, n, n) for each iteration
    count in ``record`` (default: the last); iteration 0 is the zero image. ``clip`` = (low, high)
    constrains every iterate (e.g. (0, 1): non-negative attenuation below the known maximum)."""
    from skimage.transform import iradon_sart

    theta = np.asarray(angles, dtype=np.float64)
    record = sorted(set(record if record is not None else [iterations]))
    n = sinograms.shape[-2]
    current = [np.zeros((n, n)) for _ in range(sinograms.shape[0])]
    out = {0: torch.zeros(sinograms.shape[0], n, n)} if 0 in record else {}
    for it in range(1, max(record) + 1):
        current = [iradon_sart(s.double().numpy(), theta=theta, image=img, relaxation=relaxation,
                               clip=None if clip is None else tuple(clip))
                   for s, img in zip(sinograms, current)]
        if it in record:
            out[it] = torch.from_numpy(np.stack(current)).float()
    return out


def circle_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR (dB) over the pixels inside the reconstruction circle, predictions clamped
    to [0, 1]: pred, target (B, n, n) -> (B,)."""
    inside = circle_mask(target.shape[-1])
    err = (pred.clamp(0.0, 1.0) - target)[:, inside]
    return 10.0 * torch.log10(1.0 / (err**2).mean(dim=1))


def circle_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM of predictions clamped to [0, 1] and zeroed outside the reconstruction circle
    (the targets are zero there): (B, n, n) -> (B,)."""
    inside = circle_mask(target.shape[-1])
    return ssim((pred.clamp(0.0, 1.0) * inside)[..., None], target[..., None])
