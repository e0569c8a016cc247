import pytest
import torch

from metainr import ImageTask, Siren, fit
from metainr.functional import field_params, predict
from metainr.tasks import Batch

TASK = ImageTask()


def signal_mse(field, params, coords, values):
    return ((predict(field, params, coords) - values) ** 2).mean()


def _data():
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(40, 2, generator=g) * 2 - 1
    values = torch.rand(3, 40, 1, generator=g)
    return coords, values


def test_batched_adam_fit_equals_fitting_each_signal_alone():
    coords, values = _data()
    field = Siren(out_dim=1, width=8, depth=3)
    init = field_params(field)
    batched = fit(TASK, field, init, Batch(coords, values), 5, optimizer="adam", lr=1e-3)
    for b in range(3):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in init.items()}
        opt = torch.optim.Adam(params.values(), lr=1e-3)
        for _ in range(5):
            opt.zero_grad()
            signal_mse(field, params, coords, values[b]).backward()
            opt.step()
        for n in params:
            torch.testing.assert_close(batched.params[n][b], params[n].detach(), rtol=1e-5, atol=1e-6)


def test_sgd_fit_with_per_parameter_lrs_matches_manual_step():
    coords, values = _data()
    field = Siren(out_dim=1, width=8, depth=3)
    init = {n: p.detach() for n, p in field_params(field).items()}
    lrs = {n: torch.full_like(p, 0.01 * (i + 1)) for i, (n, p) in enumerate(init.items())}
    result = fit(TASK, field, init, Batch(coords, values[:1]), 1, optimizer="sgd", lr=lrs)
    leaf = {n: p.clone().requires_grad_(True) for n, p in init.items()}
    grads = torch.autograd.grad(signal_mse(field, leaf, coords, values[0]), list(leaf.values()))
    for (n, p), g in zip(init.items(), grads):
        torch.testing.assert_close(result.params[n][0], p - lrs[n] * g)


def test_fit_records_requested_steps_and_improves():
    coords, values = _data()
    field = Siren(out_dim=1, width=16, depth=3)
    result = fit(TASK, field, field_params(field), Batch(coords, values), 50, optimizer="adam", lr=1e-3,
                 record=[0, 10, 50])
    assert result.steps == [0, 10, 50]
    assert result.psnr.shape == (3, 3)
    assert torch.all(result.psnr[:, -1] > result.psnr[:, 0] + 3)


def test_fit_rejects_bad_arguments():
    coords, values = _data()
    field = Siren(out_dim=1, width=4, depth=2)
    with pytest.raises(ValueError, match="steps"):
        fit(TASK, field, field_params(field), Batch(coords, values), -1)
    with pytest.raises(ValueError, match="optimizer"):
        fit(TASK, field, field_params(field), Batch(coords, values), 1, optimizer="lbfgs")


def test_coordinate_chunking_gives_the_same_fit():
    """A signal swept in coordinate slices (bounded memory) is fitted exactly as in one pass."""
    field = Siren(out_dim=2, width=16, depth=3, seed=5).double()
    g = torch.Generator().manual_seed(1)
    coords = torch.rand(300, 2, generator=g).double() * 2 - 1
    values = torch.rand(3, 300, 2, generator=g).double()
    for opt, lr in (("adam", 1e-3), ("sgd", 1e-2)):
        one = fit(TASK, field, field_params(field), Batch(coords, values), 5, optimizer=opt, lr=lr, record=[0, 5])
        sliced = fit(TASK, field, field_params(field), Batch(coords, values), 5, optimizer=opt, lr=lr, record=[0, 5],
                     chunk_coords=70)
        assert torch.allclose(one.psnr, sliced.psnr, rtol=1e-10)
        for n in one.params:
            assert torch.allclose(one.params[n], sliced.params[n], rtol=1e-9, atol=1e-12)


def test_per_signal_query_rows_give_what_shared_rows_give():
    """Query rows (B, N, d), one set per signal (rays of posed views), through fit and learners."""
    from metainr import build_learner

    coords, values = _data()
    shared, own = Batch(coords, values), Batch(coords.expand(3, -1, -1).clone(), values)
    field = Siren(out_dim=1, width=8, depth=3)
    for opts in (dict(optimizer="adam", lr=1e-3), dict(optimizer="sgd", lr=1e-2)):
        a = fit(TASK, field, field_params(field), shared, 3, record=[0, 3], **opts)
        b = fit(TASK, field, field_params(field), own, 3, record=[0, 3], **opts)
        torch.testing.assert_close(a.psnr, b.psnr)
        for n in a.params:
            torch.testing.assert_close(a.params[n], b.params[n])
    for name, options in (("maml", {}), ("maml", dict(batching="vmap")), ("reptile", {}), ("gradncp", {})):
        learner = build_learner(field, name, inner_steps=2, **options)
        (_, g1), (_, g2) = learner.meta_gradient(TASK, shared), learner.meta_gradient(TASK, own)
        for n in g1:
            torch.testing.assert_close(g1[n], g2[n], rtol=1e-5, atol=1e-7, msg=f"{name} {options} {n}")
