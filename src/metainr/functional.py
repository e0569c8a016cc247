"""The functional core: a field's params are a dict of tensors, and everything is a function of it."""
from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LearningRates = Union[float, Mapping[str, Tensor]]


def field_params(field: nn.Module) -> Params:
    """The field's own parameters as a name -> tensor dict (the init it was built with)."""
    return {name: p for name, p in field.named_parameters()}


def predict(field: nn.Module, params: Params, coords: Tensor) -> Tensor:
    """Evaluate a field with the given params: coords (N, d) -> values (N, C)."""
    return functional_call(field, params, (coords,))


def predict_with_features(field: nn.Module, params: Params, coords: Tensor) -> tuple[Tensor, Tensor]:
    """coords (N, d) -> (values (N, C), penultimate features (N, F)) from one forward pass."""
    return functional_call(field, params, (coords,), {"return_features": True})


def coordinate_chunks(n: int, chunk: int) -> list[slice]:
    """Slices of at most ``chunk`` (>= 1) items covering ``range(n)``."""
    chunk = max(1, int(chunk))
    return [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def chunked_mse_grad(field: nn.Module, params: Params, coords: Tensor, values: Tensor,
                     chunk: int) -> tuple[Tensor, Params]:
    """MSE of ONE signal and its (first-order) gradient w.r.t. ``params``, accumulated over
    coordinate chunks so that at most ``chunk`` coordinates' activations are alive at once.

    params are treated as leaves (no graph to earlier computations is kept). coords: (N, d);
    values: (N, C). Returns (scalar loss, name -> gradient).
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    total = values.numel()
    loss = torch.zeros((), dtype=values.dtype)
    grads = {n: torch.zeros_like(p) for n, p in leaves.items()}
    for idx in coordinate_chunks(coords.shape[0], chunk):
        with torch.enable_grad():
            part = ((predict(field, leaves, coords[idx]) - values[idx]) ** 2).sum() / total
            for g, d in zip(grads.values(), torch.autograd.grad(part, list(leaves.values()))):
                g += d
        loss += part.detach()
    return loss, grads


def signal_mse(field: nn.Module, params: Params, coords: Tensor, values: Tensor) -> Tensor:
    """Mean squared error of ONE signal over its coordinates and channels (a scalar)."""
    return ((predict(field, params, coords) - values) ** 2).mean()


def sgd_step(params: Params, grads: Mapping[str, Tensor], lrs: LearningRates) -> Params:
    """``theta - lr * g``, with a scalar lr or one lr tensor per parameter (Meta-SGD)."""
    if isinstance(lrs, (int, float)):
        return {n: p - lrs * grads[n] for n, p in params.items()}
    return {n: p - lrs[n] * grads[n] for n, p in params.items()}


def sgd_inner_loop(
    field: nn.Module,
    params: Params,
    coords: Tensor,
    values: Tensor,
    steps: int,
    lrs: LearningRates,
    create_graph: bool,
) -> Params:
    """K steps of gradient descent on one signal.

    With ``create_graph`` the result is differentiable through the inner gradients (second-order
    MAML); without it the inner gradients are constants (first-order), while the result still
    depends on the initial params (and on learned lrs) through the update itself.
    """
    for _ in range(steps):
        loss = signal_mse(field, params, coords, values)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = sgd_step(params, dict(zip(params, grads)), lrs)
    return params


def functional_inner_loop(
    field: nn.Module,
    params: Params,
    coords: Tensor,
    values: Tensor,
    steps: int,
    lrs: LearningRates,
    create_graph: bool,
) -> Params:
    """The same inner loop written with ``torch.func.grad``, so it can be ``vmap``-ed over signals."""
    grad_fn = torch.func.grad(lambda p: signal_mse(field, p, coords, values))
    for _ in range(steps):
        grads = grad_fn(params)
        if not create_graph:
            grads = {n: g.detach() for n, g in grads.items()}
        params = sgd_step(params, grads, lrs)
    return params

