"""Hardening: each failure class found by trying the CLI as a hostile user, reproduced and asserted.

Sizes are checked before allocation, outputs never destroy inputs, run directories are locked and
never silently reused, checkpoints and --json are finite, torn logs are tolerated, every mistake is
one line, and SIGINT / SIGTERM leave a run resumable. (Pixel depth: tests/test_pixel_depth.py;
a few hundred random cases under a memory limit: tests/test_fuzz_cli.py.)
"""
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

from metainr.errors import NonFiniteTensors
from metainr.disk import atomic_write_bytes, load_tensors, save_tensors
from metainr.train.rundir import RunDirectory

TINY = ["--data", "faces", "--resolution", "8", "--width", "8", "--depth", "3", "--batch-size", "2",
        "--inner-steps", "1"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("metainr: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny image checkpoint and a face image file."""
    from PIL import Image

    from metainr.cli import main

    root = tmp_path_factory.mktemp("trained")
    assert main(["meta-train", *TINY, "--steps", "3", "--run", str(root / "run")]) == 0
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(root / "face.png")
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height grey pixels (its data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


# -- bounded allocation --------------------------------------------------------------------------
def test_sizes_declared_by_inputs_are_refused_before_allocation(cli, tmp_path, trained):
    np.save(tmp_path / "tall.npy", np.zeros((20000, 2), np.float32))  # 160 KB; 20000^2 pixels to reconstruct
    tic = time.perf_counter()
    code, _, err = cli("fit", tmp_path / "tall.npy", "--task", "ct", "--init", "random", "--out", tmp_path / "o.png")
    assert code == 1 and "--max-pixels" in _one_error_line(err) and "20000" in err
    (tmp_path / "big.png").write_bytes(_png_header(8000, 8000))
    code, _, err = cli("fit", tmp_path / "big.png", "--init", "random", "--out", tmp_path / "o.png")
    assert code == 1 and "8000x8000" in _one_error_line(err) and "--max-pixels" in err
    # a checkpoint whose config says width 1e9: refused before anything of that size exists
    tensors, meta = load_tensors(trained / "run" / "checkpoint.safetensors")
    meta.pop("version")
    meta["field"]["width"] = 10 ** 9
    save_tensors(tmp_path / "wide.safetensors", tensors, meta)
    code, _, err = cli("fit", trained / "face.png", "--init", tmp_path / "wide.safetensors")
    assert code == 1 and "--max-params" in _one_error_line(err)
    assert time.perf_counter() - tic < 10
    # the limits are the user's to raise: an 8x8 image is refused under 63 pixels, fitted under 64
    code, _, err = cli("fit", trained / "face.png", "--init", "random", "--steps", "1", "--max-pixels", "63",
                       "--out", tmp_path / "a.png")
    assert code == 1 and "over the limit of 63" in _one_error_line(err)
    assert cli("fit", trained / "face.png", "--init", "random", "--steps", "1", "--max-pixels", "64",
               "--out", tmp_path / "a.png")[0] == 0


def test_fit_with_a_huge_step_count_sizes_nothing(cli, trained, tmp_path, monkeypatch):
    from metainr import start

    seen = {}
    real_fit = start.fit

    def spy(*args, **kwargs):
        seen["record"] = kwargs["record"]
        raise KeyboardInterrupt  # stop before the (legitimately) endless fit

    monkeypatch.setattr(start, "fit", spy)
    code, _, err = cli("fit", trained / "face.png", "--init", "random", "--steps", "99999999999",
                       "--out", tmp_path / "a.png")
    assert code == 130 and seen["record"] == [99999999999]  # the last step only, unless --record asks
    assert real_fit is not spy


# -- outputs ------------------------------------------------------------------------------------
def test_outputs_never_replace_inputs_devices_fifos_or_directories(cli, tmp_path, trained):
    face, ckpt = trained / "face.png", trained / "run" / "checkpoint.safetensors"
    before = {p: p.read_bytes() for p in (face, ckpt)}
    fit = ["fit", face, "--init", ckpt, "--steps", "1"]
    cases = {"it is an input": [*fit, "--out", face],
             "it is an input ": [*fit, "--out", tmp_path / "x.png", "--save-field", ckpt],
             "a device": [*fit, "--out", "/dev/null"],
             "a directory": [*fit, "--out", tmp_path]}
    os.mkfifo(tmp_path / "fifo.png")
    cases["FIFO"] = [*fit, "--out", tmp_path / "fifo.png"]
    os.link(face, tmp_path / "hardlink.png")
    cases["it is an input  "] = [*fit, "--out", tmp_path / "hardlink.png"]
    for reason, argv in cases.items():
        code, _, err = cli(*argv)
        assert code == 1 and reason.strip() in _one_error_line(err), (reason, err)
    # CT writes a .npy beside its PNG: that .npy must not be the input sinogram
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).random((16, 4)).astype(np.float32))
    sino = (tmp_path / "scan.npy").read_bytes()
    code, _, err = cli("fit", tmp_path / "scan.npy", "--task", "ct", "--init", "random", "--steps", "1",
                       "--out", tmp_path / "scan.png")
    assert code == 1 and "scan.npy" in _one_error_line(err) and not (tmp_path / "scan.png").exists()
    assert (tmp_path / "scan.npy").read_bytes() == sino
    assert all(p.read_bytes() == b for p, b in before.items())


def test_symlinked_outputs_are_written_through_with_the_users_umask(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    (tmp_path / "link.bin").symlink_to(target)
    atomic_write_bytes(tmp_path / "link.bin", b"new")
    assert (tmp_path / "link.bin").is_symlink() and target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced file keeps its mode
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "fresh.bin", b"x")
        save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)}, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == 0o640


