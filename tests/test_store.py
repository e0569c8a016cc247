"""The field store (fields as data): encode a dataset from a checkpoint into sharded safetensors +
a SQLite index, read it back as a Dataset, decode a signal in its task's form at any resolution,
summarise it; resume after kill -9 without refitting, losing or duplicating a signal; damaged
files and mismatched stores refused in one line."""
import json
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from metainr import FieldStore, ImageTask, MAML, Siren, TrainConfig, decode, encode, fit, load_learner, meta_train
from metainr import save_checkpoint, store_info
from metainr.data.images import grid_coords
from metainr.errors import MetaINRError
from metainr.functional import field_function
from metainr.start import learner_start
from metainr.store import INDEX_NAME, SHARD_DIR, signal_ids
from metainr.store.index import Index

STEPS, SIGNALS = 3, 20  # faces' test split at 16x16: 20 grey faces
ENCODE = dict(steps=STEPS, batch_size=8, resolution=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A SIREN (width 32) meta-trained by MAML for 2 steps on 16x16 faces."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = ImageTask(resolution=16, channels=1)
    learner = MAML(Siren(in_dim=2, out_dim=1, width=32, depth=3), inner_steps=2)
    meta_train(learner, task, task.load("faces", "train"), TrainConfig(steps=2, batch_size=4), progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "maml.safetensors"
    save_checkpoint(path, learner, None, 2, task=task)
    return path


@pytest.fixture(scope="module")
def encoded(checkpoint, tmp_path_factory):
    """(store path, summary) of an uninterrupted encode of the test split, 8 signals a shard."""
    torch.set_num_threads(1)
    store = tmp_path_factory.mktemp("stores") / "faces"
    return store, encode("faces", checkpoint, store, **ENCODE)


def _fit_alone(checkpoint, index):
    """Fit signal ``index`` of the split by itself with metainr.fit from the checkpoint's init and rule."""
    learner, meta = load_learner(checkpoint)
    task = ImageTask(resolution=16, channels=1)
    start = learner_start(learner, meta, task)
    batch = task.batch(task.load("faces", "test")[index:index + 1])
    result = fit(task, start.field, start.init(batch), batch, STEPS, record=[STEPS],
                 **start.rule.fit_options(task, start.field))
    return task, start.field, batch, result


def _shard_files(store):
    return sorted(p.name for p in (store / SHARD_DIR).iterdir())


def _shard_rows(store):
    conn = sqlite3.connect(f"{(store / INDEX_NAME).as_uri()}?mode=ro", uri=True)
    try:
        return sorted(f"{name}.safetensors" for (name,) in conn.execute("SELECT name FROM shards"))
    finally:
        conn.close()


def _same_params(a, b):
    return len(a) == len(b) and all(i == j and p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
                                    for (i, p, _), (j, q, _) in zip(a, b))


def test_encode_stores_the_fit_of_each_signal_and_decode_writes_it_back(encoded, checkpoint, tmp_path):
    store, summary = encoded
    assert summary["signals"] == summary["encoded"] == summary["stored"] == SIGNALS and summary["missing"] == 0
    fields = FieldStore(store)
    assert fields.ids == signal_ids("test", SIGNALS) == [f"test-{i:06d}" for i in range(SIGNALS)]
    task, field, batch, result = _fit_alone(checkpoint, 5)
    sid, params, metrics = fields[5]
    assert sid == "test-000005" and set(params) == {n for n, _ in field.named_parameters()}
    for name, p in params.items():  # the params metainr.fit gives fitting it alone (a batch of one: other rounding)
        torch.testing.assert_close(p, result.params[name][0], rtol=1e-5, atol=1e-6)
    assert metrics["psnr"] == pytest.approx(float(result.psnr[0, -1]), abs=1e-4)
    written = decode(store, "test-000005", tmp_path / "decoded.png")
    assert written == [tmp_path / "decoded.png"]
    # exactly the stored params evaluated through the task on the real signal's batch ...
    task.write(tmp_path / "stored.png", task.reconstruct(field_function(field), {n: p[None] for n, p in params.items()},
                                                         batch)[0])
    assert (tmp_path / "decoded.png").read_bytes() == (tmp_path / "stored.png").read_bytes()
    # ... and, to 8-bit rounding, the signal metainr.fit reconstructs
    alone = task.reconstruct(field_function(field), result.params, batch)[0, ..., 0].numpy()
    pixels = np.asarray(Image.open(tmp_path / "decoded.png")).astype(float) / 255
    assert np.abs(pixels - alone).max() <= 0.5 / 255 + 1e-4


def test_decode_at_another_resolution_evaluates_the_field_on_that_grid(encoded, tmp_path):
    store, _ = encoded
    decode(store, "test-000002", tmp_path / "big.png", resolution=32)
    fitted = FieldStore(store).fitted("test-000002")
    with torch.no_grad():
        values = fitted(grid_coords(32, 32)).clamp(0, 1).reshape(32, 32).numpy()
    expected = (values * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "big.png")), expected)


