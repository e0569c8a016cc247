import pytest
import torch

from metainr import (MAML, FieldConfig, ImageTask, Siren, TrainConfig, build_field, count_parameters, faces, fit,
                     load_learner)
from metainr.compact import export_compact, load_compact
from metainr.fields import density, magnitude_prune, narrow_width, nonzero_parameters, random_prune
from metainr.functional import field_params, predict
from metainr.tasks import Batch
from metainr.train import PruneConfig, iterative_pruning

TASK = ImageTask(channels=1)


def test_magnitude_pruning_removes_exactly_the_smallest_weights_globally():
    field = Siren(out_dim=1, width=8, depth=3, sparse=True, rwf=True)
    with torch.no_grad():
        before = torch.cat([m.effective_weight().abs().flatten() for m in (*field.hidden, field.head)])
    removed = magnitude_prune(field, 0.3)
    after = torch.cat([m.mask.flatten() for m in (*field.hidden, field.head)])
    assert removed == round(0.3 * before.numel()) == int((after == 0).sum())
    # every pruned weight is at most as large as every kept one (first and last layers included)
    assert before[after == 0].max() <= before[after == 1].min()
    assert all(torch.all(m.bias != 0) for m in (*field.hidden, field.head))  # biases untouched


def test_masks_hold_through_inner_loop_fit_and_save_load(tmp_path):
    data = faces("train").subset(slice(0, 8))
    learner = MAML(Siren(out_dim=1, width=8, depth=3, sparse=True), inner_steps=2)
    random_prune(learner.field, 0.5, generator=torch.Generator().manual_seed(0))
    masks = {n: b.clone() for n, b in learner.field.named_buffers()}
    # the inner loop: fast weights stay masked, so the gradient on pruned entries of the init is zero
    _, grads = learner.meta_gradient(TASK, TASK.batch(data.images[:4]))
    for name, mask in masks.items():
        layer = name.rsplit(".", 1)[0]
        assert torch.all(grads[f"field.{layer}.weight"][mask == 0] == 0)
    # 100 Adam steps of fitting: the effective weights of pruned entries are still exactly zero
    result = fit(TASK, learner.field, field_params(learner.field), TASK.batch(data.images[:2]), 100, lr=1e-3)
    for name, mask in masks.items():
        layer = name.rsplit(".", 1)[0]
        effective = result.params[f"{layer}.weight"] * mask
        assert torch.all(effective[:, mask == 0] == 0) and torch.any(effective[:, mask == 1] != 0)
    from metainr import save_checkpoint

    save_checkpoint(tmp_path / "s.safetensors", learner, None, step=0)
    loaded, _ = load_learner(tmp_path / "s.safetensors")
    for name, b in loaded.field.named_buffers():
        assert torch.equal(b, masks[name])
    torch.testing.assert_close(loaded.field(data.coords), learner.field(data.coords), rtol=0, atol=0)


def test_schedule_density_is_point_eight_to_the_k_within_one_weight(tmp_path):
    data = faces("train").subset(slice(0, 8))
    learner = MAML(Siren(out_dim=1, width=10, depth=3, sparse=True), inner_steps=1)
    total = sum(m.mask.numel() for m in (*learner.field.hidden, learner.field.head))
    seen = []
    records = iterative_pruning(learner, TASK, data, TrainConfig(steps=2, batch_size=4), PruneConfig(rounds=6, steps=1),
                                run_dir=tmp_path, on_round=lambda r, lrn: seen.append(density(lrn.field)))
    assert [r["round"] for r in records] == list(range(7)) and len(seen) == 7
    for k, rec in enumerate(records):
        assert abs(rec["density"] * total - 0.8**k * total) <= 1.0
    assert len(list(tmp_path.glob("round_*_density_*.safetensors"))) == 7
    assert (tmp_path / f"round_06_density_{records[-1]['density']:.3f}.safetensors").is_file()


def test_dense_narrow_width_matches_the_parameter_count():
    config = FieldConfig(out_dim=3, width=256, depth=5)
    for density_k in (0.8, 0.8**5, 0.8**10):
        target = int(count_parameters(build_field(config)) * density_k)
        width = narrow_width(config, target)
        got = count_parameters(build_field(FieldConfig(out_dim=3, width=width, depth=5)))
        assert abs(got - target) / target < 0.02, (density_k, width, got, target)


def test_compact_export_round_trips_exactly_and_is_small(tmp_path):
    data = faces("test")
    field = Siren(out_dim=1, width=16, depth=3, sparse=True, rwf=True)
    magnitude_prune(field, 0.9)
    result = fit(TASK, field, field_params(field), Batch(data.coords, data.values[:1]), 20, lr=1e-3)
    params = {n: p[0] for n, p in result.params.items()}
    size = export_compact(tmp_path / "f.safetensors", field, params)
    loaded, loaded_params = load_compact(tmp_path / "f.safetensors")
    torch.testing.assert_close(predict(loaded, loaded_params, data.coords), predict(field, params, data.coords),
                               rtol=1e-6, atol=1e-6)
    dense_bytes = 4 * count_parameters(field)
    assert size < dense_bytes  # about 10% of the weights + bitmask + biases + header
    assert density(loaded) == density(field)
    # the payload is the alive weights, the bitmask and the biases: far below 4 bytes per dense weight
    alive = sum(int(m.mask.sum()) for m in (*field.hidden, field.head))
    assert alive == nonzero_parameters(field) - sum(m.bias.numel() + m.s.numel() for m in (*field.hidden, field.head))


def test_pruning_a_dense_field_is_refused():
    with pytest.raises(ValueError, match="sparse=True"):
        magnitude_prune(Siren(width=4, depth=2), 0.2)
    with pytest.raises(ValueError, match="fraction"):
        PruneConfig(rounds=1, fraction=1.5)


def test_a_schedule_without_dense_phase_ends_round_zero_before_any_step():
    data = faces("train").subset(slice(0, 8))
    learner = MAML(Siren(out_dim=1, width=10, depth=3, sparse=True), inner_steps=1)
    records = iterative_pruning(learner, TASK, data, TrainConfig(steps=0, batch_size=4), PruneConfig(rounds=2, steps=1))
    assert [r["round"] for r in records] == [0, 1, 2] and records[0]["density"] == 1.0
    assert records[2]["density"] == pytest.approx(0.64, abs=0.01)
