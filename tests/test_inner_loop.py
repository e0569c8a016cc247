"""The one inner loop (``metainr.inner_loop.take_steps``) gives exactly the trajectories of tiny
hand-written loops (float64, 1e-12) for every caller: ``fit`` (SGD, Meta-SGD step sizes, Adam),
MAML / FOMAML / Meta-SGD in every batching mode, Reptile (loop and vmap), the bootstrap target;
its hooks see every step; it sits below the learners and ``fit``."""
import ast
from pathlib import Path

import pytest
import torch

from metainr import ImageTask, Siren, build_learner, fit
from metainr.functional import field_params, predict
from metainr.inner_loop import Step, loss_and_grads, take_steps
from metainr.meta.context import ContextConfig, bootstrap_correction, bootstrap_target
from metainr.tasks import Batch

TASK = ImageTask()
TOL = dict(rtol=1e-12, atol=1e-12)


def _field():
    return Siren(in_dim=2, out_dim=2, width=6, depth=3, w0=3.0, w0_first=3.0, seed=1).double()


def _data(n=10, b=3, seed=4):
    g = torch.Generator().manual_seed(seed)
    coords = (torch.rand(n, 2, generator=g) * 2 - 1).double()
    values = torch.rand(b, n, 2, generator=g).double()
    return coords, values


def _mse(field, params, coords, values):
    return ((predict(field, params, coords) - values) ** 2).mean()


def _lrs(field, scale=0.1):
    """Meta-SGD step sizes: a different one for every parameter element."""
    g = torch.Generator().manual_seed(9)
    return {n: scale * (0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype)) for n, p in field.named_parameters()}


def _reference(field, init, coords, values, steps, lr, optimizer="sgd", order=0):
    """The hand-written inner loop: plain autograd on the whole signal, SGD (scalar or per-parameter
    step sizes) or Adam written out; ``order`` 2 keeps the graph through the gradients, 1 detaches
    the gradients only, 0 everything. Returns the trajectory [theta_0, ..., theta_K]."""
    params = {n: p if order else p.detach() for n, p in init.items()}
    trajectory, m, v = [params], {}, {}
    for k in range(1, steps + 1):
        leaves = params if order == 2 else {n: p.detach().requires_grad_(True) for n, p in params.items()}
        grads = dict(zip(leaves, torch.autograd.grad(_mse(field, leaves, coords, values), list(leaves.values()),
                                                     create_graph=order == 2)))
        if optimizer == "adam":
            for n, g in grads.items():
                m[n] = 0.9 * m.get(n, 0) + 0.1 * g
                v[n] = 0.999 * v.get(n, 0) + 0.001 * g * g
            params = {n: p - lr * (m[n] / (1 - 0.9 ** k)) / ((v[n] / (1 - 0.999 ** k)).sqrt() + 1e-8)
                      for n, p in params.items()}
        else:
            params = {n: p - (lr if isinstance(lr, float) else lr[n]) * grads[n] for n, p in params.items()}
        if order == 0:
            params = {n: p.detach() for n, p in params.items()}
        trajectory.append(params)
    return trajectory


def _close(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], **TOL)


