"""Hardening II: one test per failure class found by a second round of hostile use (issue 22).

Runs own only their files; sizes and counts are bounded per whole input and per checkpoint; corrupt
inputs are refused (never fitted as zeros); every failure is one line naming the file or option
(exit 2 for a bad option); outputs are checked before the work, a killed write's temp files are
removed by the next run, and multi-file outputs are written all or nothing.
"""
import errno
import fcntl
import json
import math
import os
import signal
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from metainr.disk import atomic_group, atomic_write_bytes, load_tensors, save_tensors
from metainr.errors import MetaINRError

TINY = ["--data", "faces", "--resolution", "8", "--width", "8", "--depth", "3", "--batch-size", "2",
        "--inner-steps", "1"]
TINY_VIEWS = ["--task", "views", "--data", "chairs", "--resolution", "8", "--views", "2", "--count", "2",
              "--val-count", "1", "--width", "8", "--depth", "2", "--batch-size", "1", "--rays", "16", "--n-samples",
              "4", "--eval-steps", "1"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("metainr: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "Warning" not in err, err
    return lines[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: int) -> bytes:
    """A grey PNG declaring width x height whose (complete, valid) zlib data holds only ``rows`` rows."""
    data = b"".join(b"\0" + bytes([128]) * width for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b""))


def _scene(folder, frames: int = 3, side: int = 8, image: bytes | None = None, matrix=None):
    """A transforms.json of ``frames`` frames that all show one RGBA image of ``side``^2 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    if image is None:
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[..., 0], rgba[..., 3] = 200, 255
        Image.fromarray(rgba, "RGBA").save(folder / "r.png")
    else:
        (folder / "r.png").write_bytes(image)
    c2w = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]
    poses = [c2w] * frames if matrix is None else [c2w, matrix, *[c2w] * (frames - 2)]
    (folder / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 0.69, "frames": [{"file_path": "r.png", "transform_matrix": p} for p in poses]}))
    return folder / "transforms.json"


def _tampered(source, target, change):
    tensors, meta = load_tensors(source)
    meta.pop("version")
    change(meta)
    save_tensors(target, tensors, meta)
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny image checkpoint, a tiny views checkpoint and a face image."""
    from metainr.cli import main

    root = tmp_path_factory.mktemp("trained")
    assert main(["meta-train", *TINY, "--steps", "2", "--run", str(root / "run")]) == 0
    assert main(["meta-train", *TINY_VIEWS, "--steps", "1", "--run", str(root / "views")]) == 0
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(root / "face.png")
    return root


# -- a run owns only its files (the run-directory marker) ----------------------------------------
def test_a_run_never_deletes_or_writes_where_it_did_not_run(cli, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    mine = {name: f"the user's own {name}" for name in ("config.json", "metrics.jsonl", "training.png")}
    for name, text in mine.items():
        (proj / name).write_text(text)
    code, _, err = cli("meta-train", *TINY, "--steps", "1", "--run", proj, "--overwrite")
    assert code == 1 and "holds no metainr run" in _one_error_line(err)
    assert {p.name: p.read_text() for p in proj.iterdir() if p.name in mine} == mine
    (tmp_path / "root").symlink_to("/")
    code, _, err = cli("meta-train", *TINY, "--steps", "1", "--run", tmp_path / "root")
    assert code == 1 and "refusing to use /" in _one_error_line(err) and not os.path.exists("/.lock")
    # --overwrite deletes what the run's marker lists, nothing else; a killed write's temp goes too
    run = tmp_path / "run"
    assert cli("meta-train", *TINY, "--steps", "1", "--run", run)[0] == 0
    (run / "notes.txt").write_text("mine")
    torn = run / ".checkpoint.safetensors.k9x2m4p1.tmp"
    torn.write_bytes(b"\0" * 4096)
    assert cli("meta-train", *TINY, "--steps", "1", "--run", run, "--overwrite")[0] == 0
    assert (run / "notes.txt").read_text() == "mine" and not torn.exists()


def test_meta_train_on_an_empty_dataset_is_one_line(tmp_path):
    from metainr import build_learner
    from metainr.fields import FieldConfig, build_field
    from metainr.tasks import build_task
    from metainr.train import TrainConfig, meta_train

    learner = build_learner(build_field(FieldConfig(in_dim=2, out_dim=1, width=8, depth=2)), "maml")
    with pytest.raises(MetaINRError, match="empty"):
        meta_train(learner, build_task("image"), torch.zeros(0, 8, 8, 1), TrainConfig(steps=1), run_dir=tmp_path)


# -- limits per whole input; metadata files size-checked before parsing --------------------------
def test_limits_apply_to_a_views_file_as_a_whole_and_to_its_json(cli, tmp_path):
    from metainr.data.nerf_synthetic import nerf_synthetic_objects, read_scene
    from metainr.limits import use_limits

    file = _scene(tmp_path / "a", frames=10, side=32)  # 10 frames of 1024 pixels, each under 10,000
    code, _, err = cli("fit", file, "--task", "views", "--init", "random", "--resolution", "32", "--views", "1",
                       "--max-pixels", "10000", "--out", tmp_path / "o.png")
    line = _one_error_line(err)
    assert code == 1 and "10 frames of 32x32, all together" in line and "--max-pixels" in line
    with use_limits(max_pixels=10240):
        assert read_scene(file, resolution=32).images.shape == (10, 32, 32, 3)
        _scene(tmp_path / "b", frames=10, side=32)
        with pytest.raises(MetaINRError, match="all together"):  # two scenes, each at the limit
            nerf_synthetic_objects(tmp_path, resolution=32)
    # a 2 GB transforms.json (sparse) is refused from its size, never read
    with open(tmp_path / "a" / "transforms.json", "r+b") as fh:
        fh.truncate(2 << 30)
    tic = time.perf_counter()
    code, _, err = cli("fit", file, "--task", "views", "--init", "random", "--out", tmp_path / "o.png")
    assert code == 1 and "--max-metadata-bytes" in _one_error_line(err) and time.perf_counter() - tic < 5
    small = _scene(tmp_path / "c", frames=2)
    code, _, err = cli("fit", small, "--task", "views", "--init", "random", "--max-metadata-bytes", "50")
    assert code == 1 and "over the limit of 50" in _one_error_line(err)


# -- counts a checkpoint declares ------------------------------------------------------------------
def test_step_and_ray_counts_from_a_checkpoint_are_bounded(cli, tmp_path, trained):
    ckpt, face = trained / "run" / "checkpoint.safetensors", trained / "face.png"
    changes = {"inner": lambda m: m["learner"]["config"].update(inner_steps=10 ** 9),
               "eval": lambda m: m["train"].update(eval_steps=10 ** 9)}
    for name, change in changes.items():
        bad = _tampered(ckpt, tmp_path / f"{name}.safetensors", change)
        tic = time.perf_counter()
        code, _, err = cli("fit", face, "--init", bad, "--out", tmp_path / "o.png")
        line = _one_error_line(err)
        assert code == 1 and "1,000,000,000 fitting steps" in line and "--steps" in line and str(bad) in line
        assert time.perf_counter() - tic < 5
        assert cli("fit", face, "--init", bad, "--steps", "1", "--out", tmp_path / "o.png")[0] == 0
    for key in ("rays", "views"):
        bad = _tampered(trained / "views" / "checkpoint.safetensors", tmp_path / f"{key}.safetensors",
                        lambda m: m["task"].update({key: 10 ** 9}))
        code, _, err = cli("render", bad, "--out", tmp_path / "t.png")
        assert code == 1 and "--max-pixels" in _one_error_line(err)


# -- corrupt input refused, dtypes named -----------------------------------------------------------
def test_truncated_images_and_unusable_arrays_are_refused(cli, tmp_path):
    (tmp_path / "short.png").write_bytes(_png(4000, 4000, rows=10))
    tic = time.perf_counter()
    code, _, err = cli("fit", tmp_path / "short.png", "--init", "random", "--out", tmp_path / "o.png")
    assert code == 1 and "truncated" in _one_error_line(err) and time.perf_counter() - tic < 10
    assert not (tmp_path / "o.png").exists()
    arrays = {"complex": (np.ones((16, 4), np.complex64), "complex64"), "bool": (np.ones((16, 4), bool), "bool"),
              "huge": (np.full((16, 4), 1e300), "float32's range")}
    for name, (array, named) in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
        code, _, err = cli("fit", tmp_path / f"{name}.npy", "--task", "ct", "--init", "random", "--steps", "1",
                           "--out", tmp_path / f"{name}.png")
        line = _one_error_line(err)  # no raw numpy warning either
        assert code == 1 and named in line and "shape" not in line, line


# -- never a traceback -----------------------------------------------------------------------------
def test_nested_json_and_a_full_disk_are_one_line(cli, tmp_path, trained, monkeypatch):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "transforms.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli("fit", tmp_path / "v" / "transforms.json", "--task", "views", "--init", "random")
    assert code == 1 and "nested too deeply" in _one_error_line(err)

    def full(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 64)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              '"No space left on device" })')

    monkeypatch.setattr("metainr.disk.save_file", full)
    run = tmp_path / "run"
    code, _, err = cli("meta-train", *TINY, "--steps", "2", "--run", run)
    line = _one_error_line(err)
    assert code == 1 and "checkpoint.safetensors" in line and "No space left" in line
    assert not list(run.glob(".*.tmp"))


# -- messages that name the real cause -----------------------------------------------------------
def test_messages_name_the_frame_the_option_the_dtype_and_the_file(cli, tmp_path, trained, monkeypatch):
    zero = _scene(tmp_path / "zero", frames=3, matrix=[[0.0] * 4] * 4)
    code, _, err = cli("fit", zero, "--task", "views", "--init", "random", "--steps", "1")
    assert code == 1 and "frame 1 transform_matrix is not a camera pose" in _one_error_line(err) and "all zeros" in err
    views = trained / "views" / "checkpoint.safetensors"
    code, _, err = cli("fit", _scene(tmp_path / "ok"), "--init", views, "--input-views", "0")
    line = _one_error_line(err)
    assert code == 2 and "--input-views 0" in line and str(views) not in line
    bomb = _scene(tmp_path / "bomb", image=_png(60000, 60000, rows=1))
    code, _, err = cli("fit", bomb, "--task", "views", "--init", "random")
    line = _one_error_line(err)
    assert code == 1 and "--max-pixels" in line and "decompression" not in line.lower()
    os.symlink(tmp_path / "loop2.png", tmp_path / "loop1.png")
    os.symlink(tmp_path / "loop1.png", tmp_path / "loop2.png")
    code, _, err = cli("fit", tmp_path / "loop1.png", "--init", "random")
    assert code == 1 and "symlink loop" in _one_error_line(err)

    def too_large(self, data):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr("pathlib.Path.write_bytes", too_large)
    out = tmp_path / "big.png"
    code, _, err = cli("fit", trained / "face.png", "--init", "random", "--steps", "1", "--out", out)
    assert code == 1 and f"cannot write {out}: File too large" in _one_error_line(err)


def test_an_interrupted_fit_says_nothing_was_written_and_json_still_prints(cli, tmp_path, trained):
    out = tmp_path / "o.png"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C a second into a long fit
    timer.start()
    try:
        code, stdout, err = cli("fit", trained / "face.png", "--init", "random", "--steps", "100000000", "--json",
                                "--out", out)
    finally:
        timer.cancel()
    assert code == 130 and err.strip().endswith("(no output was written)") and "checkpoint" not in err
    report = json.loads(stdout)
    assert report["interrupted"] is True and report["outputs"] == [] and not out.exists()


# -- work never lost late ----------------------------------------------------------------------------
def test_output_names_are_checked_before_the_fit_and_long_valid_ones_written(cli, tmp_path, trained, monkeypatch):
    from metainr import start

    face = trained / "face.png"
    long = tmp_path / ("a" * 246 + ".png")  # 250 bytes: valid, though its temp file's name would not be
    code, _, err = cli("fit", face, "--init", "random", "--steps", "1", "--out", long)
    assert code == 0 and long.is_file() and not list(tmp_path.glob(".*.tmp")), err
    calls = []
    monkeypatch.setattr(start, "fit", lambda *a, **k: calls.append(1))
    code, _, err = cli("fit", face, "--init", "random", "--steps", "1", "--out", tmp_path / ("b" * 252 + ".png"))
    assert code == 1 and "over the 255" in _one_error_line(err) and not calls  # refused before any work


def test_a_killed_writes_temp_file_is_removed_by_the_next_run_there(cli, tmp_path, trained):
    stale, live = tmp_path / ".o.png.k9x2m4p1.tmp", tmp_path / ".o.png.a7b3c5d2.tmp"
    stale.write_bytes(b"\0" * 4096)  # what a kill -9 during a write leaves
    live.write_bytes(b"\0")
    with open(live, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a write in progress holds its temp's lock
        assert cli("fit", trained / "face.png", "--init", "random", "--steps", "1", "--out", tmp_path / "o.png")[0] == 0
    assert not stale.exists() and live.exists() and (tmp_path / "o.png").is_file()


def test_multi_file_outputs_are_written_all_or_nothing(cli, tmp_path, monkeypatch):
    from metainr import disk

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(RuntimeError):
        with atomic_group():
            atomic_write_bytes(a, b"new a")
            assert a.read_text() == "old a"  # staged, not yet in place
            raise RuntimeError("the second file's writer failed")
    assert a.read_text() == "old a" and not b.exists() and not list(tmp_path.glob(".*.tmp"))
    # a CT fit writes a PNG and a .npy: a failure writing the second leaves the first as it was
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).random((16, 4)).astype(np.float32))
    (tmp_path / "r.png").write_bytes(b"old png")
    real = disk._stage

    def failing(target, write):
        if target.suffix == ".npy":
            raise MetaINRError(f"cannot write {target}: No space left on device")
        return real(target, write)

    monkeypatch.setattr(disk, "_stage", failing)
    code, _, err = cli("fit", tmp_path / "scan.npy", "--task", "ct", "--init", "random", "--steps", "1",
                       "--out", tmp_path / "r.png")
    assert code == 1 and "r.npy" in _one_error_line(err)
    assert (tmp_path / "r.png").read_bytes() == b"old png" and not (tmp_path / "r.npy").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert math.isfinite(float(np.load(tmp_path / "scan.npy").sum()))
