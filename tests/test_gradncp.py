"""GradNCP: the closed-form and general scores, top-k selection, the bootstrap target, test-time
rescaling, and a short meta-training that must beat a random init."""
import math

import pytest
import torch

from metainr import FieldConfig, ImageTask, MAML, Siren, TrainConfig, build_field, build_learner, faces, fit
from metainr import mean_psnr, meta_train
from metainr.functional import field_params, predict, predict_with_features
from metainr.meta import GradientRescaling, GradNCP, select_context
from metainr.meta.context import bootstrap_correction, closed_form_scores, general_scores, kept_count
from metainr.tasks import Batch

TASK = ImageTask()


def signal_mse(field, params, coords, values):
    return ((predict(field, params, coords) - values) ** 2).mean()


def context_scores(field, params, coords, values, chunk=16384):
    return closed_form_scores(field, params, coords, values, chunk)


def _signal(n=40, channels=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, generator=g) * 2 - 1).to(dtype), torch.rand(n, channels, generator=g).to(dtype)


@pytest.mark.parametrize("kind", ["siren", "fourier", "pe"])
def test_closed_form_score_equals_autograd_last_layer_gradient_norm(kind):
    field = build_field(FieldConfig(kind=kind, out_dim=3, width=16, depth=3, seed=2)).double()
    coords, values = _signal()
    params = field_params(field)
    scores = context_scores(field, params, coords, values, chunk=7)  # chunks of 7 exercise the chunking
    for i in range(coords.shape[0]):
        # 0.5 * ||e||^2 of ONE coordinate: its last-layer gradient is (e h^T, e), norm ||e|| sqrt(||h||^2 + 1)
        loss = 0.5 * ((predict(field, params, coords[i:i + 1]) - values[i:i + 1]) ** 2).sum()
        gw, gb = torch.autograd.grad(loss, [params["head.weight"], params["head.bias"]])
        reference = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())
        assert scores[i].item() == pytest.approx(reference.item(), rel=1e-10)


@pytest.mark.parametrize("kind, extra", [("siren", {}), ("fourier", {}), ("siren", dict(rwf=True, sparse=True))],
                         ids=["siren", "fourier", "rwf+sparse"])
