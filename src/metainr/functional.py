"""The functional core: a field's params are a dict of tensors, and everything is a function of it.

A *field function* ``field_fn(params, coords) -> values`` evaluates one signal's field; tasks
observe a signal through it (identity, line integrals, volume rendering), and learners and
:func:`metainr.fit` differentiate through it. Nothing here knows which task or learner runs.
"""
from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LearningRates = Union[float, Mapping[str, Tensor]]
FieldFn = Callable[[Mapping[str, Tensor], Tensor], Tensor]
"""``field_fn(params, coords (..., d)) -> values (..., C)``: one signal's field."""


def field_params(field: nn.Module) -> Params:
    """The field's own parameters as a name -> tensor dict (the init it was built with)."""
    return {name: p for name, p in field.named_parameters()}


def field_function(field: nn.Module) -> FieldFn:
    """The field as a pure function of its params: ``(params, coords (N, d)) -> values (N, C)``."""
    return lambda params, coords: functional_call(field, params, (coords,))


def predict(field: nn.Module, params: Mapping[str, Tensor], coords: Tensor) -> Tensor:
    """Evaluate a field with the given params: coords (N, d) -> values (N, C)."""
    return functional_call(field, params, (coords,))


def predict_with_features(field: nn.Module, params: Mapping[str, Tensor], coords: Tensor) -> tuple[Tensor, Tensor]:
    """coords (N, d) -> (values (N, C), penultimate features (N, F)) from one forward pass."""
    return functional_call(field, params, (coords,), {"return_features": True})


def coordinate_chunks(n: int, chunk: int) -> list[slice]:
    """Slices of at most ``chunk`` (>= 1) items covering ``range(n)``."""
    chunk = max(1, int(chunk))
    return [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def sgd_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lrs: LearningRates) -> Params:
    """``theta - lr * g``, with a scalar lr or one lr tensor per parameter (Meta-SGD)."""
    if isinstance(lrs, (int, float)):
        return {n: p - lrs * grads[n] for n, p in params.items()}
    return {n: p - lrs[n] * grads[n] for n, p in params.items()}


class Adam:
    """Functional Adam (Kingma & Ba, PyTorch's defaults) over a params dict.

    Pure tensor arithmetic with Python-float bias corrections: no ``.item()`` and no host sync,
    so it runs on any device (the ``meta`` device included) and inside compiled code.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = float(lr), betas, eps
        self.step_count = 0
        self.m: Params = {}
        self.v: Params = {}

    def step(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Params:
        """The params after one Adam step on ``grads`` (a new dict; state is updated in place)."""
        b1, b2 = self.betas
        self.step_count += 1
        c1, c2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        out = {}
        for n, p in params.items():
            g = grads[n]
            m = self.m[n] = b1 * self.m[n] + (1 - b1) * g if n in self.m else (1 - b1) * g
            v = self.v[n] = b2 * self.v[n] + (1 - b2) * g * g if n in self.v else (1 - b2) * g * g
            out[n] = p - self.lr * (m / c1) / ((v / c2).sqrt() + self.eps)
        return out


def global_norm(grads: Mapping[str, Tensor] | list[Tensor], batched: bool = False) -> Tensor:
    """L2 norm over all tensors: a scalar, or (B,) for tensors with a leading signal dim."""
    tensors = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    if batched:
        return torch.sqrt(sum(t.flatten(1).pow(2).sum(dim=1) for t in tensors))
    return torch.sqrt(sum(t.pow(2).sum() for t in tensors))