# -- run directories -----------------------------------------------------------------------------
def test_a_run_directory_is_locked_and_reused_only_with_resume_or_overwrite(cli, tmp_path):
    run = tmp_path / "run"
    with RunDirectory(run):
        code, _, err = cli("meta-train", *TINY, "--steps", "2", "--run", run)
        assert code == 1 and f"pid {os.getpid()}" in _one_error_line(err) and "in use" in err
    assert cli("meta-train", *TINY, "--steps", "2", "--run", run)[0] == 0
    (run / "notes.txt").write_text("mine")
    code, _, err = cli("meta-train", *TINY, "--steps", "2", "--width", "16", "--run", run)
    assert code == 1 and "--overwrite" in _one_error_line(err)
    old = json.loads((run / "config.json").read_text())["field"]["width"]
    assert old == 8
    assert cli("meta-train", *TINY, "--steps", "2", "--width", "16", "--run", run, "--overwrite")[0] == 0
    widths = {json.loads((run / "config.json").read_text())["field"]["width"]}
    widths |= {load_tensors(p)[1]["field"]["width"] for p in run.glob("*.safetensors")}
    assert widths == {16}  # no best.safetensors of the old architecture beside the new run
    assert (run / "notes.txt").read_text() == "mine"


# -- NaN / inf ----------------------------------------------------------------------------------
def test_divergence_keeps_the_last_finite_checkpoint_and_names_it(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("meta-train", *TINY, "--steps", "5", "--outer-lr", "1e30", "--run", run)
    line = _one_error_line(err)
    assert code == 1 and "diverged" in line and "(step 0)" in line
    tensors, meta = load_tensors(run / "checkpoint.safetensors")  # loading checks finiteness too
    assert meta["step"] == 0 and all(bool(torch.isfinite(t).all()) for t in tensors.values())
    for bad in (["--outer-lr", "inf"], ["--outer-lr", "nan"], ["--clip", "nan"], ["--max-minutes", "-1"],
                ["--steps", "0"]):
        code, _, err = cli("meta-train", *TINY, *bad, "--run", tmp_path / "other")
        assert code == 2 and bad[0] in _one_error_line(err)


def test_non_finite_tensors_are_never_written(tmp_path):
    path = tmp_path / "c.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"step": 1})
    with pytest.raises(NonFiniteTensors, match="w hold NaN"):
        save_tensors(path, {"w": torch.tensor([1.0, float("nan"), 0.0])}, {"step": 2})
    assert load_tensors(path)[1]["step"] == 1


def test_fit_json_is_strict_json_when_a_fit_diverges(cli, tmp_path, trained):
    out = tmp_path / "d.png"
    code, stdout, err = cli("fit", trained / "face.png", "--init", "random", "--lr", "1e30", "--steps", "3",
                            "--json", "--out", out)
    report = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert code == 1 and report["diverged"] is True and report["final_psnr"] is None and not out.exists()
    assert "diverged" in _one_error_line(err)
    code, _, err = cli("fit", trained / "face.png", "--init", "random", "--lr", "nan", "--json")
    assert code == 2 and "--lr" in _one_error_line(err)


# -- logs, damaged files, OS errors ----------------------------------------------------------------
def test_a_torn_metrics_line_is_skipped_by_plot_and_truncated_on_resume(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("meta-train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--log-every", "1",
               "--run", run)[0] == 0
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "loss": 0.1')  # what a kill mid-write leaves
    code, _, err = cli("plot", run, "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 0
    assert cli("meta-train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--log-every", "1", "--run", run,
               "--resume")[0] == 0
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_damaged_checkpoints_and_os_errors_are_one_line(cli, tmp_path, trained):
    ckpt = trained / "run" / "checkpoint.safetensors"
    data = ckpt.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    head["__metadata__"]["metainr"] = head["__metadata__"]["metainr"][:-9] + "}"
    blob = json.dumps(head).encode()
    blob += b" " * (-len(blob) % 8)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
    code, _, err = cli("fit", trained / "face.png", "--init", tmp_path / "bad.safetensors")
    assert code == 1 and "unreadable metadata" in _one_error_line(err)
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = cli("fit", trained / "face.png", "--init", tmp_path / "cut.safetensors")
    assert code == 1 and "cannot read checkpoint" in _one_error_line(err)
    # wrong-shape optimizer state on resume
    run = tmp_path / "run"
    assert cli("meta-train", *TINY, "--steps", "2", "--run", run)[0] == 0
    tensors, meta = load_tensors(run / "checkpoint.safetensors")
    meta.pop("version")
    key = next(k for k, v in tensors.items() if k.endswith("exp_avg") and v.numel() > 1)
    tensors[key] = tensors[key].reshape(-1)[:1].clone()
    save_tensors(run / "checkpoint.safetensors", tensors, meta)
    code, _, err = cli("meta-train", *TINY, "--steps", "3", "--run", run, "--resume")
    assert code == 1 and "optimizer state" in _one_error_line(err)
    code, _, err = cli("fit", trained / "face.png", "--init", ckpt, "--out", trained / "face.png" / "x.png")
    assert code == 1 and "not a directory" in _one_error_line(err)


def test_a_ct_run_below_32_pixels_validates(cli, tmp_path):
    code, _, err = cli("meta-train", "--task", "ct", "--resolution", "16", "--steps", "2", "--count", "4",
                       "--val-count", "2", "--eval-every", "1", "--eval-steps", "1", "--val-views", "1,3",
                       "--run", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["val_psnr"] > 0


# -- signals -------------------------------------------------------------------------------------
def _metainr(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "import sys; from metainr._entry import main; sys.exit(main())",
                             *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_ends_meta_training_with_a_checkpoint_and_resume_finishes_it(tmp_path):
    run = tmp_path / "run"
    base = ["meta-train", *TINY, "--log-every", "1", "--checkpoint-every", "1000", "--run", run]
    proc = _metainr(*base, "--steps", "100000")
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                          and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    step = load_tensors(run / "checkpoint.safetensors")[1]["step"]
    assert step >= 3  # the step in progress finished and was checkpointed (not the step-0 one)
    resumed = _metainr(*base, "--steps", str(step + 2), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert load_tensors(run / "checkpoint.safetensors")[1]["step"] == step + 2


def test_a_signal_while_torch_is_imported_is_one_line(tmp_path):
    # deterministic: the process sends itself SIGTERM when the CLI starts importing torch
    hook = ("import os, signal, sys\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch': os.kill(os.getpid(), signal.SIGTERM)\n"
            "sys.meta_path.insert(0, Hook())\n"
            "from metainr._entry import main\n"
            "sys.exit(main())\n")
    proc = subprocess.run([sys.executable, "-c", hook, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "metainr: interrupted", proc.stderr
