"""Hostile inputs for the ``metainr`` command, shared by tests/test_fuzz_cli.py and
benchmarks/robustness.py: named cases (one per failure class found by hand) plus seeded random
option values and mutated files, run in-process under a memory limit, each checked for

- no traceback (any exception escaping ``main`` other than argparse's exit),
- a failure is ONE ``metainr: error:`` line (or the interrupt line) with a non-zero exit code,
- success never prints NaN/Infinity (``--json`` output parses as strict JSON),
- no file outside the case's own outputs is created, changed or removed (inputs byte-identical).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import struct
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hostile_files import HARDENING_II, setup_file, views_file

HOSTILE_NUMBERS = ["0", "-1", "1", "2", "nan", "inf", "-inf", "1e30", "-1e30", "1e-30", "abc", "", "3.7",
                   "99999999999", "0x10", "1,2", "1e309", "-0"]
"""values tried for numeric options"""
IMAGE_OPTIONS = ["--steps", "--batch-size", "--outer-lr", "--clip", "--inner-steps", "--inner-lr", "--width",
                 "--depth", "--w0", "--keep-ratio", "--eval-every", "--eval-steps", "--resolution", "--channels",
                 "--prune-rounds", "--prune-fraction", "--checkpoint-every", "--log-every", "--patience", "--seed",
                 "--max-minutes", "--max-pixels", "--max-params", "--max-signals", "--n-features", "--sigma",
                 "--boot-steps", "--boot-lr", "--rwf-sigma", "--patch-size", "--target-params"]
FIT_OPTIONS = ["--steps", "--lr", "--rescale", "--resolution", "--channels", "--max-pixels", "--max-params"]
TINY_TRAIN = ["--data", "faces", "--resolution", "8", "--width", "8", "--depth", "3", "--steps", "2",
              "--batch-size", "2", "--inner-steps", "1"]
TINY_VIEWS = ["--task", "views", "--data", "chairs", "--resolution", "8", "--views", "2", "--count", "2",
              "--val-count", "1", "--width", "8", "--depth", "2", "--batch-size", "1", "--rays", "16", "--n-samples",
              "4", "--eval-steps", "1", "--steps", "1"]


PRISTINE = ".pristine"
"""a copy of the inputs, restored after a case that touched them (so one failure does not cascade)"""


class CaseTimeout(BaseException):
    """A case ran past its time budget (a legitimately long run, not a failure)."""


@dataclass
class Case:
    name: str
    argv: list[str]
    outputs: list[str] = field(default_factory=list)
    """sandbox-relative paths (files or folders) the case may create or change"""
    setup: str | None = None
    """a mutation of the sandbox made before the case (see :func:`_setup`)"""


@dataclass
class Outcome:
    name: str
    argv: list[str]
    code: int | None
    problems: list[str]
    seconds: float
    timed_out: bool = False
    message: str = ""
    """the last line on stderr (the error a user sees)"""

    @property
    def clean(self) -> bool:
        return not self.problems


def _png(array: np.ndarray, depth: int = 8) -> bytes:
    """A minimal PNG (grey or RGB) written here, independently of the readers under test."""
    h, w = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2
    raw = array.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).tobytes()
    rows = b"".join(b"\0" + raw[i * len(raw) // h:(i + 1) * len(raw) // h] for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_sandbox(root: Path) -> Path:
    """Inputs every case may read: images, a sinogram, a tiny image checkpoint, a finished run."""
    from metainr.cli import main

    root.mkdir(parents=True, exist_ok=True)
    inp = root / "in"
    inp.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    (inp / "face.png").write_bytes(_png((rng.random((8, 8)) * 255).astype(np.uint8)))
    (inp / "rgb.png").write_bytes(_png((rng.random((8, 8, 3)) * 255).astype(np.uint8)))
    (inp / "grey16.png").write_bytes(_png(np.full((8, 8), 32768, np.uint16), depth=16))
    np.save(inp / "sino.npy", rng.random((16, 4)).astype(np.float32))
    np.save(inp / "tall.npy", np.zeros((20000, 2), np.float32))
    np.save(inp / "nan_map.npy", np.where(rng.random((8, 16)) < 0.5, np.nan, 0.5).astype(np.float32))
    np.save(inp / "complex_map.npy", np.ones((8, 16), np.complex64))
    (inp / "disc.png").write_bytes(_png(((np.hypot(*np.mgrid[-1:1:16j, -1:1:16j]) < 0.6) * 255).astype(np.uint8)))
    (inp / "blank.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (inp / "junk.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\nthis is not a mesh\n")
    (inp / "empty.stl").write_bytes(b"")
    (inp / "tet.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    from metainr.data.clips import write_gif
    from metainr.data.sounds import write_wav

    write_gif(inp / "clip.gif", np.linspace(0, 1, 3 * 8 * 8 * 3, dtype=np.float32).reshape(3, 8, 8, 3))
    (inp / "junk.gif").write_bytes(b"GIF89a" + bytes(range(200)))
    (inp / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(40))
    write_wav(inp / "tone.wav", np.sin(np.arange(800) / 5.0).astype(np.float32), 8000)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = main(["meta-train", *TINY_TRAIN, "--run", str(root / "in" / "run")])
        code += main(["meta-train", *TINY_VIEWS, "--run", str(root / "views_run")])
    assert code == 0, "the sandbox's runs failed"
    shutil.copy(inp / "run" / "checkpoint.safetensors", inp / "ckpt.safetensors")
    shutil.copy(root / "views_run" / "checkpoint.safetensors", inp / "views.safetensors")
    shutil.rmtree(root / "views_run")
    (inp / "run" / ".lock").unlink()
    views_file(inp / "scene", 3, 8)
    shutil.copytree(inp, root / PRISTINE)
    return root


def _setup(root: Path, kind: str, rng: random.Random) -> None:
    """Mutated copies of the sandbox's files (never the originals)."""
    inp, mut = root / "in", root / "mut"
    mut.mkdir(exist_ok=True)
    ckpt = (inp / "ckpt.safetensors").read_bytes()
    header = struct.unpack("<Q", ckpt[:8])[0]
    if kind == "truncated-ckpt":
        (mut / "m.safetensors").write_bytes(ckpt[: rng.randrange(0, len(ckpt))])
    elif kind == "flipped-ckpt":  # a few random bytes anywhere: header JSON, metadata or tensor data
        data = bytearray(ckpt)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        (mut / "m.safetensors").write_bytes(bytes(data))
    elif kind in ("meta-json", "huge-width", "nan-lr", "huge-inner-steps", "huge-eval-steps", "tampered-count"):
        head = json.loads(ckpt[8:8 + header])
        meta = json.loads(head["__metadata__"]["metainr"])
        if kind == "meta-json":
            text = head["__metadata__"]["metainr"][:-7] + "}"
        else:
            if kind == "huge-width":
                meta["field"]["width"] = 10 ** 9
            elif kind == "huge-inner-steps":
                meta["learner"]["config"]["inner_steps"] = 10 ** 9
            elif kind == "huge-eval-steps":
                meta["train"]["eval_steps"] = 10 ** 9
            elif kind == "tampered-count":
                where = rng.choice([meta["learner"]["config"], meta["train"], meta["task"]])
                key = rng.choice(sorted(k for k, v in where.items() if isinstance(v, int) and not isinstance(v, bool))
                                 or ["steps"])
                where[key] = rng.choice([10 ** 9, 10 ** 18, -1, 0, 2.5, "9", None, True])
            else:
                meta["learner"]["config"]["inner_lr"] = float("nan")
            text = json.dumps(meta)
        head["__metadata__"]["metainr"] = text
        blob = json.dumps(head).encode()
        blob += b" " * (-len(blob) % 8)
        (mut / "m.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + ckpt[8 + header:])
    elif setup_file(kind, inp, mut, rng):  # hardening II's files: views, CT arrays, images, temps
        pass
    elif kind == "truncated-png":
        data = (inp / "rgb.png").read_bytes()
        (mut / "m.png").write_bytes(data[: rng.randrange(0, len(data))])
    elif kind == "flipped-png":
        data = bytearray((inp / "rgb.png").read_bytes())
        data[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
        (mut / "m.png").write_bytes(bytes(data))
    elif kind == "huge-png":  # a header declaring 100000 x 100000 pixels
        png = _png(np.zeros((2, 2), np.uint8))
        ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
        (mut / "m.png").write_bytes(png[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr
                                    + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:])
    elif kind == "bad-npy":
        choice = rng.randrange(4)
        if choice == 0:
            np.save(mut / "m.npy", np.full((16, 3), np.nan, np.float32))
        elif choice == 1:
            np.save(mut / "m.npy", np.zeros((2, 2, 2, 2)))
        elif choice == 2:
            np.save(mut / "m.npy", np.array([{"a": 1}] * 16, dtype=object), allow_pickle=True)
        else:
            data = (inp / "sino.npy").read_bytes()
            (mut / "m.npy").write_bytes(data[: rng.randrange(0, len(data))])
    elif kind in ("torn-log", "junk-log", "bad-adam"):
        shutil.copytree(inp / "run", mut / "run", dirs_exist_ok=True)
        log = mut / "run" / "metrics.jsonl"
        if kind == "torn-log":
            log.write_text(log.read_text() + '{"step": 3, "loss": 0.0')
        elif kind == "junk-log":
            log.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        else:
            from safetensors.torch import load_file, safe_open, save_file

            path = mut / "run" / "checkpoint.safetensors"
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata()
            tensors = load_file(str(path))
            key = next(k for k, v in tensors.items() if k.endswith("exp_avg") and v.numel() > 1)
            tensors[key] = tensors[key].reshape(-1)[:1].clone()
            save_file(tensors, str(path), metadata=metadata)


def named_cases() -> list[Case]:
    """One case (at least) per failure class of the hardening issue."""
    ck, run = "in/ckpt.safetensors", ["--run", "out/run"]
    fit = ["fit", "in/face.png", "--init", ck, "--steps", "1"]
    return [
        Case("sinogram of 20000 detectors", ["fit", "in/tall.npy", "--init", "random", "--task", "ct"]),
        Case("image declaring 100000^2 pixels", ["fit", "mut/m.png", "--init", "random"], setup="huge-png"),
        Case("checkpoint declaring width 1e9", ["fit", "in/face.png", "--init", "mut/m.safetensors"],
             setup="huge-width"),
        Case("resolution 1e6", [*fit, "--resolution", "1000000"]),
        Case("procedural count 1e9", ["meta-train", "--task", "ct", "--count", "1000000000", *run]),
        Case("--out is the input", [*fit, "--out", "in/face.png"]),
        Case("--save-field is the init", [*fit, "--out", "out/a.png", "--save-field", ck]),
        Case("CT outputs beside the input sinogram", ["fit", "in/sino.npy", "--init", "random", "--task", "ct",
                                                      "--steps", "1", "--out", "in/sino.png"], ["in/sino.png"]),
        Case("--out is a device", [*fit, "--out", "/dev/null"]),
        Case("--out is a directory", [*fit, "--out", "in"]),
        Case("--out under a file", [*fit, "--out", "in/face.png/x.png"]),
        Case("run dir is a file", ["meta-train", *TINY_TRAIN, "--run", "in/face.png"]),
        Case("reused run without --resume", ["meta-train", *TINY_TRAIN, "--run", "in/run"]),
        Case("--resume and --overwrite", ["meta-train", *TINY_TRAIN, "--run", "out/run", "--resume", "--overwrite"]),
        Case("--outer-lr inf", ["meta-train", *TINY_TRAIN, "--outer-lr", "inf", *run]),
        Case("--outer-lr nan", ["meta-train", *TINY_TRAIN, "--outer-lr", "nan", *run]),
        Case("--outer-lr 1e30 diverges", ["meta-train", *TINY_TRAIN, "--steps", "4", "--outer-lr", "1e30", *run],
             ["out/run"]),
        Case("fit --lr nan", [*fit, "--lr", "nan", "--json"]),
        Case("fit --lr 1e30 --json", ["fit", "in/face.png", "--init", "random", "--lr", "1e30", "--steps", "3",
                                      "--json", "--out", "out/d.png"], ["out/d.png"]),
        Case("checkpoint with NaN in its config", [*fit, "--init", "mut/m.safetensors"], setup="nan-lr"),
        Case("torn metrics.jsonl: plot", ["plot", "mut/run", "--out", "out/p.png"], ["out/p.png"], setup="torn-log"),
        Case("torn metrics.jsonl: resume", ["meta-train", *TINY_TRAIN, "--steps", "3", "--run", "mut/run",
                                            "--resume"], ["mut/run"], setup="torn-log"),
        Case("junk metrics.jsonl: plot", ["plot", "mut/run", "--out", "out/p.png"], ["out/p.png"], setup="junk-log"),
        Case("malformed checkpoint metadata", [*fit, "--init", "mut/m.safetensors"], setup="meta-json"),
        Case("wrong-shape optimizer state on resume", ["meta-train", *TINY_TRAIN, "--steps", "3", "--run", "mut/run",
                                                       "--resume"], ["mut/run"], setup="bad-adam"),
        Case("meta-train --steps 0", ["meta-train", *TINY_TRAIN, "--steps", "0", *run]),
        Case("--clip nan", ["meta-train", *TINY_TRAIN, "--clip", "nan", *run]),
        Case("--max-minutes -1", ["meta-train", *TINY_TRAIN, "--max-minutes", "-1", *run]),
        Case("--threads 1e11", ["--threads", "99999999999", *fit]),
        Case("--device meta", [*fit, "--device", "meta"]),
        Case("SIREN --w0 0 (found by the fuzz)", ["meta-train", *TINY_TRAIN, "--w0", "0", *run]),
        Case("16-bit grey fits as grey", ["fit", "in/grey16.png", "--init", "random", "--steps", "1", "--out",
                                          "out/g.png", "--json"], ["out/g.png"]),
        Case("sphere grid holding NaN", ["fit", "in/nan_map.npy", "--init", "random", "--task", "sphere"]),
        Case("complex sphere grid", ["fit", "in/complex_map.npy", "--init", "random", "--task", "sphere"]),
        Case("sphere grid of another format", ["fit", "in/ckpt.safetensors", "--init", "random", "--task", "sphere"]),
        Case("sphere climate count 1e9", ["meta-train", "--task", "sphere", "--count", "1000000000", *run]),
        Case("sphere fit writes PNG + npy", ["fit", "in/sino.npy", "--init", "random", "--task", "sphere", "--steps",
                                             "1", "--out", "out/s.png", "--json"], ["out/s.png", "out/s.npy"]),
        Case("sdf2d mask without a boundary", ["fit", "in/blank.png", "--init", "random", "--task", "sdf2d"]),
        Case("sdf2d resolution 1e6", ["fit", "in/disc.png", "--init", "random", "--task", "sdf2d", "--resolution",
                                      "1000000"]),
        Case("sdf2d fit writes PNG + level set", ["fit", "in/disc.png", "--init", "random", "--task", "sdf2d",
                                                  "--resolution", "16", "--steps", "1", "--out", "out/d.png"],
             ["out/d.png", "out/d.level.png"]),
        Case("sdf3d junk OBJ", ["fit", "in/junk.obj", "--init", "random", "--task", "sdf3d"]),
        Case("sdf3d empty STL", ["fit", "in/empty.stl", "--init", "random", "--task", "sdf3d"]),
        Case("sdf3d samples 1e12", ["meta-train", "--task", "sdf3d", "--samples", "1000000000000", *run]),
        Case("sdf3d grid 1e5", ["meta-train", "--task", "sdf3d", "--grid", "100000", *run]),
        Case("sdf3d --out is the input mesh", ["fit", "in/tet.obj", "--init", "random", "--task", "sdf3d", "--out",
                                               "in/tet.obj"]),
        Case("video junk GIF", ["fit", "in/junk.gif", "--init", "random", "--task", "video"]),
        Case("video clip over --max-pixels", ["fit", "in/clip.gif", "--init", "random", "--task", "video",
                                              "--max-pixels", "100"]),
        Case("video more frames than the clip", ["fit", "in/clip.gif", "--init", "random", "--task", "video",
                                                 "--frames", "9"]),
        Case("video pans count 1e9", ["meta-train", "--task", "video", "--count", "1000000000", *run]),
        Case("video nerv on frames of side 6", ["fit", "in/clip.gif", "--init", "random", "--task", "video",
                                                "--field", "nerv", "--resolution", "6"]),
        Case("video fit writes GIF + strip", ["fit", "in/clip.gif", "--init", "random", "--task", "video", "--steps",
                                              "1", "--out", "out/c.gif", "--json"], ["out/c.gif", "out/c.png"]),
        Case("audio junk WAV", ["fit", "in/junk.wav", "--init", "random", "--task", "audio"]),
        Case("audio sound over --max-pixels", ["fit", "in/tone.wav", "--init", "random", "--task", "audio",
                                               "--sample-rate", "8000", "--max-pixels", "100"]),
        Case("audio length 1e12", ["meta-train", "--task", "audio", "--length", "1000000000000", *run]),
        Case("audio --out is the input", ["fit", "in/tone.wav", "--init", "random", "--task", "audio", "--out",
                                          "in/tone.wav"]),
        Case("audio fit writes WAV + plot", ["fit", "in/tone.wav", "--init", "random", "--task", "audio",
                                             "--sample-rate", "8000", "--steps", "1", "--out", "out/t.wav"],
             ["out/t.wav", "out/t.png"]),
        *(Case(*case) for case in HARDENING_II),
        Case("CT below 32^2 with validation", ["meta-train", "--task", "ct", "--resolution", "16", "--steps", "2",
                                               "--count", "4", "--val-count", "2", "--eval-every", "1",
                                               "--eval-steps", "1", *run], ["out/run"]),
    ]


def random_cases(n: int, seed: int = 0) -> list[Case]:
    """``n`` seeded cases: a hostile value for one option of a small valid command, or a mutated file."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.45:
            option, value = rng.choice(IMAGE_OPTIONS), rng.choice(HOSTILE_NUMBERS)
            learner = rng.choice(["maml", "reptile", "metasgd", "gradncp", "transinr"])
            argv = ["meta-train", *TINY_TRAIN, "--learner", learner, "--run", f"out/r{i}", option, value]
            cases.append(Case(f"meta-train {learner} {option} {value!r}", argv, [f"out/r{i}"]))
        elif roll < 0.75:
            option, value = rng.choice(FIT_OPTIONS), rng.choice(HOSTILE_NUMBERS)
            init = rng.choice(["in/ckpt.safetensors", "random"])
            argv = ["fit", "in/face.png", "--init", init, "--steps", "2", "--out", f"out/f{i}.png", "--json",
                    option, value]
            cases.append(Case(f"fit {init} {option} {value!r}", argv, [f"out/f{i}.png"]))
        else:
            kind = rng.choice(["truncated-ckpt", "flipped-ckpt", "truncated-png", "flipped-png", "bad-npy",
                               "views-file", "ct-array", "tampered-count"])
            if kind == "views-file":
                init = rng.choice([["--init", "random", "--task", "views"], ["--init", "in/views.safetensors"]])
                argv = ["fit", "mut/v/transforms.json", *init, "--steps", "1", "--resolution", "8", "--out",
                        f"out/f{i}.png"]
            elif kind == "ct-array":
                argv = ["fit", "mut/m.npy", "--init", "random", "--task", "ct", "--steps", "1", "--out",
                        f"out/f{i}.png"]
            elif kind == "tampered-count":
                argv = ["fit", "in/face.png", "--init", "mut/m.safetensors", "--out", f"out/f{i}.png",
                        *rng.choice([[], ["--steps", "1"]])]
            elif kind.endswith("ckpt"):
                argv = ["fit", "in/face.png", "--init", "mut/m.safetensors", "--steps", "1", "--out", f"out/f{i}.png"]
            elif kind.endswith("png"):
                argv = ["fit", "mut/m.png", "--init", "random", "--steps", "1", "--out", f"out/f{i}.png"]
            elif kind == "bad-npy":
                argv = ["fit", "mut/m.npy", "--init", "random", "--task", "ct", "--steps", "1", "--out",
                        f"out/f{i}.png"]
            cases.append(Case(f"{kind} #{i}", argv, [f"out/f{i}.png", f"out/f{i}.npy"], setup=kind))
    return cases


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
            and p.relative_to(root).parts[0] != PRISTINE}


def _allowed(path: str, case: Case) -> bool:
    return path.startswith("mut/") or any(path == o or path.startswith(o.rstrip("/") + "/") for o in case.outputs)


def run_case(root: Path, case: Case, seed: int = 0, timeout: float = 5.0) -> Outcome:
    """Run one case in-process in ``root`` (the working directory) and check the invariants."""
    from metainr.cli import main

    if case.setup:
        _setup(root, case.setup, random.Random(f"{seed}:{case.name}"))
    before = _snapshot(root)
    out, err = io.StringIO(), io.StringIO()
    problems: list[str] = []
    code: int | None = None
    timed_out = False

    def alarm(signum: int, frame: object) -> None:
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    tic = time.perf_counter()
    cwd = os.getcwd()
    try:
        os.chdir(root)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(case.argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    except CaseTimeout:
        timed_out = True
    except BaseException as exc:  # noqa: BLE001 - a traceback is exactly what we look for
        problems.append(f"traceback: {type(exc).__name__}: {exc}"[:300] + " | "
                        + traceback.format_exc().strip().splitlines()[-3][:200])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(cwd)
    seconds = time.perf_counter() - tic
    stdout, stderr = out.getvalue(), err.getvalue()
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    if code not in (None, 0):
        errors = [line for line in stderr.splitlines() if line.startswith("metainr: error:")]
        if code != 130 and len(errors) != 1:
            problems.append(f"exit {code} with {len(errors)} error lines: {stderr.strip()[-200:]!r}")
    if stdout.strip() and "--json" in case.argv:
        for line in stdout.strip().splitlines():
            try:
                json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as exc:
                problems.append(f"--json printed invalid JSON ({exc}): {line[:120]!r}")
    if code == 0 and any(tok in stdout for tok in ("NaN", "Infinity", " nan", " inf")):
        problems.append(f"exit 0 with NaN/inf output: {stdout[:160]!r}")
    after = _snapshot(root)
    touched = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not _allowed(p, case))
    if touched:
        problems.append(f"touched files outside its outputs: {touched[:4]}")
    last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
    return Outcome(case.name, case.argv, code, problems, seconds, timed_out, last)


def run_cases(root: Path, cases: list[Case], seed: int = 0, timeout: float = 5.0) -> list[Outcome]:
    """Every case in order; the ``out`` and ``mut`` folders are emptied between cases."""
    outcomes = []
    for case in cases:
        for folder in ("out", "mut"):
            shutil.rmtree(root / folder, ignore_errors=True)
        outcomes.append(run_case(root, case, seed, timeout))
        if outcomes[-1].problems:
            shutil.rmtree(root / "in")
            shutil.copytree(root / PRISTINE, root / "in")
    return outcomes