# -- the routine itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.3), ("sgd", "per-parameter"), ("adam", 0.05)],
                         ids=["sgd", "metasgd", "adam"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_one_signal_steps_follow_the_hand_written_loop(optimizer, lr, chunk):
    field, (coords, values) = _field(), _data()
    lr = _lrs(field) if lr == "per-parameter" else lr
    init = field_params(field)
    got = take_steps(TASK, field, init, coords, values[0], 4, optimizer=optimizer, lr=lr, chunk=chunk)
    _close(got, _reference(field, init, coords, values[0], 4, lr, optimizer)[-1])
    assert all(not p.requires_grad for p in got.values())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("query", ["shared", "per-signal"])
def test_batched_steps_are_each_signal_alone(optimizer, query):
    field, (coords, values) = _field(), _data(n=9)
    queries = torch.stack([coords, coords.flip(0), -coords]) if query == "per-signal" else coords
    init = field_params(field)
    every = {n: p.detach().expand(3, *p.shape).clone() for n, p in init.items()}
    lr = 0.05 if optimizer == "adam" else 0.3
    for chunk in (None, 4, 20):  # rows in slices of 4; two signals per pass of 20 observations
        got = take_steps(TASK, field, every, queries, values, 3, optimizer=optimizer, lr=lr, chunk=chunk,
                         batched=True)
        for b in range(3):
            q = queries[b] if query == "per-signal" else coords
            _close({n: p[b] for n, p in got.items()}, _reference(field, init, q, values[b], 3, lr, optimizer)[-1])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("functional", [False, True])
def test_differentiable_steps_give_the_references_meta_gradient(order, functional):
    field, (coords, values) = _field(), _data()
    init, lrs = field_params(field), {n: t.requires_grad_(True) for n, t in _lrs(field).items()}
    meta = [*init.values(), *lrs.values()]
    got = take_steps(TASK, field, init, coords, values[0], 3, lr=lrs, order=order, chunk=4, functional=functional)
    want = _reference(field, init, coords, values[0], 3, lrs, order=order)[-1]
    _close(got, want)
    g_got = torch.autograd.grad(_mse(field, got, coords, values[1]), meta)
    g_want = torch.autograd.grad(_mse(field, want, coords, values[1]), meta)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, **TOL)


def test_batched_second_order_steps_differentiate_like_each_signal_alone():
    field, (coords, values) = _field(), _data()
    init = field_params(field)
    every = {n: p.expand(3, *p.shape) for n, p in init.items()}  # a graph back to the shared init
    got = take_steps(TASK, field, every, coords, values, 2, lr=0.3, order=2, chunk=4, batched=True)
    loss = sum(_mse(field, {n: p[b] for n, p in got.items()}, coords, values[b].flip(0)) for b in range(3))
    want = sum(_mse(field, _reference(field, init, coords, values[b], 2, 0.3, order=2)[-1], coords,
                    values[b].flip(0)) for b in range(3))
    for a, b in zip(torch.autograd.grad(loss, list(init.values())), torch.autograd.grad(want, list(init.values()))):
        torch.testing.assert_close(a, b, **TOL)


def test_a_hook_sees_every_step_and_a_transform_replaces_the_gradients():
    field, (coords, values) = _field(), _data()
    init = field_params(field)
    seen: list[Step] = []
    got = take_steps(TASK, field, init, coords, values[0], 4, lr=0.15, chunk=3, on_step=seen.append,
                     transform=lambda step: {n: 2 * g for n, g in step.grads.items()})  # = steps of 0.3
    trajectory = _reference(field, init, coords, values[0], 4, 0.3)
    assert [s.index for s in seen] == [0, 1, 2, 3, 4]
    for step, params in zip(seen, trajectory):
        _close(step.params, params)
    for step in seen[:4]:
        assert step.rows is None
        torch.testing.assert_close(step.loss, _mse(field, step.params, coords, values[0]), **TOL)
        leaves = {n: p.clone().requires_grad_(True) for n, p in step.params.items()}
        grads = torch.autograd.grad(_mse(field, leaves, coords, values[0]), list(leaves.values()))
        _close(step.grads, {n: 2 * g for n, g in zip(leaves, grads)})  # the hook sees what the update uses
    assert seen[4].loss is None and seen[4].grads is None
    _close(seen[4].params, got)


def test_selected_rows_and_first_grads():
    field, (coords, values) = _field(), _data(n=12)
    init = field_params(field)
    picks = [torch.tensor([0, 3, 5]), torch.tensor([1, 2, 7, 11]), torch.tensor([4, 9])]
    seen = []
    got = take_steps(TASK, field, init, coords, values[0], 3, lr=0.3,
                     select=lambda p, q, v: picks[len(seen)], on_step=seen.append)
    params = {n: p.detach() for n, p in init.items()}
    for rows in picks:
        params = _reference(field, params, coords[rows], values[0][rows], 1, 0.3)[-1]
    _close(got, params)
    assert [s.rows for s in seen[:3]] == picks
    # step 0 may take the caller's gradient: no pass, and the same trajectory
    _, first = loss_and_grads(TASK, field, init, coords, values[0])
    seen = []
    again = take_steps(TASK, field, init, coords, values[0], 2, lr=0.3, first_grads=first, on_step=seen.append)
    _close(again, _reference(field, init, coords, values[0], 2, 0.3)[-1])
    assert seen[0].loss is None and seen[1].loss is not None


