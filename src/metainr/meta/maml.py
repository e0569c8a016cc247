"""MAML (second order), first-order MAML and Meta-SGD: one learner, three settings."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..fields import Field
from .base import Learner, LearnerConfig
from ..functional import LearningRates, functional_inner_loop, sgd_inner_loop, signal_mse


def _key(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "__")


class MAML(Learner):
    """Learned initialisation by gradient descent through K inner SGD steps per signal.

    Inner: ``theta_{k+1} = theta_k - alpha * grad l(theta_k)``; outer: MSE of ``theta_K`` on the
    signal, averaged over the meta-batch. ``first_order`` detaches the inner gradients (FOMAML);
    ``meta_sgd`` makes alpha a learned tensor per parameter, initialised at ``inner_lr``.

    With ``batching="loop"`` each signal's outer gradient is taken as soon as its inner loop ends,
    so only one signal's second-order graph is alive at a time (memory / B); ``"vmap"`` runs
    the whole meta-batch at once with ``torch.func``. Both give the same gradient.
    """

    def __init__(
        self,
        field: Field,
        config: LearnerConfig | None = None,
        *,
        meta_sgd: bool | None = None,
        **overrides,
    ) -> None:
        if config is None:
            kind = "metasgd" if meta_sgd else ("fomaml" if overrides.get("first_order") else "maml")
            config = LearnerConfig(kind=kind, **overrides)
        elif overrides or meta_sgd is not None:
            raise TypeError("pass either a LearnerConfig or keyword arguments, not both")
        if config.kind == "fomaml" and not config.first_order:
            config = dataclasses.replace(config, first_order=True)
        super().__init__(field, config)
        self.lrs = None
        if config.kind == "metasgd":
            self.lrs = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.full_like(p, config.inner_lr)) for n, p in field.named_parameters()}
            )

    def inner_lrs(self) -> LearningRates:
        if self.lrs is None:
            return self.config.inner_lr
        return {n: self.lrs[_key(n)] for n, _ in self.field.named_parameters()}

    def adapted_loss(self, coords: Tensor, values: Tensor) -> Tensor:
        """Outer loss of ONE signal: MSE after K inner steps from the init. values: (N, C)."""
        fast = sgd_inner_loop(
            self.field, self.init_params(), coords, values, self.config.inner_steps,
            self.inner_lrs(), create_graph=not self.config.first_order,
        )
        return signal_mse(self.field, fast, coords, values)

    def meta_gradient(self, coords: Tensor, values: Tensor) -> tuple[dict[str, float], dict[str, Tensor]]:
        names, meta = zip(*self.named_parameters())
        batch = values.shape[0]
        if self.config.batching == "vmap":
            losses = torch.vmap(self._functional_adapted_loss, in_dims=(None, 0))(coords, values)
            grads = torch.autograd.grad(losses.mean(), meta, allow_unused=True)
            total = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, meta, grads)}
            loss = float(losses.detach().mean())
        else:
            total, loss = self._zero_grads(), 0.0
            for b in range(batch):
                signal_loss = self.adapted_loss(coords, values[b])
                grads = torch.autograd.grad(signal_loss / batch, meta, allow_unused=True)
                for n, g in zip(names, grads):
                    if g is not None:
                        total[n] += g
                loss += float(signal_loss.detach()) / batch
        return {"loss": loss}, total

    def _functional_adapted_loss(self, coords: Tensor, values: Tensor) -> Tensor:
        fast = functional_inner_loop(
            self.field, self.init_params(), coords, values, self.config.inner_steps,
            self.inner_lrs(), create_graph=not self.config.first_order,
        )
        return signal_mse(self.field, fast, coords, values)


def MetaSGD(field: Field, **overrides) -> MAML:
    """MAML with a learned per-parameter inner step size (Li et al. 2017)."""
    return MAML(field, meta_sgd=True, **overrides)


def FOMAML(field: Field, **overrides) -> MAML:
    """MAML with the inner gradients detached (first order)."""
    return MAML(field, first_order=True, **overrides)
