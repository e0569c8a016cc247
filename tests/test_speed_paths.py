"""The fast paths compute the same thing: batching modes (loop, vmap, recompute, auto) give the same
meta-gradients, ``batching="auto"`` picks by its memory estimate and never vmaps what vmap cannot
run, recomputed (checkpointed) GradNCP inner steps give the exact gradient, and the compiled
vmapped meta-batch equals the eager one. All in float64; tolerance rtol 1e-9, atol 1e-12 (sums in
another order, chunked rows) unless stated."""
import functools

import pytest
import torch

from metainr import ImageTask, Siren, build_learner
from metainr.meta.batching import activation_mb, field_evaluations
from metainr.tasks import Batch

TASK = ImageTask()
TOL = dict(rtol=1e-9, atol=1e-12)


def _field(out_dim=2):
    return Siren(in_dim=2, out_dim=out_dim, width=6, depth=3, w0=3.0, w0_first=3.0, seed=1).double()


def _batch(per_signal_query=False, n=12, b=3, context=None):
    g = torch.Generator().manual_seed(4)
    coords = (torch.rand(b if per_signal_query else 1, n, 2, generator=g) * 2 - 1).double()
    values = torch.rand(b, n, 2, generator=g).double()
    return Batch(coords if per_signal_query else coords[0], values, context)


def _gradients(kind, batching, batch, **options):
    learner = build_learner(_field(), kind, inner_steps=2, inner_lr=0.3, batching=batching, chunk_coords=5, **options)
    stats, grads = learner.meta_gradient(TASK, batch)
    return float(stats["loss"]), grads


def _assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    assert a[1].keys() == b[1].keys()
    for n in a[1]:
        torch.testing.assert_close(a[1][n], b[1][n], **TOL)


@pytest.mark.parametrize("query", ["shared", "per-signal", "shared-context"])
@pytest.mark.parametrize("kind", ["maml", "fomaml", "metasgd"])
def test_every_batching_gives_the_loops_meta_gradient(kind, query):
    batch = _batch(per_signal_query=query == "per-signal",
                   context=torch.tensor([0, 2, 3, 5, 7, 8, 11]) if query == "shared-context" else None)
    reference = _gradients(kind, "loop", batch)
    for batching in ("vmap", "recompute", "auto"):
        _assert_same(_gradients(kind, batching, batch), reference)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("query", ["shared", "per-signal"])
def test_reptile_loop_in_row_chunks_equals_vmap(optimizer, query):
    batch = _batch(per_signal_query=query == "per-signal")
    grads = {}
    for batching in ("loop", "vmap", "auto"):
        learner = build_learner(_field(), "reptile", inner_steps=3, inner_lr=0.2, inner_optimizer=optimizer,
                                batching=batching, chunk_coords=5)
        grads[batching] = learner.meta_gradient(TASK, batch)
    for batching in ("vmap", "auto"):
        _assert_same((float(grads[batching][0]["loss"]), grads[batching][1]),
                     (float(grads["loop"][0]["loss"]), grads["loop"][1]))