def test_general_score_through_a_forward_model_equals_the_closed_form_on_images(kind, extra):
    """The torch.func path (jacfwd of the observations w.r.t. a last-layer perturbation) must give
    the closed form when the forward model is the identity; chunk=40 exercises its row chunking."""
    field = build_field(FieldConfig(kind=kind, out_dim=3, width=16, depth=3, seed=2, **extra)).double()
    coords, values = _signal(n=30)
    params = field_params(field)
    general = general_scores(TASK, field, params, coords, values, chunk=40)
    closed = closed_form_scores(field, params, coords, values)
    assert general.shape == closed.shape == (30,)
    torch.testing.assert_close(general, closed, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("extra", [dict(rwf=True), dict(sparse=True)], ids=["rwf", "sparse"])
def test_score_uses_the_features_the_head_consumes(extra):
    """For factorised or masked heads the score is the gradient norm w.r.t. the EFFECTIVE last
    layer: perturbing the output by (dW h + db) must give exactly those gradients."""
    field = build_field(FieldConfig(out_dim=2, width=12, depth=3, seed=4, **extra)).double()
    coords, values = _signal(n=15, channels=2)
    params = field_params(field)
    pred, h = predict_with_features(field, params, coords)
    assert torch.allclose(pred, predict(field, params, coords))
    scores = context_scores(field, params, coords, values)
    for i in range(coords.shape[0]):
        dw = torch.zeros(2, 12, dtype=torch.float64, requires_grad=True)
        db = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        loss = 0.5 * ((pred[i].detach() + dw @ h[i].detach() + db - values[i]) ** 2).sum()
        gw, gb = torch.autograd.grad(loss, [dw, db])
        assert scores[i].item() == pytest.approx(math.sqrt(gw.pow(2).sum() + gb.pow(2).sum()), rel=1e-10)


@pytest.mark.parametrize("n, gamma", [(100, 0.25), (101, 0.25), (7, 0.5), (3, 0.01)])
def test_topk_keeps_ceil_gamma_n_highest_scores(n, gamma):
    scores = torch.randperm(n).double()  # distinct scores
    keep = select_context(scores, gamma)
    k = max(1, math.ceil(gamma * n))
    assert keep.numel() == k == kept_count(n, gamma)
    assert set(keep.tolist()) == set(torch.argsort(scores, descending=True)[:k].tolist())
    rand = select_context(scores, gamma, "random", torch.Generator().manual_seed(0))
    assert rand.numel() == k and rand.unique().numel() == k


def _tiny_gradncp(**overrides):
    field = Siren(in_dim=2, out_dim=2, width=6, depth=3, w0=3.0, w0_first=3.0, seed=1).double()
    cfg = dict(inner_steps=2, inner_lr=0.3, keep_ratio=0.5, boot_steps=3, boot_lr=0.2, boot_weight=2.0,
               chunk_coords=5)
    return build_learner(field, "gradncp", **{**cfg, **overrides})


def test_bootstrap_target_carries_no_gradient_and_the_meta_gradient_is_exact():
    learner = _tiny_gradncp()
    coords, values = _signal(n=12, channels=2, seed=3)
    fast = learner.adapt(TASK, coords, values)
    # theta_boot by hand: 3 first-order full-context SGD steps of 0.2 from theta_K
    target = {n: p.detach() for n, p in fast.items()}
    for _ in range(3):
        leaf = {n: p.clone().requires_grad_(True) for n, p in target.items()}
        g = torch.autograd.grad(signal_mse(learner.field, leaf, coords, values), list(leaf.values()))
        target = {n: (p - 0.2 * gi).detach() for (n, p), gi in zip(leaf.items(), g)}
    _, reg = bootstrap_correction(TASK, learner.field, fast, coords, values, learner.context, chunk=5)
    assert all(t.grad_fn is None and not t.requires_grad for t in reg.values())
    # reference: autograd through everything at once, with the target detached by hand
    distance = torch.sqrt(sum(((target[n].detach() - fast[n]) ** 2).sum() for n in fast))
    loss = signal_mse(learner.field, fast, coords, values) + learner.context.boot_weight * distance
    names, meta = zip(*learner.named_parameters())
    reference = dict(zip(names, torch.autograd.grad(loss, meta)))
    stats, grads = learner.meta_gradient(TASK, Batch(coords, values[None]))
    assert float(stats["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    for n in names:
        assert torch.allclose(grads[n], reference[n], rtol=1e-8, atol=1e-12), n


def test_full_context_without_bootstrap_is_maml():
    learner = _tiny_gradncp(keep_ratio=1.0, boot_weight=0.0)
    maml = MAML(learner.field, inner_steps=2, inner_lr=0.3)
    coords, values = _signal(n=12, channels=2, seed=5)
    values = torch.stack([values, values.flip(0)])
    _, g1 = learner.meta_gradient(TASK, Batch(coords, values))
    _, g2 = maml.meta_gradient(TASK, Batch(coords, values))
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-10, atol=1e-14), n


def test_inner_steps_use_only_the_kept_coordinates():
    learner = _tiny_gradncp(inner_steps=1, keep_ratio=0.25)
    coords, values = _signal(n=16, channels=2, seed=6)
    trace = []
    fast = learner.adapt(TASK, coords, values, trace=trace)
    assert len(trace) == 2 and trace[0].numel() == 4
    by_hand = MAML(learner.field, inner_steps=1, inner_lr=0.3).adapt(TASK, coords[trace[0]], values[trace[0]])
    for n in fast:
        assert torch.allclose(fast[n], by_hand[n], rtol=1e-12)


def test_rescaled_step_has_the_pruned_gradient_norm():
    field = Siren(out_dim=3, width=16, depth=3, seed=3).double()
    coords, values = _signal(n=64, channels=3, seed=7)
    values = torch.stack([values, values.roll(5, 0)])
    init = field_params(field)
    result = fit(TASK, field, init, Batch(coords, values), 1, optimizer="sgd", lr=1.0,
                 transform=GradientRescaling(TASK, field, 0.25))
    for b in range(2):
        step = torch.sqrt(sum(((result.params[n][b] - init[n]) ** 2).sum() for n in init))
        keep = select_context(context_scores(field, init, coords, values[b]), 0.25)
        pruned = torch.autograd.grad(signal_mse(field, init, coords[keep], values[b][keep]), list(init.values()))
        assert step.item() == pytest.approx(math.sqrt(sum(g.pow(2).sum() for g in pruned)), rel=1e-8)
    # and its direction is the full gradient's
    full = [g.detach() for g in torch.autograd.grad(signal_mse(field, init, coords, values[0]), list(init.values()))]
    delta = [init[n].detach() - result.params[n][0] for n in init]
    cos = sum((a * b).sum() for a, b in zip(full, delta)) / math.sqrt(
        sum(a.pow(2).sum() for a in full) * sum(b.pow(2).sum() for b in delta))
    assert cos.item() == pytest.approx(1.0, abs=1e-10)


def test_gradncp_options_are_validated():
    field = Siren(out_dim=1, width=8, depth=3)
    for bad in (dict(keep_ratio=0.0), dict(policy="magic"), dict(boot_steps=-1),
                dict(batching="vmap", policy="random"), dict(batching="threads")):
        with pytest.raises(ValueError):
            GradNCP(field, **bad)


def test_short_gradncp_meta_training_beats_random_init():
    train, test = faces("train"), faces("test")
    learner = GradNCP(Siren(out_dim=1, width=32, depth=4), inner_steps=4, inner_lr=1e-2)
    meta_train(learner, TASK, train, TrainConfig(steps=60, batch_size=4, outer_lr=1e-3), progress=False)
    init = {n: p.detach() for n, p in learner.init_params().items()}
    rule = learner.test_rule()
    assert rule.rescale == 0.25
    batch = TASK.batch(test.images)
    meta = mean_psnr(fit(TASK, learner.field, init, batch, 4, **rule.fit_options(TASK, learner.field)).psnr[:, -1])
    field = Siren(out_dim=1, width=32, depth=4, seed=1)
    random = max(mean_psnr(fit(TASK, field, field_params(field), batch, 4, optimizer="adam",
                               lr=lr).psnr[:, -1]) for lr in (1e-4, 3e-4, 1e-3, 3e-3))
    # measured here: 25.7 dB (4 rescaled SGD steps) vs 16.4 dB (best Adam lr); the margin leaves room for noise
    assert meta > random + 5.0, (meta, random)