def test_store_info_counts_signals_bytes_and_mean_metrics(encoded, cli):
    store, _ = encoded
    code, out, err = cli("store", "info", store, "--json")
    assert code == 0, err
    info = json.loads(out)
    rows = list(FieldStore(store))
    assert info["signals"] == SIGNALS and info["task"] == "image" and info["learner"] == "maml"
    assert info["steps"] == STEPS and info["shards"] == 3  # 8 + 8 + 4 signals
    assert info["shard_bytes"] == sum(p.stat().st_size for p in (store / SHARD_DIR).iterdir())
    assert info["index_bytes"] >= (store / INDEX_NAME).stat().st_size > 0
    assert info["metrics"]["psnr"] == pytest.approx(np.mean([m["psnr"] for _, _, m in rows]), abs=1e-5)
    assert info["metrics"]["ssim"] == pytest.approx(np.mean([m["ssim"] for _, _, m in rows]), abs=1e-5)
    assert info == json.loads(json.dumps(store_info(store)))
    code, out, _ = cli("store", "info", store)
    assert code == 0 and f"{SIGNALS} signals of task 'image'" in out


def test_field_store_batches_through_a_dataloader(encoded):
    fields = FieldStore(encoded[0])
    batches = list(DataLoader(fields, batch_size=8))
    assert [len(ids) for ids, _, _ in batches] == [8, 8, 4]
    ids, params, metrics = batches[1]
    assert list(ids) == fields.ids[8:16] and metrics["psnr"].shape == (8,)
    for b, sid in enumerate(ids):
        one = fields.params(sid)
        assert all(torch.equal(params[n][b], one[n]) for n in one)


def test_a_crash_between_shard_and_commit_resumes_without_refitting(checkpoint, encoded, tmp_path, monkeypatch):
    import metainr.store.encoding as encoding

    store = tmp_path / "crashed"
    real_commit = Index.commit_shard

    def commit_once(self, shard, rows):
        if self.path.parent == store and len(_shard_rows(store)) == 1:
            raise RuntimeError("killed between the shard's rename and its commit")
        return real_commit(self, shard, rows)

    monkeypatch.setattr(Index, "commit_shard", commit_once)
    with pytest.raises(RuntimeError, match="killed"):
        encode("faces", checkpoint, store, **ENCODE)
    assert len(FieldStore(store)) == 8 and len(_shard_files(store)) == 2 == len(_shard_rows(store)) + 1  # an orphan
    monkeypatch.setattr(Index, "commit_shard", real_commit)
    fitted = []
    real_fit = encoding.fit
    monkeypatch.setattr(encoding, "fit", lambda task, field, init, batch, *a, **k:
                        fitted.append(len(batch)) or real_fit(task, field, init, batch, *a, **k))
    summary = encode("faces", checkpoint, store, **ENCODE)
    assert sum(fitted) == SIGNALS - 8 and summary["encoded"] == SIGNALS - 8 and summary["already_stored"] == 8
    assert _shard_files(store) == _shard_rows(store)  # the orphan was removed
    assert _same_params(list(FieldStore(store)), list(FieldStore(encoded[0])))


