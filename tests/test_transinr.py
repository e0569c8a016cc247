import pytest
import torch

from metainr import ImageTask, PositionalMLP, Siren, TrainConfig, faces, fit, mean_psnr, meta_train
from metainr.meta import TransINR
from metainr.tasks.image import auto_patch_size

TASK = ImageTask(channels=1)


def _tokens(images):
    return TASK.tokens(TASK.batch(images))


def _learner(**kw):
    field = PositionalMLP(out_dim=1, width=12, depth=3, n_freqs=4)
    return TransINR(field, tokens=25, token_dim=25, hyper_dim=16, hyper_depth=1, hyper_heads=2, n_groups=5, **kw)


def test_hypernetwork_output_has_the_field_shapes_and_unit_rows():
    learner = _learner()
    params = learner.hyper_params(_tokens(faces("train").images[:3]))
    own = dict(learner.field.named_parameters())
    assert params.keys() == own.keys()
    for name, p in params.items():
        assert p.shape == (3, *own[name].shape), name
        if name.endswith("weight"):
            torch.testing.assert_close(p.norm(dim=-1), torch.ones(p.shape[:-1]))
        else:  # biases are not modulated
            torch.testing.assert_close(p, own[name].expand_as(p))


def test_output_unit_j_uses_group_j_mod_g():
    learner = _learner()
    with torch.no_grad():
        learner.field.hidden[1].weight.fill_(1.0)  # base weight of a 12 -> 12 layer; g = 5 groups
    w = learner.hyper_params(_tokens(faces("train").images[:1]))["hidden.1.weight"][0]
    for j in range(12):
        torch.testing.assert_close(w[j], w[j % 5])
    assert not torch.allclose(w[0], w[1])


def test_base_weights_at_init_give_a_valid_field():
    learner = _learner()
    data = faces("test")
    assert torch.isfinite(learner.field(data.coords)).all()
    batch = TASK.batch(data.images[:4])
    init = learner.signal_init(TASK, batch)
    result = fit(TASK, learner.field, init, batch, 0, record=[0])
    assert torch.isfinite(result.psnr).all()


def test_patch_size_rules():
    assert auto_patch_size(25) == 5 and auto_patch_size(64) == 8 and auto_patch_size(32) == 4
    with pytest.raises(ValueError, match="divide"):
        ImageTask(patch_size=4).tokens(TASK.batch(faces("train").images[:1]))
    with pytest.raises(ValueError, match="25 tokens of 25 features"):
        _learner().hyper_params(ImageTask(patch_size=1).tokens(TASK.batch(faces("train").images[:1])))
    with pytest.raises(ValueError, match="rwf"):
        TransINR(Siren(out_dim=1, width=8, depth=2, rwf=True), tokens=25, token_dim=25)


def test_short_training_beats_random_init_at_zero_steps():
    train, test = faces("train"), faces("test")
    learner = TransINR(PositionalMLP(out_dim=1, width=32, depth=4), tokens=25, token_dim=25, hyper_dim=32,
                       hyper_depth=2)
    meta_train(learner, TASK, train, TrainConfig(steps=150, batch_size=16, outer_lr=1e-3), progress=False)
    batch = TASK.batch(test.images)
    init = learner.signal_init(TASK, batch)
    ours = mean_psnr(fit(TASK, learner.field, init, batch, 0).psnr[:, -1])
    random_field = PositionalMLP(out_dim=1, width=32, depth=4, seed=1)
    random = mean_psnr(fit(TASK, random_field, dict(random_field.named_parameters()), batch, 0).psnr[:, -1])
    # measured here: 15.8 dB vs 11.8 dB
    assert ours > random + 2.0, (ours, random)
