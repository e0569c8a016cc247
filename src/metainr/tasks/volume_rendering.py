"""NeRF volume rendering as plain functions of the caller's field (in the style of nerfacc).

A ray is ``o + t d``; a field ``field_fn(params, points (P, 3)) -> raw (P, 4)`` (the house
:data:`metainr.functional.FieldFn`) gives, at each point, a raw density ``raw[:, 0]`` and raw
colour ``raw[:, 1:4]``. Conventions:

- density ``sigma = relu(raw[:, 0])`` (the original NeRF's; ``density="softplus"`` gives
  ``softplus(raw[:, 0])``, smooth and never exactly zero), colour ``sigmoid(raw[:, 1:4])``;
- samples are at depths ``t`` (R, S) in units of the direction's length (directions need not be
  unit: intervals are scaled by ``|d|``, so ``sigma`` is per unit of world length);
- ``delta_i = t_{i+1} - t_i`` and the LAST delta repeats the one before it (not NeRF's 1e10):
  with the midpoints of :func:`stratified_depths` every delta is ``(far - near) / S`` and the
  quadrature covers exactly ``far - near`` of the ray, so a transparent field shows the
  background and nothing past ``far`` is made opaque;
- ``alpha_i = 1 - exp(-sigma_i delta_i)``, transmittance ``T_i = prod_{j<i} (1 - alpha_j)`` (the
  exclusive cumulative product, computed as ``exp(-exclusive cumsum(sigma delta))``: the same
  number, without a division or an epsilon), weights ``w_i = T_i alpha_i``, opacity ``sum_i w_i``,
  colour ``sum_i w_i c_i + (1 - opacity) * background``.

Everything works under ``torch.vmap`` over signals (no data-dependent control flow, no
in-place ops, no ``.item()``), to any order of differentiation and in any dtype and device: each
tensor is made like the rays. Random sampling (``generator``) inside ``vmap`` needs
``vmap(..., randomness="same" | "different")``; the default (midpoints) needs nothing.
Query rows of a views task are rays ``(ox, oy, oz, dx, dy, dz)`` (R, 6): see :func:`split_rays`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F

from ..functional import FieldFn

DENSITIES = ("relu", "softplus")


def split_rays(query: Tensor) -> tuple[Tensor, Tensor]:
    """Query rows (..., R, 6) -> origins (..., R, 3), directions (..., R, 3)."""
    if query.shape[-1] != 6:
        raise ValueError(f"ray query rows must be (..., R, 6) (origin, direction), got {tuple(query.shape)}")
    return query[..., :3], query[..., 3:]


def stratified_depths(near: Tensor | float, far: Tensor | float, n_samples: int, n_rays: int,
                      generator: torch.Generator | None = None, like: Tensor | None = None) -> Tensor:
    """Sample depths t (R, S): one per equal bin of [near, far], ascending along each ray.

    near, far: floats or tensors broadcastable to (R, 1). Without ``generator``: the bin midpoints
    (deterministic); with it: one uniform point in each bin (NeRF's stratified sampling). dtype
    and device follow ``like`` (else ``near``/``far`` when tensors, else the defaults).
    """
    if n_samples < 2:
        raise ValueError(f"volume rendering needs n_samples >= 2, got {n_samples}")
    ref = like if like is not None else next((x for x in (near, far) if isinstance(x, Tensor)), None)
    kw = dict(dtype=ref.dtype, device=ref.device) if ref is not None else {}
    near = torch.as_tensor(near, **kw)
    far = torch.as_tensor(far, **kw)
    if generator is None:
        u = torch.full((n_rays, n_samples), 0.5, **kw)
    else:
        u = torch.rand(n_rays, n_samples, generator=generator, dtype=torch.float64, device=generator.device).to(**kw)
    frac = (torch.arange(n_samples, **kw) + u) / n_samples  # (R, S) in [0, 1)
    return near + (far - near) * frac


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, background: Tensor | float = 1.0,
              ray_scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite samples along rays (conventions in the module docstring).

    sigma: (R, S) densities >= 0; rgb: (R, S, 3) colours; t: (R, S) ascending depths (S >= 2);
    background: float, (3,) or (R, 3); ray_scale: the directions' lengths, float or (R, 1)
    (intervals are ``delta * ray_scale``). Returns colour (R, 3), weights (R, S), opacity (R,).
    """
    if t.shape[-1] < 2:
        raise ValueError(f"compositing needs at least 2 samples per ray, got t {tuple(t.shape)}")
    gaps = t[..., 1:] - t[..., :-1]
    deltas = torch.cat([gaps, gaps[..., -1:]], dim=-1) * ray_scale  # (R, S): the last repeats the one before
    optical = sigma * deltas
    alpha = 1.0 - torch.exp(-optical)
    before = torch.cumsum(optical, dim=-1) - optical  # exclusive cumsum: optical depth before sample i
    weights = torch.exp(-before) * alpha
    opacity = weights.sum(dim=-1)
    colour = (weights[..., None] * rgb).sum(dim=-2)
    bg = torch.as_tensor(background, dtype=colour.dtype, device=colour.device)
    return colour + (1.0 - opacity)[..., None] * bg, weights, opacity


def raw_to_density_colour(raw: Tensor, density: str = "relu") -> tuple[Tensor, Tensor]:
    """raw (..., 4) -> density (...,) (relu or softplus of channel 0), colour (..., 3) (sigmoid)."""
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    sigma = F.relu(raw[..., 0]) if density == "relu" else F.softplus(raw[..., 0])
    return sigma, torch.sigmoid(raw[..., 1:4])


def sample_points(origins: Tensor, directions: Tensor, t: Tensor) -> Tensor:
    """Points ``o + t d``: origins, directions (R, 3), t (R, S) -> (R, S, 3)."""
    return origins[..., None, :] + t[..., None] * directions[..., None, :]


def render_rays(field_fn: FieldFn, params: Mapping[str, Tensor], origins: Tensor, directions: Tensor,
                near: Tensor | float, far: Tensor | float, n_samples: int, background: Tensor | float = 1.0,
                generator: torch.Generator | None = None, density: str = "relu",
                return_opacity: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Render ONE signal's rays through its field: origins, directions (R, 3) -> colour (R, 3).

    ``field_fn(params, points (R*S, 3)) -> raw (R*S, 4)`` is evaluated once on all samples;
    ``n_samples`` depths per ray from :func:`stratified_depths` (midpoints without ``generator``);
    density ``relu`` (default) or ``softplus`` of the raw channel 0, colour ``sigmoid`` of 1:4;
    background: float, (3,) or (R, 3). With ``return_opacity``: (colour (R, 3), opacity (R,)).
    """
    n_rays = origins.shape[-2]
    t = stratified_depths(near, far, n_samples, n_rays, generator, like=origins)
    points = sample_points(origins, directions, t)  # (R, S, 3)
    raw = field_fn(params, points.reshape(-1, 3))
    sigma, rgb = raw_to_density_colour(raw.reshape(n_rays, n_samples, raw.shape[-1]), density)
    colour, _, opacity = composite(sigma, rgb, t, background, directions.norm(dim=-1, keepdim=True))
    return (colour, opacity) if return_opacity else colour


def render_query(field_fn: FieldFn, params: Mapping[str, Tensor], query: Tensor, near: Tensor | float,
                 far: Tensor | float, n_samples: int, background: Tensor | float = 1.0,
                 generator: torch.Generator | None = None, density: str = "relu") -> Tensor:
    """:func:`render_rays` of query rows (R, 6) ``(origin, direction)`` -> colour (R, 3): the body
    of a views task's ``observe(field_fn, params, query)``."""
    origins, directions = split_rays(query)
    return render_rays(field_fn, params, origins, directions, near, far, n_samples, background, generator, density)