def test_kill_9_mid_encode_then_the_same_command_completes_it(checkpoint, encoded, tmp_path, cli):
    store = tmp_path / "killed"
    args = ["--threads", "1", "encode", "faces", "--init", str(checkpoint), "--store", str(store), "--steps",
            str(STEPS), "--resolution", "16", "--batch-size", "4", "--device", "cpu"]
    # a run that stops (until killed) once its second shard is on disk, before that shard's rows are committed
    slow = ("import sys, time\nimport metainr.store.encoding as e\nw, n = e.write_shard, []\n"
            "def write(*a, **k):\n    row = w(*a, **k)\n    n.append(row)\n    len(n) > 1 and time.sleep(120)\n"
            "    return row\ne.write_shard = write\nfrom metainr.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    run = subprocess.Popen([sys.executable, "-c", slow, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, caught = time.time() + 60, False
    try:
        while not caught and time.time() < deadline and run.poll() is None:
            try:  # one shard committed, the next on disk but not indexed
                caught = len(_shard_rows(store)) >= 1 and len(_shard_files(store)) > len(_shard_rows(store))
            except (sqlite3.Error, FileNotFoundError):
                pass
            time.sleep(0.02)
    finally:
        run.kill()  # SIGKILL
        err = run.communicate()[1].decode()
    assert caught and run.returncode == -9, (run.returncode, err)
    before = {sid: FieldStore(store).row(sid).shard for sid in FieldStore(store).ids}
    assert len(before) == 4  # the first block
    assert len(_shard_files(store)) == len(_shard_rows(store)) + 1, (_shard_files(store), _shard_rows(store))
    code, out, err = cli(*args)
    assert code == 0, err
    assert f"encoded {SIGNALS - len(before)} of {SIGNALS}" in out and f"{len(before)} already stored" in out
    after = FieldStore(store)
    assert after.ids == signal_ids("test", SIGNALS)  # every signal, once
    assert all(after.row(sid).shard == shard for sid, shard in before.items())  # never refitted
    assert _shard_files(store) == _shard_rows(store)
    assert _same_params(list(after), list(FieldStore(encoded[0])))


def test_a_corrupted_shard_is_one_line_naming_it(encoded, tmp_path, cli):
    store = tmp_path / "copy"
    shutil.copytree(encoded[0], store)
    shard = FieldStore(store).shard_file("test-000009")
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x40  # a flipped bit in a tensor: the file still parses
    shard.write_bytes(bytes(data))
    fields = FieldStore(store)
    assert torch.is_tensor(next(iter(fields[0][1].values())))  # other shards still read
    with pytest.raises(MetaINRError, match="corrupted") as info:
        fields[9]
    assert str(shard) in str(info.value) and "\n" not in str(info.value)
    code, _, err = cli("decode", store, "test-000009", "--out", tmp_path / "x.png")
    assert code == 1 and err.count("\n") == 1 and err.startswith("metainr: error:") and shard.name in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated"])
def test_a_damaged_or_foreign_index_is_one_line_naming_it(encoded, checkpoint, tmp_path, cli, damage):
    store = tmp_path / "copy"
    shutil.copytree(encoded[0], store)
    index = store / INDEX_NAME
    for extra in store.glob(f"{INDEX_NAME}-*"):
        extra.unlink()
    if damage == "garbage":
        index.write_bytes(b"not a database at all" * 100)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:5000])
    else:
        index.unlink()
        with sqlite3.connect(index) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER)")
        conn.close()
    content = index.read_bytes()
    with pytest.raises(MetaINRError) as info:
        FieldStore(store)
    assert str(index) in str(info.value) and "\n" not in str(info.value)
    for argv in (("store", "info", store), ("decode", store, "test-000001", "--out", tmp_path / "o.png"),
                 ("encode", "faces", "--init", checkpoint, "--store", store, "--steps", STEPS, "--resolution", 16)):
        code, _, err = cli(*argv)
        assert code == 1 and err.count("\n") == 1 and str(index) in err, (argv, err)
    assert index.read_bytes() == content  # never written into


def test_a_store_of_another_init_or_task_is_refused_unchanged(encoded, checkpoint, tmp_path, cli):
    store, _ = encoded
    learner, meta = load_learner(checkpoint)
    with torch.no_grad():
        next(iter(learner.parameters())).add_(0.01)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, learner, None, 3, task=ImageTask(resolution=16, channels=1))
    index = (store / INDEX_NAME).read_bytes()
    with pytest.raises(MetaINRError, match="another init checkpoint"):
        encode("faces", other, store, **ENCODE)
    code, _, err = cli("encode", "faces", "--init", checkpoint, "--store", store, "--steps", STEPS,
                       "--resolution", 12)
    assert code == 1 and err.count("\n") == 1 and "another task (resolution: 16, not 12)" in err
    code, _, err = cli("encode", "faces", "--init", checkpoint, "--store", store, "--steps", STEPS + 1,
                       "--resolution", 16)
    assert code == 1 and "another step count" in err
    assert (store / INDEX_NAME).read_bytes() == index and len(FieldStore(store)) == SIGNALS


def test_missing_stores_ids_and_random_inits_are_one_line(encoded, tmp_path, cli):
    for argv, match in ((("store", "info", tmp_path / "nowhere"), "field store not found"),
                        (("decode", tmp_path / "nowhere", "test-000000"), "field store not found"),
                        (("decode", encoded[0], "test-999999"), "holds no signal 'test-999999'"),
                        (("decode", encoded[0], "test-000000", "--resolution", 8, "--out", encoded[0] / INDEX_NAME),
                         "is an input"),
                        (("encode", "faces", "--init", "random", "--store", tmp_path / "s"),
                         "random is not supported")):
        code, _, err = cli(*argv)
        assert code == 1 and err.count("\n") == 1 and match in err, (argv, err)
    assert not (tmp_path / "s").exists()