def test_auto_vmaps_what_fits_the_budget_and_loops_or_recomputes_the_rest():
    batch = _batch()
    learner = build_learner(_field(), "maml", inner_steps=2)
    evals = field_evaluations(TASK, learner.field, learner.init_params(), batch.query)
    assert evals == 12
    vmap_mb = activation_mb(learner.field, 3 * (2 * evals + evals))  # B (K context + every row)
    loop_mb = activation_mb(learner.field, 2 * evals + evals)  # K context + one outer chunk

    def picks(vmap_budget, memory_budget=1e9, name="maml", batch=batch, **options):
        budgets = dict(vmap_budget_mb=vmap_budget) if name == "reptile" else \
            dict(vmap_budget_mb=vmap_budget, memory_budget_mb=memory_budget)
        return build_learner(_field(), name, inner_steps=2, **budgets, **options).batching_for(TASK, batch)

    assert picks(vmap_mb * 1.01) == "vmap"
    assert picks(vmap_mb * 0.99) == "loop"  # the batch's estimate exceeds the vmap budget
    assert picks(vmap_mb * 0.99, loop_mb * 1.01) == "loop"
    assert picks(vmap_mb * 0.99, loop_mb * 0.99) == "recompute"  # and one signal's the memory budget
    assert picks(1e-9, 1e-9, first_order=True) == "recompute"
    # never vmap what vmap cannot run, whatever the budget
    per_signal = _batch(context=[torch.arange(6), torch.arange(6, 12), torch.arange(3)])
    assert picks(1e9, batch=per_signal) == "loop"
    assert picks(1e9, policy="random") == "loop"  # vmap cannot draw random contexts
    # GradNCP's pruning (closed-form scores) and the bootstrap vmap on a directly observed field ...
    for options in (dict(policy="gradnorm"), dict(boot_steps=2)):
        assert picks(1e9, **options) == "vmap", options
    assert picks(1e9, name="gradncp") == "vmap"
    assert picks(1e-9, 1e-9, name="gradncp") == "recompute"
    # ... but not through a forward model (the general score is a jacfwd per chunk)
    two_point = build_learner(_field(), "gradncp", inner_steps=2, vmap_budget_mb=1e9)
    assert two_point.batching_for(_TwoPointTask(), batch) == "loop"
    with pytest.raises(ValueError, match="observes its field directly"):
        build_learner(_field(), "gradncp", inner_steps=2, batching="vmap").meta_gradient(_TwoPointTask(), batch)
    # Reptile: vmap or its chunked loop
    assert picks(1e9, name="reptile") == "vmap"
    assert picks(1e-9, name="reptile") == "loop"
    assert picks(1e9, name="reptile", policy="gradnorm") == "loop"
    assert picks(1e9, name="reptile", batch=per_signal) == "loop"
    # a fixed choice is kept
    assert picks(1e-9, 1e-9, batching="vmap") == "vmap"


class _TwoPointTask(ImageTask):
    """Observes each row as the mean of the field at x and -x: two evaluations per row."""

    def observe(self, field_fn, params, query):
        return 0.5 * (field_fn(params, query) + field_fn(params, -query))


class _GridTask(ImageTask):
    """Renders a whole 7x7 grid whatever the rows (as a grid forward model does), then reads one
    value per row: 49 evaluations per observation, however many rows."""

    def observe(self, field_fn, params, query):
        axis = torch.linspace(-1, 1, 7, dtype=query.dtype)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        return field_fn(params, grid).mean(0, keepdim=True) + 0 * query[:, :1]


@pytest.mark.parametrize("n", [10, 64, 65, 1000])
def test_the_count_extrapolates_a_fixed_and_a_per_row_part(n):
    field = _field()
    query = torch.rand(n, 2, dtype=torch.float64)
    params = dict(field.named_parameters())
    assert field_evaluations(TASK, field, params, query) == n
    assert field_evaluations(_TwoPointTask(), field, params, query) == 2 * n
    assert field_evaluations(_GridTask(), field, params, query) == 49


@pytest.mark.parametrize("kind, options", [
    ("gradncp", dict(keep_ratio=0.5, boot_steps=3, boot_lr=0.2, boot_weight=2.0)),
    ("metasgd", dict(policy="gradnorm", keep_ratio=0.25, boot_steps=2)),
    ("fomaml", dict(policy="gradnorm", keep_ratio=0.5, boot_steps=1)),
    ("maml", dict(policy="random", keep_ratio=0.5)),
], ids=["gradncp", "metasgd-gradnorm-boot", "fomaml-gradnorm", "maml-random"])
def test_recomputed_inner_steps_give_the_exact_meta_gradient(kind, options):
    """Checkpointing: the inner loop run detached, each step's Hessian-vector product recomputed
    in chunks of 5 rows on the way back, must give the gradient of autograd through the loop."""
    batch = _batch(n=16)
    _assert_same(_gradients(kind, "recompute", batch, **options), _gradients(kind, "loop", batch, **options))


