"""The one inner loop: K gradient steps of a task's loss from given params.

:func:`take_steps` is what :func:`metainr.fit` and every gradient learner (MAML, first-order MAML,
Meta-SGD, GradNCP, Reptile, the bootstrap correction) run; each caller only chooses its options:

- the update: SGD with a scalar step size or one step-size tensor per parameter (Meta-SGD), or
  functional Adam (:class:`metainr.functional.Adam`, fresh state per call);
- the rows each step sees: a ``select(params, query, values) -> rows | None`` callable (a context
  policy: random rows, GradNCP's top rows by gradient norm) over the rows the caller passes
  (the task's inner-loop context);
- one signal, or every signal at once (``batched``: params name -> (B, *shape), each signal's
  gradient that of its own loss);
- what is differentiable (``order``): nothing (0: fitting, Reptile, recomputed steps, the bootstrap
  target), the update but not the gradients (1: first-order MAML), or the gradients too (2:
  second-order MAML, ``create_graph``);
- how gradients are taken: ``autograd.grad`` over row chunks (``chunk`` bounds the observations
  alive at once), or ``torch.func`` (``functional``: what ``vmap`` and ``torch.compile`` trace);
- a per-step ``transform`` of the gradients (GradNCP's test-time rescaling) and an ``on_step``
  observer that sees every step's :class:`Step` (step index, params, loss, gradients, rows) and
  the params after the last one: recording metrics, traces of the kept rows, the recomputed
  backward pass's checkpoints, held-out losses.

Nothing here knows which task, learner or method runs; it imports only the params core and the
Task protocol.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional

import torch
from torch import Tensor, nn

from .functional import Adam, LearningRates, Params, coordinate_chunks, field_function, sgd_step
from .tasks.base import Task

Select = Callable[[Mapping[str, Tensor], Tensor, Tensor], Optional[Tensor]]
"""``select(params, query (M, d), values (M, C)) -> rows (k,) | None``: the rows the next step
sees at ``params`` (None: all of them). One signal only."""

ORDERS = (0, 1, 2)


@dataclass
class Step:
    """One step of :func:`take_steps`, as ``transform`` and ``on_step`` see it."""

    index: int
    """0 .. K-1 for the gradient steps; K for the params after the last step"""
    params: Params
    """the params the step starts from (name -> shape, or (B, *shape) batched)"""
    loss: Tensor | None
    """() or (B,) loss of ``params`` on the rows the step sees, detached; None at index K, and at
    index 0 when the caller supplied ``first_grads``"""
    grads: Params | None
    """the gradients the update uses (after ``transform``); None at index K"""
    rows: Tensor | None
    """(k,) indices into the caller's rows the step sees; None: all"""


