"""Numerical checks of the learners' meta-gradients against independent references."""
import pytest
import torch

from metainr import MAML, FieldConfig, ImageTask, MetaSGD, Reptile, Siren, build_field, build_learner
from metainr.functional import predict
from metainr.tasks import Batch

TASK = ImageTask()


def signal_mse(field, params, coords, values):
    return ((predict(field, params, coords) - values) ** 2).mean()


def tiny(dtype=torch.float64):
    field = Siren(in_dim=2, out_dim=2, width=5, depth=3, w0=3.0, w0_first=3.0, seed=1).to(dtype)
    g = torch.Generator().manual_seed(2)
    coords = (torch.rand(7, 2, generator=g) * 2 - 1).to(dtype)
    values = torch.rand(3, 7, 2, generator=g).to(dtype)
    return field, coords, values


def mean_outer_loss(learner, coords, values):
    return sum(learner.adapted_loss(TASK, coords, values[b]) for b in range(values.shape[0])) / values.shape[0]




def _fd_enabled_loss(learner, coords, values):
    with torch.enable_grad():
        return mean_outer_loss(learner, coords, values)


@pytest.mark.parametrize("kind", ["maml", "metasgd"])
def test_second_order_meta_gradient_matches_finite_differences(kind):
    field, coords, values = tiny()
    learner = build_learner(field, kind, inner_steps=2, inner_lr=0.3)
    _, grads = learner.meta_gradient(TASK, Batch(coords, values))

    # finite differences need the inner gradients, so autograd stays on inside the loss
    eps = 1e-6
    for name, p in learner.named_parameters():
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            old = flat[i].item()
            flat[i] = old + eps
            up = _fd_enabled_loss(learner, coords, values).item()
            flat[i] = old - eps
            down = _fd_enabled_loss(learner, coords, values).item()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert grads[name].view(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, i)


def test_second_order_differs_from_first_order():
    field, coords, values = tiny()
    so = MAML(field, inner_steps=2, inner_lr=0.3)
    fo = MAML(field, inner_steps=2, inner_lr=0.3, first_order=True)
    _, g2 = so.meta_gradient(TASK, Batch(coords, values))
    _, g1 = fo.meta_gradient(TASK, Batch(coords, values))
    diff = max((g2[n] - g1[n]).abs().max().item() for n in g2)
    assert diff > 1e-4


def test_first_order_gradient_is_gradient_at_adapted_params():
    field, coords, values = tiny()
    learner = MAML(field, inner_steps=3, inner_lr=0.3, first_order=True)
    _, grads = learner.meta_gradient(TASK, Batch(coords, values))
    # reference: adapt each signal with detached plain SGD, then take the loss gradient at theta_K
    expected = {n: torch.zeros_like(p) for n, p in field.named_parameters()}
    for b in range(values.shape[0]):
        params = {n: p.detach().clone() for n, p in field.named_parameters()}
        for _ in range(3):
            leaf = {n: p.requires_grad_(True) for n, p in params.items()}
            g = torch.autograd.grad(signal_mse(field, leaf, coords, values[b]), list(leaf.values()))
            params = {n: (p - 0.3 * gi).detach() for (n, p), gi in zip(leaf.items(), g)}
        leaf = {n: p.requires_grad_(True) for n, p in params.items()}
        g = torch.autograd.grad(signal_mse(field, leaf, coords, values[b]), list(leaf.values()))
        for n, gi in zip(leaf, g):
            expected[n] += gi / values.shape[0]
    for n in expected:
        torch.testing.assert_close(grads[f"field.{n}"], expected[n])


def test_reptile_update_is_init_minus_mean_adapted():
    field, coords, values = tiny()
    learner = Reptile(field, inner_steps=4, inner_lr=0.2)
    _, grads = learner.meta_gradient(TASK, Batch(coords, values))
    finals = []
    for b in range(values.shape[0]):
        params = {n: p.detach().clone() for n, p in field.named_parameters()}
        for _ in range(4):
            leaf = {n: p.requires_grad_(True) for n, p in params.items()}
            g = torch.autograd.grad(signal_mse(field, leaf, coords, values[b]), list(leaf.values()))
            params = {n: (p - 0.2 * gi).detach() for (n, p), gi in zip(leaf.items(), g)}
        finals.append(params)
    for n, p in field.named_parameters():
        expected = p.detach() - torch.stack([f[n] for f in finals]).mean(0)
        torch.testing.assert_close(grads[f"field.{n}"], expected)


@pytest.mark.parametrize("kind", ["maml", "fomaml", "metasgd"])
def test_vmap_and_loop_batching_agree(kind):
    field, coords, values = tiny()
    loop = build_learner(field, kind, inner_steps=2, inner_lr=0.3, batching="loop")
    vmap = build_learner(field, kind, inner_steps=2, inner_lr=0.3, batching="vmap")
    if kind == "metasgd":
        vmap.load_state_dict(loop.state_dict())
    s1, g1 = loop.meta_gradient(TASK, Batch(coords, values))
    s2, g2 = vmap.meta_gradient(TASK, Batch(coords, values))
    assert float(s1["loss"]) == pytest.approx(float(s2["loss"]), rel=1e-6)  # float32 sums in a different order
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-9, atol=1e-12)


def test_metasgd_learns_a_step_size_per_parameter():
    field, coords, values = tiny()
    learner = MetaSGD(field, inner_steps=1, inner_lr=0.1)
    lrs = learner.inner_lrs()
    assert set(lrs) == {n for n, _ in field.named_parameters()}
    assert all(torch.all(t == 0.1) for t in lrs.values())
    _, grads = learner.meta_gradient(TASK, Batch(coords, values))
    assert any(grads[n].abs().sum() > 0 for n in grads if n.startswith("lrs."))


def test_learner_config_errors():
    field = build_field(FieldConfig(width=4, depth=2))
    with pytest.raises(ValueError, match="unknown learner"):
        build_learner(field, "nope")
    with pytest.raises(ValueError, match="batching"):
        MAML(field, batching="threads")
