"""TransINR (Chen & Wang, ECCV 2022): a transformer hypernetwork that outputs a whole field.

Input tokens (image patches + learned positions) and learned weight tokens go through a pre-LN
transformer encoder. Each weight-token output -> LayerNorm -> Linear gives one group vector of
length ``d_in``; layer l (``d_out x d_in`` weight) gets ``g = min(n_groups, d_out)`` tokens and
output unit j uses group ``j mod g``. The layer weight is the field's learned base weight times
the tiled group vectors, then each unit's input vector (a column in the paper's ``x @ W`` form,
a row of our ``(d_out, d_in)`` weight) is L2-normalised. Biases are the learned base biases.

The result is an ordinary params dict with a leading signal dimension, so ``fit`` can refine it.
The tokenizer is the only image-specific part: :meth:`TransINR.tokens` maps observations to
``(B, T, dim)``; another signal type (CT sinograms, posed views with ray origin + direction
channels) plugs in by overriding it with its own patch layout.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..fields import Field, Linear
from ..fit import batched_predict
from .base import Context, Learner, LearnerConfig, TestRule


def auto_patch_size(image_size: int, max_patches_per_side: int = 8) -> int:
    """The smallest divisor p of ``image_size`` with ``image_size / p <= max_patches_per_side``."""
    return next(p for p in range(1, image_size + 1) if image_size % p == 0 and image_size // p <= max_patches_per_side)


class TransINR(Learner):
    """Hypernetwork learner: ``signal_init(coords, values)`` builds each signal's field in one pass."""

    def __init__(self, field: Field, config: LearnerConfig | None = None, **overrides) -> None:
        if config is None:
            config = LearnerConfig(**{**TRANSINR_DEFAULTS, **overrides})
        elif overrides:
            raise TypeError("pass either a LearnerConfig or keyword arguments, not both")
        if config.image_size <= 0:
            raise ValueError("transinr needs image_size > 0 (the side of its square input images)")
        patch = config.patch_size or auto_patch_size(config.image_size)
        if config.image_size % patch:
            raise ValueError(f"patch_size {patch} does not divide image_size {config.image_size}")
        config = dataclasses.replace(config, patch_size=patch)
        super().__init__(field, config)
        layers = [(name, m) for name, m in field.named_modules() if isinstance(m, Linear)]
        if any(m.factorized for _, m in layers):
            raise ValueError("transinr modulates plain weights; build the field without rwf")
        self._layers = [(name, m.out_dim, m.in_dim, min(config.n_groups, m.out_dim)) for name, m in layers]
        dim, channels = config.hyper_dim, field.config.out_dim
        self.n_patches = (config.image_size // patch) ** 2
        self.patch_embed = nn.Linear(patch * patch * channels, dim)
        self.pos_embed = nn.Parameter(torch.randn(self.n_patches, dim) * 0.02)
        self.weight_tokens = nn.Parameter(torch.randn(sum(g for *_, g in self._layers), dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, config.hyper_heads, dim_feedforward=4 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, config.hyper_depth, enable_nested_tensor=False)
        self.token_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, d_in)) for _, _, d_in, _ in self._layers
        )

    def test_rule(self) -> TestRule:
        return TestRule(self.config.inner_optimizer, self.config.inner_lr)  # type: ignore[arg-type]

    def tokens(self, values: Tensor) -> Tensor:
        """values: (B, H*W, C) pixels of square images -> patch tokens (B, n_patches, dim)."""
        b, n, c = values.shape
        side, p = self.config.image_size, self.config.patch_size
        if n != side * side:
            raise ValueError(f"transinr was built for {side}x{side} images, got {n} pixels")
        k = side // p
        patches = values.reshape(b, k, p, k, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, k * k, p * p * c)
        return self.patch_embed(patches) + self.pos_embed

    def hyper_params(self, values: Tensor) -> dict[str, Tensor]:
        """values: (B, N, C) -> params name -> (B, *shape), differentiable w.r.t. the learner."""
        batch = values.shape[0]
        x = torch.cat([self.tokens(values), self.weight_tokens.expand(batch, -1, -1)], dim=1)
        out = self.encoder(x)[:, self.n_patches:]
        params, start = {}, 0
        for (name, d_out, _, g), head in zip(self._layers, self.token_heads):
            groups = head(out[:, start:start + g])  # (B, g, d_in)
            start += g
            weight = self.field.get_parameter(f"{name}.weight") * groups[:, torch.arange(d_out) % g]
            params[f"{name}.weight"] = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            params[f"{name}.bias"] = self.field.get_parameter(f"{name}.bias").expand(batch, -1)
        return params

    def signal_init(self, coords: Tensor, values: Tensor) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.hyper_params(values).items()}

    def meta_gradient(self, coords: Tensor, values: Tensor,
                      context: Context = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        if context is not None:
            raise ValueError("transinr encodes whole images; it takes no inner-loop context")
        pred = batched_predict(self.field, self.hyper_params(values), coords)
        loss = ((pred - values) ** 2).flatten(1).mean(dim=1).mean()
        names, meta = zip(*self.named_parameters())
        grads = torch.autograd.grad(loss, meta, allow_unused=True)
        return {"loss": float(loss.detach())}, {
            n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, meta, grads)}


# what a transinr learner uses unless told otherwise: no inner loop in training; test-time
# refinement of the produced field with Adam at a small step size
TRANSINR_DEFAULTS = {"kind": "transinr", "inner_steps": 0, "inner_optimizer": "adam", "inner_lr": 1e-3}