def test_bad_options_are_refused():
    field, (coords, values) = _field(), _data()
    init = field_params(field)
    for options, match in [(dict(order=3), "order"), (dict(optimizer="lbfgs"), "optimizer"),
                           (dict(optimizer="adam", lr=_lrs(field)), "scalar"),
                           (dict(batched=True, select=lambda p, q, v: None), "one signal")]:
        with pytest.raises(ValueError, match=match):
            take_steps(TASK, field, init, coords, values, 1, **options)
    with pytest.raises(ValueError, match="steps"):
        take_steps(TASK, field, init, coords, values[0], -1)


def test_the_inner_loop_sits_below_the_learners_and_fit():
    path = Path(__file__).resolve().parents[1] / "src" / "metainr" / "inner_loop.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"functional", "tasks"}, imported


# -- every caller -----------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.3), ("sgd", "per-parameter"), ("adam", 0.05)],
                         ids=["sgd", "metasgd", "adam"])
def test_fit_follows_the_hand_written_loop(optimizer, lr):
    field, (coords, values) = _field(), _data()
    lr = _lrs(field) if lr == "per-parameter" else lr
    init = field_params(field)
    result = fit(TASK, field, init, Batch(coords, values), 5, optimizer=optimizer, lr=lr, record=[0, 2, 5],
                 chunk_coords=7)
    for b in range(3):
        trajectory = _reference(field, init, coords, values[b], 5, lr, optimizer)
        _close({n: p[b] for n, p in result.params.items()}, trajectory[-1])
        for i, k in enumerate([0, 2, 5]):
            mse = ((predict(field, trajectory[k], coords).clamp(0, 1) - values[b]) ** 2).mean()  # PSNR clamps
            torch.testing.assert_close(result.psnr[b, i], -10 * torch.log10(mse), **TOL)
        torch.testing.assert_close(result.final_loss[b], _mse(field, trajectory[-1], coords, values[b]), **TOL)


def _meta_reference(kind, learner, coords, values, steps, lr):
    """Autograd through the hand-written loop of every signal: the mean outer loss's gradient."""
    field = learner.field
    init = field_params(field)
    lrs = learner.inner_lrs() if kind == "metasgd" else lr
    order = 1 if kind == "fomaml" else 2
    loss = sum(_mse(field, _reference(field, init, coords, values[b], steps, lrs, order=order)[-1], coords,
                    values[b]) for b in range(len(values))) / len(values)
    names, meta = zip(*learner.named_parameters())
    return loss, dict(zip(names, torch.autograd.grad(loss, meta)))


@pytest.mark.parametrize("batching", ["loop", "vmap", "recompute"])
@pytest.mark.parametrize("kind", ["maml", "fomaml", "metasgd"])
def test_maml_meta_gradient_is_the_hand_written_loops_in_every_batching(kind, batching):
    coords, values = _data()
    learner = build_learner(_field(), kind, inner_steps=3, inner_lr=0.3, batching=batching, chunk_coords=4)
    if kind == "metasgd":
        with torch.no_grad():
            for n, t in _lrs(learner.field).items():
                learner.lrs[n.replace(".", "__")].copy_(t)
    stats, grads = learner.meta_gradient(TASK, Batch(coords, values))
    loss, want = _meta_reference(kind, learner, coords, values, 3, 0.3)
    torch.testing.assert_close(stats["loss"], loss.detach(), **TOL)
    _close(grads, want)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_follows_the_hand_written_loop(optimizer, batching):
    coords, values = _data()
    lr = 0.05 if optimizer == "adam" else 0.3
    learner = build_learner(_field(), "reptile", inner_steps=3, inner_lr=lr, inner_optimizer=optimizer,
                            batching=batching, chunk_coords=4)
    _, grads = learner.meta_gradient(TASK, Batch(coords, values))
    init = field_params(learner.field)
    fitted = [_reference(learner.field, init, coords, values[b], 3, lr, optimizer)[-1] for b in range(3)]
    _close(grads, {f"field.{n}": p.detach() - torch.stack([f[n] for f in fitted]).mean(0) for n, p in init.items()})


