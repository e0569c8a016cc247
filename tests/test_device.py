"""Device follows data: with the learner, the field and the batch on the ``meta`` device (shapes,
no storage), any tensor the library makes on the CPU inside a meta-step or a fit step raises
"Tensor on device cpu is not on the expected device meta". One hole: an IN-PLACE update of a CPU
tensor by a meta one passes silently, so the outputs' devices are asserted too (CUDA raises on
both). The device option resolves clearly."""
import pytest
import torch

from metainr import ImageTask, MetaINRError, PositionalMLP, Siren, build_learner, faces, fit, resolve_device

LEARNERS = [("maml", {}), ("fomaml", {}), ("metasgd", {}), ("reptile", {}), ("reptile", dict(inner_optimizer="adam")),
            ("gradncp", dict(inner_steps=2)), ("maml", dict(policy="random", boot_steps=1)),
            ("maml", dict(batching="vmap")), ("maml", dict(batching="recompute")),
            ("metasgd", dict(batching="recompute", policy="gradnorm")), ("gradncp", dict(inner_steps=2, batching="loop"))]


def _meta_batch(task, images):
    return task.batch(images).to("meta")


@pytest.mark.parametrize("name, options", LEARNERS, ids=[f"{n}-{'-'.join(o)}" for n, o in LEARNERS])
def test_meta_step_and_fit_step_make_every_tensor_on_the_device_of_their_inputs(name, options):
    task = ImageTask(channels=1)
    learner = build_learner(Siren(out_dim=1, width=8, depth=3, rwf=True, sparse=True), name, **options).to("meta")
    batch = _meta_batch(task, faces("test").images[:3])
    stats, grads = learner.meta_gradient(task, batch)
    assert stats["loss"].device.type == "meta"
    assert all(g.device.type == "meta" for g in grads.values())
    assert set(grads) == {n for n, _ in learner.named_parameters()}
    init = learner.signal_init(task, batch)
    for opts in (learner.test_rule().fit_options(task, learner.field), dict(optimizer="adam", lr=1e-3)):
        result = fit(task, learner.field, init, batch, 1, record=[0, 1], metrics=("psnr", "ssim"), **opts)
        assert all(p.device.type == "meta" for p in result.params.values())
        assert result.psnr.device.type == "meta" and result.metrics["ssim"].shape == (3, 2)
        assert result.final_loss.device.type == "meta"


def test_transinr_step_on_the_meta_device():
    task = ImageTask(channels=1)
    learner = build_learner(PositionalMLP(out_dim=1, width=8, depth=3, n_freqs=2), "transinr", tokens=25, token_dim=25,
                            hyper_dim=8, hyper_depth=1, hyper_heads=2).to("meta")
    batch = _meta_batch(task, faces("test").images[:2])
    _, grads = learner.meta_gradient(task, batch)
    assert all(g.device.type == "meta" for g in grads.values())
    result = fit(task, learner.field, learner.signal_init(task, batch), batch, 1)
    assert result.params["head.weight"].device.type == "meta"


def test_the_meta_device_check_catches_a_cpu_tensor():
    # the mechanism these tests rely on: a CPU tensor meeting a meta one is an error
    with pytest.raises(RuntimeError, match="meta"):
        torch.ones(3, device="meta") + torch.ones(3)


def test_device_option_resolves_or_fails_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MetaINRError, match="unknown device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(MetaINRError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("name, options", [("reptile", {}), ("metasgd", dict(policy="gradnorm", boot_steps=1))])
@pytest.mark.parametrize("sampling", ["pixels", "field"])
def test_ct_meta_step_and_fit_step_on_the_meta_device(name, options, sampling):
    # CT's circle masks select pixels (a data-dependent nonzero): on the meta device, let it assume
    # every element is selected (the all-ones shape); the tagged rows of score_image cannot be split
    # without data, so the meta-step uses rays only
    with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
        _ct_steps(name, options, sampling)


def _ct_steps(name, options, sampling):
    from metainr.data.ct import ellipse_phantoms
    from metainr.tasks import CTTask

    task = CTTask(resolution=8, min_views=1, max_views=2, sampling=sampling, val_views=(2,), score_image=False)
    images = ellipse_phantoms(2, 8)
    batch = task.train_batch(images, torch.Generator().manual_seed(0)).to("meta")
    learner = build_learner(Siren(out_dim=1, width=8, depth=3, sparse=True), name, inner_steps=1, **options).to("meta")
    stats, grads = learner.meta_gradient(task, batch)
    assert stats["loss"].device.type == "meta" and all(g.device.type == "meta" for g in grads.values())
    scan = task.validation_batches(images)[0].to("meta")
    result = fit(task, learner.field, learner.signal_init(task, scan), scan, 1, record=[0, 1],
                 metrics=("psnr", "ssim"), **learner.test_rule().fit_options(task, learner.field))
    assert result.psnr.device.type == "meta" and result.final_loss.device.type == "meta"
