"""TransINR (Chen & Wang, ECCV 2022): a transformer hypernetwork that outputs a whole field.

Input tokens (from the task's tokenizer, + learned positions) and learned weight
tokens go through a pre-LN transformer encoder. Each weight-token output -> LayerNorm -> Linear
gives one group vector of length ``d_in``; layer l (``d_out x d_in`` weight) gets
``g = min(n_groups, d_out)`` tokens and output unit j uses group ``j mod g``. The layer weight is
the field's learned base weight times the tiled group vectors, then each unit's input vector (a
column in the paper's ``x @ W`` form, a row of our ``(d_out, d_in)`` weight) is L2-normalised.
Biases are the learned base biases.

The result is an ordinary params dict with a leading signal dimension, so ``fit`` can refine it.
The tokens come from :meth:`Task.tokens`, so any task with a tokenizer works.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config
from ..fields import Linear
from ..functional import field_function
from ..limits import check_params
from ..tasks.base import Batch, Task, observe_batch
from ..tasks.capabilities import Tokenizable, require
from .base import Learner, TestRule


@dataclass(frozen=True)
class TransINRConfig(Config):
    """The hypernetwork and how its fields are refined at test time."""

    tokens: int = 0
    """input tokens per signal (set from the task's tokenizer)"""
    token_dim: int = 0
    """features per input token (set from the task's tokenizer)"""
    hyper_dim: int = 128
    """token width of the transformer"""
    hyper_depth: int = 4
    """transformer layers"""
    hyper_heads: int = 4
    """attention heads"""
    n_groups: int = 32
    """weight tokens per layer (at most the layer's output width)"""
    test_optimizer: str = "adam"
    """optimiser refining a produced field at test time: sgd | adam"""
    test_lr: float = 1e-3
    """step size of that refinement"""

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.token_dim < 1:
            raise ValueError("transinr needs tokens >= 1 and token_dim >= 1 (the shape of the task's tokens)")
        if min(self.hyper_dim, self.hyper_depth, self.hyper_heads, self.n_groups) < 1 or self.hyper_dim % self.hyper_heads:
            raise ValueError(f"transinr needs positive sizes and hyper_dim divisible by hyper_heads, got hyper_dim="
                             f"{self.hyper_dim}, hyper_depth={self.hyper_depth}, hyper_heads={self.hyper_heads}, "
                             f"n_groups={self.n_groups}")
        if self.test_optimizer not in ("sgd", "adam"):
            raise ValueError(f"test_optimizer must be 'sgd' or 'adam', got {self.test_optimizer!r}")


class TransINR(Learner):
    """Hypernetwork learner: ``signal_init(task, batch)`` builds each signal's field in one pass."""

    Config = TransINRConfig
    name = "transinr"

    def __init__(self, field: nn.Module, config: TransINRConfig | None = None, context=None, **options) -> None:
        super().__init__(field, config, context, **options)
        config = self.config
        if self.policy.prunes or self.context.boot_steps:
            raise ValueError("transinr has no inner loop: it takes no context policy or bootstrap correction")
        layers = [(name, m) for name, m in field.named_modules() if isinstance(m, Linear)]
        if any(m.factorized for _, m in layers):
            raise ValueError("transinr modulates plain weights; build the field without rwf")
        self._layers = [(name, m.out_dim, m.in_dim, min(config.n_groups, m.out_dim)) for name, m in layers]
        dim = config.hyper_dim
        n_weight_tokens = sum(g for *_, g in self._layers)
        check_params(config.hyper_depth * 12 * dim * dim + (config.tokens + n_weight_tokens + config.token_dim) * dim
                     + sum(dim * d_in for _, _, d_in, _ in self._layers), "the transinr hypernetwork")
        self.patch_embed = nn.Linear(config.token_dim, dim)
        self.pos_embed = nn.Parameter(torch.randn(config.tokens, dim) * 0.02)
        self.weight_tokens = nn.Parameter(torch.randn(sum(g for *_, g in self._layers), dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, config.hyper_heads, dim_feedforward=4 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, config.hyper_depth, enable_nested_tensor=False)
        self.token_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, d_in)) for _, _, d_in, _ in self._layers)

    def test_rule(self) -> TestRule:
        return TestRule(self.config.test_optimizer, self.config.test_lr)  # type: ignore[arg-type]

    def hyper_params(self, tokens: Tensor) -> dict[str, Tensor]:
        """tokens (B, T, F) from the task -> params name -> (B, *shape), differentiable."""
        batch, t, f = tokens.shape
        if (t, f) != (self.config.tokens, self.config.token_dim):
            raise ValueError(f"transinr was built for {self.config.tokens} tokens of {self.config.token_dim} "
                             f"features, got {t} of {f}")
        x = torch.cat([self.patch_embed(tokens) + self.pos_embed, self.weight_tokens.expand(batch, -1, -1)], dim=1)
        out = self.encoder(x)[:, t:]
        params, start = {}, 0
        for (name, d_out, _, g), head in zip(self._layers, self.token_heads):
            groups = head(out[:, start:start + g])  # (B, g, d_in)
            start += g
            tiled = groups[:, torch.arange(d_out, device=tokens.device) % g]
            weight = self.field.get_parameter(f"{name}.weight") * tiled
            params[f"{name}.weight"] = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            params[f"{name}.bias"] = self.field.get_parameter(f"{name}.bias").expand(batch, -1)
        return params

    def signal_init(self, task: Task, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            return {n: p.detach() for n, p in self.hyper_params(require(task, Tokenizable).tokens(batch)).items()}

    def meta_gradient(self, task: Task, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        tokens = require(task, Tokenizable).tokens(batch)
        pred = observe_batch(task, field_function(self.field), self.hyper_params(tokens), batch)
        loss = torch.vmap(task.loss)(pred, batch.values).mean()
        names, meta = zip(*self.named_parameters())
        grads = dict(zip(names, torch.autograd.grad(loss, meta, allow_unused=True)))
        dim = self.config.hyper_dim
        for name in names:  # attention is invariant to the key bias: its gradient is 0 up to float noise,
            if name.endswith("self_attn.in_proj_bias") and grads[name] is not None:  # which Adam would turn
                grads[name] = grads[name].clone()  # into full steps of a random walk
                grads[name][dim:2 * dim] = 0
        return {"loss": loss.detach()}, {n: torch.zeros_like(p) if grads[n] is None else grads[n]
                                         for n, p in zip(names, meta)}
