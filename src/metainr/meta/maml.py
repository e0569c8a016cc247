"""MAML (second order), first-order MAML and Meta-SGD: one learner, three settings."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..fields import Field
from .base import Context, Learner, LearnerConfig, signal_context
from ..functional import (LearningRates, Params, chunked_mse_grad, functional_inner_loop, sgd_inner_loop,
                          signal_mse)


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

    def adapt(self, coords: Tensor, values: Tensor) -> Params:
        """K inner steps of ONE signal from the init, differentiable w.r.t. the meta-parameters.

        coords: (M, d) and values: (M, C) are the context the inner loop may see.
        """
        return sgd_inner_loop(
            self.field, self.init_params(), coords, values, self.config.inner_steps,
            self.inner_lrs(), create_graph=not self.config.first_order,
        )

    def outer_gradient(self, fast: Params, coords: Tensor, values: Tensor) -> tuple[Tensor, Params]:
        """Outer loss of ONE signal at its adapted params and its gradient w.r.t. them (first
        order, in coordinate chunks). coords: (N, d); values: (N, C): the whole signal."""
        return chunked_mse_grad(self.field, fast, coords, values, self.config.chunk_coords)

    def adapted_loss(self, coords: Tensor, values: Tensor, context: Tensor | None = None) -> Tensor:
        """Outer loss of ONE signal after K inner steps on its context (differentiable)."""
        ctx = slice(None) if context is None else context
        fast = self.adapt(coords[ctx], values[ctx])
        return signal_mse(self.field, fast, coords, values)

    def meta_gradient(self, coords: Tensor, values: Tensor,
                      context: Context = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        names, meta = zip(*self.named_parameters())
        batch = values.shape[0]
        if self.config.batching == "vmap":
            if context is not None and not isinstance(context, Tensor):
                raise ValueError("batching='vmap' needs one context shared by the meta-batch; use batching='loop'")
            ctx = slice(None) if context is None else context
            losses = torch.vmap(self._functional_adapted_loss, in_dims=(None, 0, None, 0))(
                coords[ctx], values[:, ctx], coords, values)
            grads = torch.autograd.grad(losses.mean(), meta, allow_unused=True)
            total = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, meta, grads)}
            return {"loss": float(losses.detach().mean())}, total
        # one signal at a time: its second-order graph is freed before the next one is built, and
        # the outer loss is a chunked first-order pass followed by ONE vector-Jacobian product
        # through the inner loop, so only the inner loop's activations are alive at once
        total, loss = self._zero_grads(), 0.0
        for b in range(batch):
            ctx = signal_context(context, b)
            ctx = slice(None) if ctx is None else ctx
            fast = self.adapt(coords[ctx], values[b][ctx])
            signal_loss, outer = self.outer_gradient(fast, coords, values[b])
            grads = torch.autograd.grad(list(fast.values()), meta, [outer[n] / batch for n in fast],
                                        allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += g
            loss += float(signal_loss) / batch
        return {"loss": loss}, total

    def _functional_adapted_loss(self, context_coords: Tensor, context_values: Tensor, coords: Tensor,
                                 values: Tensor) -> Tensor:
        fast = functional_inner_loop(
            self.field, self.init_params(), context_coords, context_values, self.config.inner_steps,
            self.inner_lrs(), create_graph=not self.config.first_order,
        )
        return signal_mse(self.field, fast, coords, values)


def MetaSGD(field: Field, **overrides) -> MAML:
    """MAML with a learned per-parameter inner step size (Li et al. 2017)."""
    return MAML(field, meta_sgd=True, **overrides)


def FOMAML(field: Field, **overrides) -> MAML:
    """MAML with the inner gradients detached (first order)."""
    return MAML(field, first_order=True, **overrides)
