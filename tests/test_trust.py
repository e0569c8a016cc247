"""Priors users can trust (issue 23): held-out stopping picks the step before a fit overfits, and
the out-of-class guard keeps a random init where a learned one is wrong, the prior where it is right."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from metainr import MAML, ImageTask, Siren, TrainConfig, fit, fit_from_checkpoint, load_learner, meta_train
from metainr.data.images import faces
from metainr.fit import holdout_split
from metainr.functional import field_function, field_params
from metainr.guard import Candidate, guarded_fit
from metainr.start import learner_start, prepare_fit, random_counterpart
from metainr.tasks import Batch, CTTask, ViewsTask

TASK = ImageTask()


def _png(path, image):
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def wrong_prior(tmp_path_factory):
    """A prior meta-trained a few steps on constant images: deliberately wrong for noise."""
    run = tmp_path_factory.mktemp("constants")
    g = torch.Generator().manual_seed(0)
    constants = torch.rand(16, 1, 1, 1, generator=g).expand(16, 16, 16, 1).clone()
    learner = MAML(Siren(in_dim=2, out_dim=1, width=32, depth=3), inner_steps=2, inner_lr=1e-2)
    meta_train(learner, ImageTask(resolution=16, channels=1), constants,
               TrainConfig(steps=10, batch_size=4, outer_lr=1e-3, eval_every=10), run_dir=run, progress=False)
    noise = torch.rand(16, 16, generator=g)
    return run / "checkpoint.safetensors", _png(run / "noise.png", noise)


@pytest.fixture
def face(tmp_path):
    return _png(tmp_path / "face.png", faces("test").images[0, ..., 0])


def test_holdout_split_is_disjoint_seeded_and_covers_the_fraction():
    kept, held = holdout_split(1000, 0.1, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(1000))  # disjoint, covering
    again, other = holdout_split(1000, 0.1, seed=3), holdout_split(1000, 0.1, seed=4)
    assert torch.equal(again[1], held) and not torch.equal(other[1], held)
    assert len(holdout_split(10, 0.01)[1]) == 1 and len(holdout_split(3, 0.9)[1]) == 2  # never none, never all
    for n, fraction in ((10, 1.0), (10, 0.0), (1, 0.5)):
        with pytest.raises(ValueError):
            holdout_split(n, fraction)


def test_fit_with_holdout_returns_the_params_of_its_lowest_held_out_loss():
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(300, 2, generator=g) * 2 - 1
    values = torch.rand(2, 300, 1, generator=g)  # noise: the held-out loss falls, then rises as the fit memorises
    field = Siren(out_dim=1, width=32, depth=3)
    batch = Batch(coords, values)
    result = fit(TASK, field, field_params(field), batch, 40, lr=1e-3, holdout=0.2, holdout_seed=1)
    losses, chosen = result.holdout_loss, result.chosen_step
    assert losses.shape == (2, 41) and torch.equal(chosen, losses.argmin(dim=1))
    assert bool((chosen < 40).all()) and bool((losses[:, -1] > losses.min(dim=1).values * 1.05).all())
    kept, _ = holdout_split(300, 0.2, seed=1)
    for b in range(2):  # each signal's params: a fit of the kept rows stopped at its chosen step
        plain = fit(TASK, field, field_params(field), Batch(coords[kept], values[b:b + 1, kept]), int(chosen[b]), lr=1e-3)
        for name, p in plain.params.items():
            torch.testing.assert_close(result.params[name][b], p[0])
    direct = TASK.metrics(field_function(field), result.params, batch)["psnr"]
    torch.testing.assert_close(result.final("psnr"), direct)
    assert fit(TASK, field, field_params(field), batch, 5, lr=1e-3).chosen_step is None  # off by default


def test_the_guard_keeps_random_where_the_prior_is_wrong_and_returns_its_exact_fit(wrong_prior):
    ckpt, noise = wrong_prior
    fitted = fit_from_checkpoint(ckpt, noise, 20)
    guard = fitted.guard
    assert guard.winner == ["random"] and guard.probe_steps == 20 and guard.holdout == 0.0
    assert float(guard.losses["random"][0]) < 0.5 * float(guard.losses["prior"][0])  # loss on every observation
    for name, p in guard.probes["random"].params.items():  # the winner's probe is the fit
        torch.testing.assert_close(fitted.result.params[name], p)
    plain = fit_from_checkpoint(ckpt, noise, 20, guard=False)
    assert plain.guard is None and float(fitted.result.psnr[0, -1]) > float(plain.result.psnr[0, -1]) + 3


def test_a_shorter_probe_refits_the_winner_from_its_start(wrong_prior):
    ckpt, noise = wrong_prior
    learner, meta = load_learner(ckpt)
    task = ImageTask(resolution=16, channels=1)
    batch = task.read(noise)
    start = learner_start(learner, meta, task)
    rand = random_counterpart(start)
    assert rand.field is not start.field and rand.rule.optimizer == "adam"
    for (name, p), q in zip(rand.field.named_parameters(), start.field.parameters()):
        assert p.shape == q.shape and not torch.equal(p, q)  # the architecture, fresh weights
    cands = [Candidate(s.field, s.init(batch), s.rule.fit_options(task, s.field)) for s in (start, rand)]
    result, report = guarded_fit(task, batch, 20, *cands, probe_steps=10)
    assert report.probe_steps == 10 and report.winner == ["random"]
    alone = fit(task, rand.field, rand.init(batch), batch, 20, **cands[1].options)
    for name, p in alone.params.items():
        torch.testing.assert_close(result.params[name], p)


def test_the_guard_keeps_the_prior_on_its_own_class(face):
    fitted = fit_from_checkpoint("zoo:faces", face)
    assert fitted.guard.winner == ["prior"] and fitted.steps == 3
    assert float(fitted.guard.losses["prior"][0]) < 0.1 * float(fitted.guard.losses["random"][0])
    assert float(fitted.result.psnr[0, -1]) > 35


def test_holdout_is_on_for_sparse_tasks_and_off_for_dense_ones(face):
    assert CTTask.preset.holdout == 0.1 and ViewsTask.preset.holdout == 0.1 and ImageTask.preset.holdout == 0.0
    assert prepare_fit("zoo:faces", face).holdout == 0.0 and prepare_fit("zoo:faces", face, holdout=0.2).holdout == 0.2
    with pytest.raises(ValueError, match="holdout"):
        prepare_fit("zoo:faces", face, holdout=1.0)


def test_cli_fit_reports_the_guard_and_held_out_stopping(cli, wrong_prior, face):
    ckpt, noise = wrong_prior
    code, out, err = cli("fit", noise, "--init", ckpt, "--steps", "20", "--json", "--out", noise.with_name("a.png"))
    assert code == 0, err
    report = json.loads(out)
    assert report["guard"]["winner"] == "random" and report["guard"]["probe_steps"] == 20
    losses = report["guard"]["losses"]
    assert losses["random"] < losses["prior"] and report["steps"] == [20] and report["chosen_step"] is None
    code, out, err = cli("fit", noise, "--init", ckpt, "--steps", "20", "--json", "--no-guard", "--out",
                         noise.with_name("b.png"))
    assert code == 0, err
    assert json.loads(out)["guard"] is None
    code, out, err = cli("fit", face, "--init", "zoo:faces", "--steps", "6", "--json", "--holdout", "0.2",
                         "--record", "0,2", "--no-guard")
    report = json.loads(out)
    assert code == 0 and report["holdout"] == 0.2 and report["steps"] == [0, 2, 6]
    assert 0 <= report["chosen_step"] <= 6 and len(report["holdout_loss"]) == 7
    code, out, err = cli("fit", face, "--init", "zoo:faces", "--json", "--holdout", "0", "--no-guard")
    report = json.loads(out)
    assert code == 0 and report["holdout"] == 0.0 and report["chosen_step"] is None and report["holdout_loss"] is None
    code, _, err = cli("fit", face, "--init", "zoo:faces", "--holdout", "1.5")
    assert code == 2 and "fraction" in err
