"""Meta-training on many processes: shards of every meta-batch, all-reduced gradients, rank 0's run
directory; checked against one process with the same global meta-batch, through torchrun."""
import os
import subprocess
import sys

import pytest
import torch

from metainr.disk import load_tensors
from metainr.train.distributed import World, all_reduce_mean, broadcast_tensors, shard

TRAIN = ["meta-train", "--task", "image", "--data", "faces", "--resolution", "12", "--width", "24", "--depth", "3",
         "--batch-size", "3", "--eval-every", "2", "--checkpoint-every", "3", "--learner", "gradncp",
         "--inner-steps", "2", "--outer-lr", "1e-3"]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_split_a_meta_batch_exactly(n, size):
    parts = [shard(n, World(rank, size)) for rank in range(size)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))  # disjoint, in order, nothing left out
    lengths = [len(range(n)[p]) for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_one_process_needs_no_collectives():
    grads = {"w": torch.randn(3, 2)}
    stats = {"loss": torch.tensor(1.5)}
    s, g = all_reduce_mean(stats, grads, 4, 4, World())
    assert torch.equal(g["w"], grads["w"]) and float(s["loss"]) == 1.5
    assert broadcast_tensors(grads, World(), torch.device("cpu")).keys() == {"w"}


def _learner_tensors(path):
    tensors, meta = load_tensors(path)
    return {k: v for k, v in tensors.items() if k.startswith("learner/")}, meta


def test_two_processes_follow_one_and_resume_with_another_count(cli, tmp_path):
    # one process, 6 steps
    code, _, err = cli(*TRAIN, "--steps", "6", "--run", tmp_path / "one")
    assert code == 0, err
    # two processes (gloo, through torchrun) for 3 steps, then ONE process resumes to 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "metainr",
           *TRAIN, "--steps", "3", "--run-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("meta-training done") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".lock", ".metainr-run.json", "best.safetensors",
                                                                     "checkpoint.safetensors", "config.json",
                                                                     "metrics.jsonl"]
    two_at_3, meta = _learner_tensors(tmp_path / "two" / "checkpoint.safetensors")
    assert meta["step"] == 3
    code, _, err = cli(*TRAIN, "--steps", "6", "--run", tmp_path / "two", "--resume")
    assert code == 0, err
    one, meta_one = _learner_tensors(tmp_path / "one" / "checkpoint.safetensors")
    two, meta_two = _learner_tensors(tmp_path / "two" / "checkpoint.safetensors")
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert meta_one["best_psnr"] == pytest.approx(meta_two["best_psnr"], abs=1e-4)
    # and the run really moved: step 3 and step 6 differ by far more than the tolerance
    assert max(float((two_at_3[k] - two[k]).abs().max()) for k in one) > 1e-3
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split(",")[0].split(":")[1]) for line in lines] == [2, 3, 4, 6]


def test_tensorboard_logs_scalars_and_reconstructions(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = cli(*TRAIN, "--steps", "4", "--run", tmp_path / "run", "--tensorboard")
    assert code == 0, err
    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    logged = {e.step: e.value for e in board.Scalars("val/psnr")}
    records = [__import__("json").loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx({r["step"]: r["val_psnr"] for r in records if "val_psnr" in r})
    assert len(board.Scalars("train/loss")) == 4
    image = board.Images("val/target_and_reconstruction")[-1]
    assert (image.width, image.height) == (12, 24)  # target above reconstruction
    # --overwrite removes the run's event files with its other files
    code, _, err = cli(*TRAIN, "--steps", "2", "--run", tmp_path / "run", "--overwrite")
    assert code == 0, err
    assert not list((tmp_path / "run" / "tensorboard").glob("events.*"))


def test_a_shard_of_a_batch_keeps_its_class_and_fields():
    from metainr.tasks.views import ViewsBatch

    batch = ViewsBatch(torch.zeros(4, 5, 3), torch.arange(60.0).view(4, 5, 3), [torch.tensor([i]) for i in range(4)],
                       near=0.5, far=2.0)
    for index in (slice(1, 3), torch.tensor([1, 2])):
        part = batch.signals(index).to("cpu")
        assert type(part) is ViewsBatch and (part.near, part.far) == (0.5, 2.0)
        assert torch.equal(part.values, batch.values[1:3]) and [int(c) for c in part.context] == [1, 2]
