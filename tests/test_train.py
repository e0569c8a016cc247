import json

import pytest
import torch

from metainr import (MAML, CheckpointMismatch, ImageDataset, ImageTask, MetaINRError, Siren, TrainConfig,
                     TrainingDiverged, faces, load_learner, meta_train, save_checkpoint, task_from_meta)
from metainr.disk import load_tensors

TASK = ImageTask(channels=1)


@pytest.fixture(scope="module")
def small_faces():
    return faces("train").subset(slice(0, 16))


def _learner(width=8, **kw):
    return MAML(Siren(out_dim=1, width=width, depth=3), inner_steps=2, inner_lr=1e-2, **kw)


def test_save_load_gives_same_outputs(tmp_path, small_faces):
    learner = MAML(Siren(out_dim=1, width=8, depth=3, rwf=True), meta_sgd=True, inner_steps=2)
    meta_train(learner, TASK, small_faces, TrainConfig(steps=3, batch_size=4, outer_lr=1e-3), progress=False)
    save_checkpoint(tmp_path / "a.safetensors", learner, None, step=3, task=TASK)
    loaded, meta = load_learner(tmp_path / "a.safetensors")
    assert task_from_meta(meta).spec() == TASK.spec()
    coords = small_faces.coords
    torch.testing.assert_close(loaded.field(coords), learner.field(coords), rtol=0, atol=0)
    for n, t in learner.inner_lrs().items():
        torch.testing.assert_close(loaded.inner_lrs()[n], t)
    assert meta["step"] == 3 and meta["field"]["rwf"] is True and meta["learner"]["name"] == "metasgd"


def test_loading_into_another_architecture_fails_clearly(tmp_path, small_faces):
    from metainr.train import restore as _restore

    save_checkpoint(tmp_path / "w8.safetensors", _learner(8), None, step=0)
    tensors, _ = load_tensors(tmp_path / "w8.safetensors")
    with pytest.raises(CheckpointMismatch, match="shape"):
        _restore(_learner(16), None, tensors, "w8")
    with pytest.raises(CheckpointMismatch, match="missing"):
        _restore(_learner(8, meta_sgd=True), None, tensors, "w8")


def test_resume_equals_uninterrupted(tmp_path, small_faces):
    cfg = TrainConfig(steps=6, batch_size=4, outer_lr=1e-3, checkpoint_every=3, log_every=1)
    full = _learner()
    meta_train(full, TASK, small_faces, cfg, run_dir=tmp_path / "full", progress=False)

    first = _learner()
    meta_train(first, TASK, small_faces, TrainConfig(**{**cfg.to_dict(), "steps": 3}), run_dir=tmp_path / "part",
               progress=False)
    resumed = _learner()  # a fresh process would start from the same constructor
    meta_train(resumed, TASK, small_faces, cfg, run_dir=tmp_path / "part", resume=True, progress=False)
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_with_a_different_architecture_is_refused(tmp_path, small_faces):
    cfg = TrainConfig(steps=2, batch_size=4)
    meta_train(_learner(8), TASK, small_faces, cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointMismatch, match="width=8"):
        meta_train(_learner(16), TASK, small_faces, TrainConfig(steps=4, batch_size=4), run_dir=tmp_path, resume=True,
                   progress=False)
    with pytest.raises(MetaINRError, match="nothing to resume"):
        meta_train(_learner(8), TASK, small_faces, cfg, run_dir=tmp_path / "empty", resume=True, progress=False)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, small_faces):
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=1)
    meta_train(_learner(), TASK, small_faces, cfg, run_dir=tmp_path, progress=False)
    good = (tmp_path / "checkpoint.safetensors").read_bytes()
    poisoned = ImageDataset(torch.full_like(small_faces.images, float("nan")))
    with pytest.raises(TrainingDiverged, match=r"diverged at outer step 3.*\(step 2\)"):
        meta_train(_learner(), TASK, poisoned, TrainConfig(**{**cfg.to_dict(), "steps": 4}), run_dir=tmp_path,
                   resume=True, progress=False)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == good


def test_exploding_inner_loop_is_reported_as_divergence(tmp_path, small_faces):
    learner = MAML(Siren(out_dim=1, width=8, depth=3), inner_steps=3, inner_lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"outer step 1.*checkpoint.safetensors \(step 0\)"):
        meta_train(learner, TASK, small_faces, TrainConfig(steps=3, batch_size=4), run_dir=tmp_path, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, small_faces):
    import metainr.disk as disk

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _learner(), None, step=1)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(disk.os, "replace", boom)
    with pytest.raises(MetaINRError, match="c.safetensors.*disk full"):  # one line naming the file
        save_checkpoint(path, _learner(16), None, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MetaINRError, match="cannot read checkpoint"):
        load_learner(bad)
