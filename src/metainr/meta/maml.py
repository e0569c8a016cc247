"""MAML (second order), first-order MAML and Meta-SGD: one learner, three settings, any context policy."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..config import Config
from ..functional import LearningRates, Params, field_function
from ..inner_loop import Step, loss_and_grads, take_steps
from ..tasks.base import Batch, Task
from .base import Learner, signal_rows
from .batching import BATCHING, activation_mb, field_evaluations, hessian_vector_product
from .context import bootstrap_correction, bootstrap_target, kept_count, observes_directly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MAMLConfig(Config):
    """MAML, first-order MAML and Meta-SGD."""

    inner_steps: int = 3
    """inner-loop SGD steps K per signal during meta-training"""
    inner_lr: float = 1e-2
    """inner-loop step size alpha (Meta-SGD: its initial value)"""
    first_order: bool = False
    """detach the inner gradients (first-order MAML)"""
    meta_sgd: bool = False
    """learn one inner step size per parameter (Meta-SGD)"""
    batching: str = "auto"
    """auto (vmap if allowed and under vmap_budget_mb, else loop if under memory_budget_mb, else recompute)
    | vmap (the meta-batch at once) | loop (one signal at a time) | recompute (one signal at a time,
    inner steps recomputed in row chunks on the way back: least memory)"""
    vmap_budget_mb: float = 200.0
    """batching=auto: vmap when the vmapped meta-step's estimated activations (MiB) fit this (on CPU it
    was faster only below ~200: small, narrow fields)"""
    memory_budget_mb: float = 2048.0
    """batching=auto: the loop keeps a signal's inner graph when its estimate (MiB) fits this, else recomputes"""
    compile: bool = False
    """torch.compile the vmapped meta-batch, or each signal's inner loop in the loop when no pruning
    policy (a one-off compile of about a minute; eager if it fails)"""
    chunk_coords: int = 16384
    """observations per chunk in full-signal passes (outer loss, scores, bootstrap, recomputed steps)"""

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")
        for name in ("vmap_budget_mb", "memory_budget_mb"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")


def _key(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "__")


class MAML(Learner):
    """Learned initialisation by gradient descent through K inner SGD steps per signal.

    Inner: ``theta_{k+1} = theta_k - alpha * grad l(theta_k; context_k)``, the context of each
    step chosen by the context policy among the task's inner-loop context; outer: the task's loss
    of ``theta_K`` on every observation (+ the bootstrap correction when on), averaged over the
    meta-batch. ``first_order`` detaches the inner gradients; ``meta_sgd`` learns alpha per parameter.

    Batching (see :mod:`metainr.meta.batching`; all give the same gradient): ``"loop"`` takes each
    signal's outer gradient as a chunked first-order pass followed by one vector-Jacobian product
    through its inner loop, so one signal's graph is alive at a time; ``"recompute"`` runs the inner
    loop detached and goes back through it one Hessian-vector product per step, recomputed in row
    chunks; ``"vmap"`` runs the whole meta-batch at once with ``torch.func`` (every inner step on the
    whole shared context), compiled with ``compile``; ``"auto"`` picks by :meth:`batching_for`.
    """

    Config = MAMLConfig

    def __init__(self, field: nn.Module, config: MAMLConfig | None = None, context=None, **options) -> None:
        super().__init__(field, config, context, **options)
        cfg = self.config
        if cfg.batching == "vmap" and not self._vmap_fits_method():
            raise ValueError("batching='vmap' cannot draw random contexts: use batching='loop' with the random "
                             "context policy")
        self.name = "metasgd" if cfg.meta_sgd else ("fomaml" if cfg.first_order else "maml")
        self.lrs = None
        if cfg.meta_sgd:
            self.lrs = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.full_like(p, cfg.inner_lr)) for n, p in field.named_parameters()})
        self._compiled: dict | bool = {}  # name -> compiled method (compile=True); False once compiling failed

    def inner_lrs(self) -> LearningRates:
        if self.lrs is None:
            return self.config.inner_lr
        return {n: self.lrs[_key(n)] for n, _ in self.field.named_parameters()}

    def _vmap_fits_method(self, task: Task | None = None) -> bool:
        """Whether vmap can run this method: every inner step on the whole context, or on GradNCP's
        top rows by the closed-form score (a task that observes its field directly); not random
        contexts. The bootstrap correction vmaps too. ``task`` None: whatever the task."""
        if self.context.policy == "random":
            return False
        return task is None or not self.policy.prunes or observes_directly(task)

    def batching_for(self, task: Task, batch: Batch) -> str:
        """The batching a meta-step on ``batch`` runs with: the configured one, or for ``"auto"``
        ``vmap`` when it is allowed (:meth:`_vmap_fits_method`; one context shared by the batch) and
        the B signals' estimated activations fit ``vmap_budget_mb``, else ``loop`` when one signal's
        fit ``memory_budget_mb``, else ``recompute``. The estimate
        (:func:`~metainr.meta.batching.activation_mb`) counts the field evaluations kept: vmap
        ``B * (K * context + all rows)``, loop ``K * kept rows + one outer chunk`` (K -> 1 first order)."""
        if self.config.batching != "auto":
            return self.config.batching
        steps = min(1, self.config.inner_steps) if self.config.first_order else self.config.inner_steps
        params = {n: p.detach() for n, p in self.init_params().items()}
        query, _, ctx = signal_rows(batch, 0)
        context = query if ctx is None else query[ctx]
        if self.policy.prunes:
            context = context[: kept_count(context.shape[0], self.context.keep_ratio)]
        inner = field_evaluations(task, self.field, params, context)
        if batch.shared_context and self._vmap_fits_method(task):
            evals = len(batch) * (steps * inner + field_evaluations(task, self.field, params, query))
            if activation_mb(self.field, evals) <= self.config.vmap_budget_mb:
                return "vmap"
        outer = field_evaluations(task, self.field, params, query[: self.config.chunk_coords])
        return "loop" if activation_mb(self.field, steps * inner + outer) <= self.config.memory_budget_mb \
            else "recompute"

    def _steps(self, task: Task, params: Params, lrs: LearningRates, query: Tensor, values: Tensor,
               **options) -> Params:
        """This learner's K inner steps of ONE signal from ``params`` (options: ``order``,
        ``functional``, ``on_step`` of :func:`~metainr.inner_loop.take_steps`; default order: 1 for
        first-order MAML, else 2)."""
        options.setdefault("order", 1 if self.config.first_order else 2)
        return take_steps(task, self.field, params, query, values, self.config.inner_steps, lr=lrs,
                          select=self.policy.selector(task, self.field, self.config.chunk_coords),
                          chunk=self.config.chunk_coords, **options)

    def adapt(self, task: Task, query: Tensor, values: Tensor, trace: list[Tensor] | None = None) -> Params:
        """K inner steps of ONE signal from the init, differentiable w.r.t. the meta-parameters.

        query (M, d) and values (M, C) are the context the inner loop may see; before each step the
        context policy picks the rows it uses. With ``trace`` (a list), the kept indices of every
        step and one more selection at theta_K are appended (pictures of what the loop looks at).
        """
        def keep_rows(step: Step) -> None:
            if trace is not None and step.rows is not None:
                trace.append(step.rows)

        params = self._steps(task, self.init_params(), self.inner_lrs(), query, values, on_step=keep_rows)
        if trace is not None and self.policy.prunes:
            trace.append(self.policy.select(task, self.field, params, query, values, self.config.chunk_coords))
        return params

    def outer_gradient(self, task: Task, fast: Mapping[str, Tensor], query: Tensor,
                       values: Tensor) -> tuple[Tensor, Params]:
        """Outer loss of ONE signal at its adapted params and its gradient w.r.t. them (first order,
        in row chunks), the bootstrap correction included when on."""
        chunk = self.config.chunk_coords
        loss, grads = loss_and_grads(task, self.field, fast, query, values, chunk)
        if self.context.boot_steps and self.context.boot_weight:
            reg, reg_grads = bootstrap_correction(task, self.field, fast, query, values, self.context, chunk, grads)
            loss, grads = loss + reg, {n: g + reg_grads[n] for n, g in grads.items()}
        return loss, grads

    def adapted_loss(self, task: Task, query: Tensor, values: Tensor, context: Tensor | None = None) -> Tensor:
        """Outer loss of ONE signal after K inner steps on its context (differentiable; a reference)."""
        ctx = slice(None) if context is None else context
        fast = self.adapt(task, query[ctx], values[ctx])
        return task.loss(task.observe(field_function(self.field), fast, query), values)

    def meta_gradient(self, task: Task, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        mode = self.batching_for(task, batch)
        if mode == "vmap" and not batch.shared_context:
            raise ValueError("batching='vmap' needs one context shared by the meta-batch; use batching='loop'")
        if mode == "vmap" and not self._vmap_fits_method(task):
            raise ValueError("batching='vmap' prunes contexts by the closed-form score, which needs a task that "
                             f"observes its field directly ({type(task).__name__} does not): use batching='loop'")
        # compiled: the vmapped meta-batch, or each signal's inner loop when every step sees the whole context
        if self.config.compile and self._compiled is not False and (mode == "vmap" or
                                                                    (mode == "loop" and not self.policy.prunes)):
            try:
                return self._gradient(task, batch, mode, compiled=True)
            except Exception as exc:  # no C++ toolchain, an op inductor lacks, ...: eager from now on
                log.warning("torch.compile failed, running eager: %s", (str(exc).splitlines() or [repr(exc)])[0])
                self._compiled = False
        return self._gradient(task, batch, mode, compiled=False)  # an error of the task itself raises here

    def _compiled_fn(self, name: str):
        """``self.<name>`` compiled once per learner (torch.compile; dynamo guards recompile on new shapes)."""
        assert isinstance(self._compiled, dict)
        if name not in self._compiled:
            self._compiled[name] = torch.compile(getattr(self, name))
        return self._compiled[name]

    def _gradient(self, task: Task, batch: Batch, mode: str,
                  compiled: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        names, meta = zip(*self.named_parameters())
        if mode == "vmap":
            losses_of = self._compiled_fn("_batch_losses") if compiled else self._batch_losses
            losses = losses_of(task, self.init_params(), self.inner_lrs(), batch.query, batch.values, batch.context)
            grads = torch.autograd.grad(losses.mean(), meta, allow_unused=True)
            total = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, meta, grads)}
            return {"loss": losses.detach().mean()}, total
        inner_loop = self._compiled_fn("_inner_loop") if compiled else None
        total, loss, n = self._zero_grads(), batch.values.new_zeros(()), len(batch)
        for b in range(n):
            query, values, ctx = signal_rows(batch, b)
            cq, cv = (query, values) if ctx is None else (query[ctx], values[ctx])
            if mode == "recompute":
                signal_loss, fast, adjoint = self._recomputed(task, query, values, cq, cv)
            else:
                fast = inner_loop(task, self.init_params(), self.inner_lrs(), cq, cv) if inner_loop \
                    else self.adapt(task, cq, cv)
                signal_loss, adjoint = self.outer_gradient(task, fast, query, values)
                fast, adjoint = list(fast.values()), [adjoint[k] for k in fast]
            grads = torch.autograd.grad(fast, meta, [a / n for a in adjoint], allow_unused=True)
            for name, g in zip(names, grads):
                if g is not None:
                    total[name] += g
            loss = loss + signal_loss / n
        return {"loss": loss}, total

    def _recomputed(self, task: Task, query: Tensor, values: Tensor, cq: Tensor,
                    cv: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """ONE signal with its inner loop run detached: (outer loss, the meta-dependent tensors, their
        adjoints), the adjoints found by going back through the K steps, each one Hessian-vector
        product recomputed in row chunks: ``theta_{k+1} = theta_k - alpha g_k`` gives
        ``lambda_k = lambda_{k+1} - H_k (alpha lambda_{k+1})`` and ``dL/dalpha -= lambda_{k+1} g_k``.
        Memory: K detached params and gradients plus one chunk's graph."""
        chunk, first_order = self.config.chunk_coords, self.config.first_order
        init, lrs = self.init_params(), self.inner_lrs()
        alphas = lrs if isinstance(lrs, float) else {n: t.detach() for n, t in lrs.items()}
        steps: list[Step] = []  # the checkpoints: each step's params, rows and gradients
        params = self._steps(task, init, alphas, cq, cv, order=0,
                             on_step=lambda step: steps.append(step) if step.grads is not None else None)
        loss, adjoint = self.outer_gradient(task, params, query, values)
        lr_adjoint = {n: torch.zeros_like(p) for n, p in params.items()}
        for step in reversed(steps):
            grads = step.grads
            if not isinstance(lrs, float):
                lr_adjoint = {n: a - adjoint[n] * grads[n] for n, a in lr_adjoint.items()}
            if not first_order:
                q, v = (cq, cv) if step.rows is None else (cq[step.rows], cv[step.rows])
                scaled = {n: a * (alphas if isinstance(alphas, float) else alphas[n]) for n, a in adjoint.items()}
                hv = hessian_vector_product(task, self.field, step.params, q, v, scaled, chunk)
                adjoint = {n: a - hv[n] for n, a in adjoint.items()}
        tensors, adjoints = list(init.values()), [adjoint[n] for n in init]
        if not isinstance(lrs, float):
            tensors, adjoints = tensors + list(lrs.values()), adjoints + [lr_adjoint[n] for n in lrs]
        return loss, tensors, adjoints

    def _inner_loop(self, task: Task, params: Params, lrs: LearningRates, query: Tensor, values: Tensor) -> Params:
        """K inner steps of ONE signal on query (M, d), values (M, C) with ``torch.func`` gradients
        (what vmap and torch.compile trace): the adapted params. A pruning policy picks each step's
        rows as ``adapt`` does (under vmap: GradNCP's closed-form score, ``topk`` per signal)."""
        return self._steps(task, params, lrs, query, values, functional=True)

    def _batch_losses(self, task: Task, params: Params, lrs: LearningRates, query: Tensor, values: Tensor,
                      ctx: Tensor | None) -> Tensor:
        """(B,) outer losses of the meta-batch, every signal's K inner steps at once (``vmap``), the
        bootstrap correction included when on. query (N, d) shared or (B, N, d), values (B, N, C);
        ctx: shared context rows or None."""
        fn, boot = field_function(self.field), self.context

        def adapted_loss(query: Tensor, values: Tensor) -> Tensor:
            cq, cv = (query, values) if ctx is None else (query[ctx], values[ctx])
            fast = self._inner_loop(task, params, lrs, cq, cv)
            loss = task.loss(task.observe(fn, fast, query), values)
            if boot.boot_steps and boot.boot_weight:  # as bootstrap_correction: its gradient is the same
                target = bootstrap_target(task, self.field, fast, query, values, boot, functional=True)
                squared = sum((fast[n] - target[n]).pow(2).sum() for n in fast)
                loss = loss + boot.boot_weight * torch.sqrt(squared + 1e-20)
            return loss

        return torch.vmap(adapted_loss, in_dims=(0 if query.dim() == 3 else None, 0))(query, values)


def MetaSGD(field: nn.Module, **options) -> MAML:
    """MAML with a learned per-parameter inner step size (Li et al. 2017)."""
    return MAML(field, meta_sgd=True, **options)


def FOMAML(field: nn.Module, **options) -> MAML:
    """MAML with the inner gradients detached (first order)."""
    return MAML(field, first_order=True, **options)