@pytest.mark.parametrize("functional", [False, True])
def test_bootstrap_target_follows_the_hand_written_loop(functional):
    field, (coords, values) = _field(), _data()
    config = ContextConfig(boot_steps=3, boot_lr=0.2, boot_weight=2.0)
    fast = take_steps(TASK, field, field_params(field), coords, values[0], 1, lr=0.3, order=2)  # a graph to the init
    target = bootstrap_target(TASK, field, fast, coords, values[0], config, chunk=4, functional=functional)
    want = _reference(field, fast, coords, values[0], 3, 0.2)[-1]
    _close(target, want)
    assert all(not t.requires_grad for t in target.values())
    # the correction's gradient: that of lambda * ||stopgrad(theta_boot) - theta_K||
    value, grads = bootstrap_correction(TASK, field, fast, coords, values[0], config, chunk=4)
    leaves = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
    distance = torch.sqrt(sum(((leaves[n] - want[n]) ** 2).sum() for n in leaves))
    torch.testing.assert_close(value, 2.0 * distance.detach(), **TOL)
    _close(grads, dict(zip(leaves, torch.autograd.grad(2.0 * distance, list(leaves.values())))))


@pytest.mark.parametrize("batching", ["loop", "vmap", "recompute"])
def test_gradncp_meta_gradient_is_the_hand_written_loops_in_every_batching(batching):
    """Pruned second-order steps (each on the top half of the rows by GradNCP's score at its params)
    plus the bootstrap correction, written out by hand and differentiated by autograd."""
    from metainr.meta.context import context_scores, select_context

    coords, values = _data(n=12)
    learner = build_learner(_field(), "gradncp", inner_steps=2, inner_lr=0.3, keep_ratio=0.5, boot_steps=2,
                            boot_lr=0.2, boot_weight=2.0, batching=batching, chunk_coords=5)
    stats, grads = learner.meta_gradient(TASK, Batch(coords, values))
    field, init = learner.field, field_params(learner.field)
    loss = 0
    for b in range(3):
        params = init
        for _ in range(2):
            rows = select_context(context_scores(TASK, field, params, coords, values[b]), 0.5)
            params = _reference(field, params, coords[rows], values[b][rows], 1, 0.3, order=2)[-1]
        boot = _reference(field, params, coords, values[b], 2, 0.2)[-1]
        distance = torch.sqrt(sum(((params[n] - boot[n]) ** 2).sum() for n in params))
        loss = loss + (_mse(field, params, coords, values[b]) + 2.0 * distance) / 3
    names, meta = zip(*learner.named_parameters())
    torch.testing.assert_close(stats["loss"], loss.detach(), **TOL)
    _close(grads, dict(zip(names, torch.autograd.grad(loss, meta))))


def test_steps_run_on_the_device_of_their_inputs():
    """Nothing is made on a default device: the ``meta`` device (shapes only) runs through."""
    field = Siren(in_dim=2, out_dim=2, width=6, depth=3).to("meta")
    init = field_params(field)
    query, values = torch.empty(10, 2, device="meta"), torch.empty(3, 10, 2, device="meta")
    every = {n: p.detach().expand(3, *p.shape).clone() for n, p in init.items()}
    for got in (take_steps(TASK, field, every, query, values, 2, optimizer="adam", lr=0.1, batched=True, chunk=4),
                take_steps(TASK, field, init, query, values[0], 2, lr=0.1, order=2, chunk=4)):
        assert all(p.device.type == "meta" for p in got.values())