def signal_groups(n_signals: int, n_rows: int, chunk: int | None) -> list[slice]:
    """Slices of signals processed together so a pass holds about ``chunk`` observations (at least
    one signal per group; None: all signals at once)."""
    per_group = n_signals if chunk is None else max(1, int(chunk) // max(n_rows, 1))
    return [slice(i, min(i + per_group, n_signals)) for i in range(0, n_signals, max(per_group, 1))]


def loss_and_grads(task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor, values: Tensor,
                   chunk: int | None = None, *, order: int = 0, batched: bool = False,
                   need_grads: bool = True) -> tuple[Tensor, Params | None]:
    """A task's loss of ``params`` on the rows ``query`` / ``values`` and its gradient, swept in
    passes of about ``chunk`` observations (None: all at once), so at most one pass's activations
    are alive at a time (unless ``order`` is 2, where every pass's graph is kept).

    One signal: params name -> shape, query (M, d), values (M, C) -> loss () and grads name -> shape.
    ``batched``: params name -> (B, *shape), query (M, d) shared or (B, M, d), values (B, M, C) ->
    losses (B,) and grads name -> (B, *shape), each signal's gradient that of its own loss (signals
    grouped by :func:`signal_groups`, a signal with more rows than ``chunk`` swept in row slices).

    ``order`` 0 or 1: gradients of detached copies (constants); 2: ``create_graph`` through
    ``params``. The loss is always detached. ``need_grads`` False: the loss only (grads None).
    """
    fn = field_function(field)
    n_rows = values.shape[-2]
    one_pass = chunk is None or chunk >= n_rows  # every row at once: the task's loss itself, no slicing

    def part_loss(p: Mapping[str, Tensor], q: Tensor, v: Tensor) -> Tensor:  # ONE signal's share of its loss
        if one_pass:
            return task.loss(task.observe(fn, p, q), v)
        return task.errors(task.observe(fn, p, q), v).sum() / n_rows

    q_dim = 0 if batched and query.dim() == 3 else None
    part_losses = torch.vmap(part_loss, in_dims=(0, q_dim, 0)) if batched else part_loss
    groups: list[slice | None] = list(signal_groups(values.shape[0], n_rows, chunk)) if batched else [None]
    if len(groups) == 1:  # every signal in one pass: no slicing
        groups = [None]
    passes: list[slice | None] = [None] if one_pass else list(coordinate_chunks(n_rows, chunk))  # type: ignore
    losses, grad_parts = [], []
    for g in groups:
        part, q, v = (params, query, values) if g is None else \
            ({n: p[g] for n, p in params.items()}, query[g] if q_dim == 0 else query, values[g])
        leaves = part if order == 2 else {n: p.detach().requires_grad_(need_grads) for n, p in part.items()}
        loss, grads = None, None
        for rows in passes:
            rq, rv = (q, v) if rows is None else (q[..., rows, :], v[..., rows, :])
            with torch.set_grad_enabled(need_grads):
                piece = part_losses(leaves, rq, rv)
            if need_grads:
                total = piece.sum() if batched else piece
                g_rows = torch.autograd.grad(total, list(leaves.values()), create_graph=order == 2)
                grads = list(g_rows) if grads is None else [a + b for a, b in zip(grads, g_rows)]
            loss = piece.detach() if loss is None else loss + piece.detach()
        losses.append(loss)
        grad_parts.append(None if grads is None else dict(zip(leaves, grads)))
    loss = losses[0] if len(losses) == 1 else torch.cat(losses)
    if not need_grads:
        return loss, None
    if len(grad_parts) == 1:
        return loss, grad_parts[0]
    return loss, {n: torch.cat([gp[n] for gp in grad_parts]) for n in params}  # type: ignore[index]


def _functional_gradient(task: Task, field: nn.Module, order: int):
    """``(params, query, values) -> (loss, grads)`` of ONE signal with ``torch.func`` (traceable by
    vmap and torch.compile; differentiable by an outer autograd unless ``order`` < 2)."""
    fn = field_function(field)
    grad_and_loss = torch.func.grad_and_value(lambda p, q, v: task.loss(task.observe(fn, p, q), v))

    def gradient(params: Params, query: Tensor, values: Tensor) -> tuple[Tensor, Params]:
        grads, loss = grad_and_loss(params, query, values)
        if order < 2:
            grads = {n: g.detach() for n, g in grads.items()}
        return loss.detach(), grads

    return gradient


def take_steps(
    task: Task,
    field: nn.Module,
    params: Mapping[str, Tensor],
    query: Tensor,
    values: Tensor,
    steps: int,
    *,
    optimizer: Literal["sgd", "adam"] = "sgd",
    lr: LearningRates = 1e-2,
    order: int = 0,
    select: Select | None = None,
    chunk: int | None = None,
    batched: bool = False,
    functional: bool = False,
    first_grads: Mapping[str, Tensor] | None = None,
    transform: Callable[[Step], Params] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Params:
    """``steps`` gradient steps of the task's loss on ``query`` / ``values`` from ``params``: the params after.

    Args:
        task, field: the loss (``task.errors`` / ``task.loss`` through ``task.observe``) and the field.
        params: name -> shape (one signal) or name -> (B, *shape) (``batched``); not modified.
        query: (M, d) rows, or (B, M, d) one set per signal (``batched``).
        values: (M, C), or (B, M, C) (``batched``): the observations of those rows.
        optimizer: "sgd" (``theta - lr * g``) or "adam" (functional Adam, fresh state, scalar lr).
        lr: a scalar, or name -> tensor per-parameter step sizes (sgd; Meta-SGD's, differentiable
            when ``order`` > 0).
        order: 0 nothing is differentiable (params detached, updates without a graph); 1 the updates
            are (first-order MAML: gradients are constants); 2 the gradients too (second-order MAML).
        select: picks the rows of each step at its params (one signal only); None: all rows.
        chunk: about this many observations per gradient pass (None: all at once; ignored with
            ``functional``).
        batched: params, query and values carry a leading signal dim; every signal steps at once.
        functional: gradients with ``torch.func`` (one signal; for code run under ``vmap`` or
            ``torch.compile``, where an outer autograd differentiates the result).
        first_grads: the gradient at ``params`` on every row when the caller has it: step 0 uses
            it (no pass, no ``select``).
        transform: ``transform(step) -> grads`` replaces each step's gradients before the update.
        on_step: ``on_step(step)`` sees every step before its update (index 0..K-1) and the final
            params (index K; loss, grads and rows None). It must not modify what it is given.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if optimizer == "adam" and not isinstance(lr, (int, float)):
        raise ValueError("adam takes a scalar learning rate")
    if batched and (select is not None or functional):
        raise ValueError("batched steps see every row with autograd: select and functional are for one signal")
    if functional:
        gradient = _functional_gradient(task, field, order)
    else:
        def gradient(p: Params, q: Tensor, v: Tensor) -> tuple[Tensor, Params]:
            loss, grads = loss_and_grads(task, field, p, q, v, chunk, order=order, batched=batched)
            return loss, grads  # type: ignore[return-value]
    adam = Adam(float(lr)) if optimizer == "adam" else None  # type: ignore[arg-type]
    current = {n: p.detach() for n, p in params.items()} if order == 0 else dict(params)
    for index in range(steps):
        if index == 0 and first_grads is not None:
            rows, loss, grads = None, None, dict(first_grads)
        else:
            rows = select(current, query, values) if select is not None else None
            q, v = (query, values) if rows is None else (query[rows], values[rows])
            loss, grads = gradient(current, q, v)
        if transform is not None or on_step is not None:
            step = Step(index, current, loss, grads, rows)
            if transform is not None:
                step.grads = grads = transform(step)
            if on_step is not None:
                on_step(step)
        with torch.no_grad() if order == 0 else contextlib.nullcontext():
            current = adam.step(current, grads) if adam is not None else sgd_step(current, grads, lr)
    if on_step is not None:
        on_step(Step(steps, current, None, None, None))
    return current