@pytest.mark.parametrize("query", ["shared", "per-signal"])
@pytest.mark.parametrize("kind, options", [
    ("gradncp", dict(keep_ratio=0.5, boot_steps=3, boot_lr=0.2, boot_weight=2.0)),
    ("metasgd", dict(policy="gradnorm", keep_ratio=0.25, boot_steps=2)),
    ("fomaml", dict(policy="gradnorm", keep_ratio=0.5)),
    ("maml", dict(boot_steps=2, boot_lr=0.1)),
], ids=["gradncp", "metasgd-gradnorm-boot", "fomaml-gradnorm", "maml-boot"])
def test_vmapped_pruning_and_bootstrap_give_the_loops_meta_gradient(kind, options, query):
    """GradNCP vmapped: each signal's top rows by the closed-form score (topk under vmap) and the
    bootstrap's first-order steps inside the vmapped loss, vs the row-by-row loop."""
    batch = _batch(per_signal_query=query == "per-signal", n=16)
    _assert_same(_gradients(kind, "vmap", batch, **options), _gradients(kind, "loop", batch, **options))


@pytest.mark.parametrize("batching, options", [("vmap", {}), ("loop", {}), ("loop", dict(boot_steps=2))],
                         ids=["vmap", "loop", "loop-bootstrap"])
@pytest.mark.parametrize("kind", ["maml", "fomaml", "metasgd"])
def test_compiled_paths_equal_eager(kind, batching, options, monkeypatch):
    """torch.compile of the vmapped meta-batch and of the loop's per-signal inner loop: dynamo +
    AOTAutograd's graph capture through torch.func.grad, vmap and the outer backward. The aot_eager
    backend keeps the test fast; inductor's kernels were compared by hand (max relative difference
    3e-15 in float64, 6e-6 in float32)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    batch = _batch()
    compiled = build_learner(_field(), kind, inner_steps=2, inner_lr=0.3, batching=batching, compile=True, **options)
    stats, grads = compiled.meta_gradient(TASK, batch)
    assert set(compiled._compiled) == {"_batch_losses" if batching == "vmap" else "_inner_loop"}
    _assert_same((float(stats["loss"]), grads), _gradients(kind, batching, batch, **options))


def test_batching_options_are_validated():
    field = _field()
    with pytest.raises(ValueError, match="batching"):
        build_learner(field, "maml", batching="threads")
    for bad in (dict(memory_budget_mb=0.0), dict(vmap_budget_mb=-1.0), dict(vmap_budget_mb=float("nan"))):
        with pytest.raises(ValueError, match="budget_mb"):
            build_learner(field, "maml", **bad)
    with pytest.raises(ValueError, match="vmap_budget_mb"):
        build_learner(field, "reptile", vmap_budget_mb=float("inf"))
    with pytest.raises(ValueError, match="batching"):
        build_learner(field, "reptile", batching="recompute")
    with pytest.raises(ValueError, match="vmap"):
        build_learner(field, "reptile", batching="vmap", policy="gradnorm")
    per_signal = _batch(context=[torch.arange(6), torch.arange(6, 12), torch.arange(3)])
    with pytest.raises(ValueError, match="shared"):
        build_learner(field, "reptile", batching="vmap").meta_gradient(TASK, per_signal)


def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(fn):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    batch = _batch()
    learner = build_learner(_field(), "maml", inner_steps=2, inner_lr=0.3, batching="vmap", compile=True)
    with caplog.at_level("WARNING"):
        got = learner.meta_gradient(TASK, batch)
    assert "torch.compile failed" in caplog.text and "no C++ compiler" in caplog.text
    _assert_same((float(got[0]["loss"]), got[1]), _gradients("maml", "vmap", batch))
    caplog.clear()
    with caplog.at_level("WARNING"):
        learner.meta_gradient(TASK, batch)
    assert not caplog.text  # eager from now on

