"""How a gradient learner runs its meta-batch, and the memory estimate ``batching="auto"`` uses.

- ``vmap``: the whole meta-batch at once with ``torch.func`` (batched matmuls; fastest for small
  signals, memory grows with B);
- ``loop``: one signal at a time, its inner loop's graph alive until its outer gradient is taken;
- ``recompute``: one signal at a time, the inner steps run detached and each step's
  Hessian-vector product recomputed in row chunks on the way back (activation checkpointing):
  memory of one chunk's double backward whatever K and the signal size, for one extra
  forward + backward per inner step.

The estimate (:func:`activation_mb`) counts the field evaluations a meta-step keeps for its
backward pass, through ``task.observe`` (so forward models that evaluate many points per
observation count right), times ``width * depth * 4`` bytes times a measured factor.

Why MAML's budgets default to 200 (vmap) and 2048 MiB (loop): on the CPU, vmap only wins where the
loop is overhead-bound (small, narrow fields); elsewhere its batched second-order matmuls and ~3x
the memory lose. Seconds per MAML meta-step (second order; SIREN, B x K; min of interleaved runs
in one process, or fresh processes with peak RSS in MiB; 2 threads on a quiet machine, CPU seconds
on 1 thread in brackets; "estimate" is the vmapped step's):

==============================  ========  ====================  ====================  ==================
config                          estimate  loop                  vmap                  recompute
==============================  ========  ====================  ====================  ==================
25^2 grey, 4x32, 8x3 (demo)     49        0.031 [0.055], 277    0.025 [0.040], 353
25^2 grey, 4x32, 32x3           195       0.126 [0.232]         0.072 [0.157]
32^2 RGB, 4x64, 8x3             160       0.084 [0.133]         0.078 [0.149]
32^2 RGB, 5x128, 4x4            250       0.181 [0.313]         0.211 [0.424]
64^2 RGB, 4x32, 8x3             320       0.128 [0.195]         0.131 [0.263]
32^2 RGB, 5x256, 4x4            500       0.451                 0.504
64^2 RGB, 5x256, 4x4            2000      1.79, 903             2.01, 2219            2.49, 540
128^2 RGB, 5x256, 4x4           8000      6.98, 2452            13.56, 5536           9.98, 1350
GradNCP K=4 256^2, 5x256, 4x4   -         22.1, 2456            -                     25.1, 1545
==============================  ========  ====================  ====================  ==================

so vmap up to ~200 MiB; the loop while one signal's estimate is under 2048 MiB (about 2.5 GB of
RSS: 128^2 MAML, 256^2 GradNCP), beyond that recompute (1.1-1.4x the loop's time, flat memory).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from ..functional import Params, coordinate_chunks, field_function
from ..tasks.base import Task

BATCHING = ("auto", "vmap", "loop", "recompute")

ACTIVATION_FACTOR = 5.0
"""Bytes of activations autograd keeps per kept field evaluation, in units of ``width * depth * 4``
bytes. Calibrated on one meta-step per fresh process (SIREN, RGB, 1 or 2 threads; peak RSS minus the RSS
before the step, MiB), evaluations counted as ``batching_for`` counts them (vmap: B (K + 1) N, first
order B (1 + 1) N, Reptile B N; loop: K kept rows + one outer chunk):

================================  ====  ========  ========
config (5x256, B=4, K=4)          path  measured  estimate
================================  ====  ========  ========
MAML 32^2                         vmap       615       500
MAML 48^2                         vmap      1193      1125
MAML 64^2                         vmap      2042      2000
MAML 128^2                        vmap      5407      8000
MAML 64^2, 4x128, B=8, K=3        vmap      1235      1280
MAML 32^2, B=8, K=2               vmap       506       600
FOMAML 48^2                       vmap       395       450
FOMAML 64^2                       vmap       742       800
Reptile 48^2                      vmap       197       225
Reptile 64^2                      vmap       440       400
MAML 48^2                         loop       354       281
MAML 64^2                         loop       607       500
MAML 128^2                        loop      2447      2000
FOMAML 64^2                       loop       179       200
GradNCP (gamma 1/4, L=5) 256^2    loop      2225      2000
GradNCP 384^2                     loop      3399      4000
GradNCP 512^2                     loop      5595      6800
================================  ====  ========  ========

(The demo's 25^2, width 32, B=8, K=3: estimated 49, measured 119, mostly the first step's fixed
cost. ``recompute`` keeps about one chunk's double backward: 1090 MiB at 128^2 with 16384-row
chunks, 5x256, whatever K and the size.)
"""


def field_evaluations(task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor,
                      probe: int = 32) -> int:
    """How many coordinates ``task.observe`` evaluates the field at to observe ``query`` (M, d)
    once: M for a directly observed field, rays x samples for line integrals or volume rendering,
    a whole grid for a forward model that renders one. Counted exactly up to ``2 * probe`` rows,
    beyond that extrapolated from ``probe`` and ``2 * probe`` rows (a fixed part plus a part per
    row), so the count costs no more than observing 64 rows; the field is replaced by zeros."""
    out_dim = getattr(getattr(field, "config", None), "out_dim", 1)
    count = 0

    def counter(_: Mapping[str, Tensor], coords: Tensor) -> Tensor:
        nonlocal count
        count += coords.shape[:-1].numel()
        return coords.new_zeros(*coords.shape[:-1], out_dim)

    def evaluations(rows: Tensor) -> int:
        nonlocal count
        count = 0
        with torch.no_grad():
            task.observe(counter, params, rows)
        return count

    n = query.shape[0]
    if n <= 2 * probe:
        return evaluations(query)
    few, more = evaluations(query[:probe]), evaluations(query[: 2 * probe])
    return max(0, round(few + (more - few) / probe * (n - probe)))


def activation_mb(field: nn.Module, evaluations: int) -> float:
    """Estimated activation memory (MiB) a meta-step keeps for ``evaluations`` kept field
    evaluations: ``evaluations * width * depth * 4 bytes * ACTIVATION_FACTOR``; the field's config
    gives width and depth (256 and 5 when it has none)."""
    cfg = getattr(field, "config", None)
    width, depth = getattr(cfg, "width", 256), getattr(cfg, "depth", 5)
    return evaluations * width * depth * 4 * ACTIVATION_FACTOR / 2 ** 20


def hessian_vector_product(task: Task, field: nn.Module, params: Mapping[str, Tensor], query: Tensor,
                           values: Tensor, vector: Mapping[str, Tensor], chunk: int) -> Params:
    """``H v`` of ONE signal's loss on its rows (the mean of ``task.errors``) at ``params``, the
    double backward of each chunk of at most ``chunk`` rows summed: one chunk's graph alive at once.
    query (M, d), values (M, C); vector: name -> a tensor shaped like the param."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    fn, total = field_function(field), query.shape[0]
    out = {n: torch.zeros_like(p) for n, p in leaves.items()}
    for rows in coordinate_chunks(total, chunk):
        with torch.enable_grad():
            part = task.errors(task.observe(fn, leaves, query[rows]), values[rows]).sum() / total
            grads = torch.autograd.grad(part, list(leaves.values()), create_graph=True)
            dot = sum((g * vector[n]).sum() for n, g in zip(leaves, grads))
            if not dot.requires_grad:  # the loss is linear in every param: H = 0
                continue
            for acc, h in zip(out.values(), torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)):
                if h is not None:
                    acc += h
    return out
