"""Benchmark (record): hostile inputs to the ``metainr`` command, and the memory of the worst input
that the limits let through.

    python benchmarks/robustness.py [--random 1000] --out benchmarks/results/robustness.json

1. The hostile cases of tests/hostile.py (named ones, one per failure class of the hardening
   issue, plus ``--random`` seeded random option values and mutated files over three seeds), run in
   a fresh process under a 3 GiB address-space limit (``RLIMIT_AS``). A case is clean when it
   raised no traceback, failed with exactly one ``metainr: error:`` line (or succeeded without
   printing NaN / invalid JSON), and touched no file outside its outputs.
2. The largest inputs the default limits accept, each fitted from a random init in a fresh
   process (1 step, the CLI as a user runs it): an image of exactly ``max_pixels`` (4096^2), a
   sinogram of CT's largest slice (sqrt(max_pixels / CT_PIXEL_COST) = 1024 detectors) and the
   largest multi-file input: a views file whose frames hold ``max_pixels`` pixels together (16,384
   PNG files of 32^2, the views task's default resolution: limits apply to the input as a whole),
   rendered with 2 samples a ray instead of 32 (16x less compute, the same memory: renders are
   chunked to a fixed number of samples alive at once; at 32 samples a fit of 1/16 of it took 10.5
   min here, so the whole one about 3 h);
   peak RSS (ru_maxrss) of each, beside a 512^2 image's; and an image one row over the limit and a
   views file one frame over it (both refused).

``--memory NAME,...`` measures only those inputs and carries the others over from the existing
``--out`` file (marked as carried, with the commit they were measured at when known).
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from metainr.limits import Limits  # noqa: E402
from metainr.tasks.ct import CT_PIXEL_COST  # noqa: E402

LIMIT = 3 << 30
CASES = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {tests!r})
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import torch
    torch.set_num_threads(2)
    from pathlib import Path
    import hostile
    root = hostile.make_sandbox(Path({root!r}))
    named = hostile.named_cases() if {first} else []
    cases = named + hostile.random_cases({n}, seed={seed})
    outcomes = hostile.run_cases(root, cases, seed={seed}, timeout=5.0)
    print(json.dumps([dict(name=o.name, named=i < len(named), argv=o.argv, code=o.code, clean=o.clean,
                           problems=o.problems,
                           timed_out=o.timed_out, seconds=round(o.seconds, 3), message=o.message)
                      for i, o in enumerate(outcomes)]))
""")


def hostile_cases(n_random: int, seeds: list[int]) -> list[dict]:
    outcomes = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            script = CASES.format(tests=str(ROOT / "tests"), limit=LIMIT, root=str(Path(tmp) / "sandbox"),
                                  n=n_random, seed=seed, first=seed == seeds[0])
            proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"the case runner failed: {proc.stderr[-2000:]}")
            outcomes += [{**o, "seed": seed} for o in json.loads(proc.stdout.strip().splitlines()[-1])]
    return outcomes


LAUNCH = ("import json, resource, sys\n"
          "from metainr._entry import main\n"
          "report, sys.argv = sys.argv[1], sys.argv[:1] + sys.argv[2:]\n"
          "try:\n"
          "    code = main()\n"
          "finally:\n"
          "    open(report, 'w').write(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
          "sys.exit(code)\n")


def peak_fit(argv: list[str], cwd: Path) -> dict:
    """Run ``metainr argv`` in a fresh process; its exit code, wall time and own peak RSS."""
    report = cwd / "maxrss.json"
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, str(report), *argv], capture_output=True, text=True,
                          cwd=cwd)
    seconds = time.perf_counter() - tic
    peak = json.loads(report.read_text()) if report.exists() else None
    report.unlink(missing_ok=True)
    return {"argv": argv, "code": proc.returncode, "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak / 1024, 1) if peak else None,
            "message": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else ""}


MEASURES = ("image_512", "image_at_limit", "sinogram_at_limit", "image_over_limit", "views_at_limit",
            "views_over_limit")


def views_file(folder: Path, frames: int, side: int) -> Path:
    """A transforms.json of ``frames`` distinct RGBA PNG files of ``side``^2 on a turntable."""
    from PIL import Image

    (folder / "f").mkdir(parents=True, exist_ok=True)
    poses = []
    for i in range(frames):
        a = 2 * np.pi * i / frames
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = int(128 + 100 * np.cos(a)), int(128 + 100 * np.sin(a)), 90
        rgba[side // 4: 3 * side // 4, side // 4: 3 * side // 4, 3] = 255
        Image.fromarray(rgba, "RGBA").save(folder / "f" / f"r_{i}.png")
        c, s = float(np.cos(a)), float(np.sin(a))  # on a circle of radius 4 in the xy-plane, looking at the origin
        poses.append({"file_path": f"f/r_{i}.png", "transform_matrix": [[-s, 0, c, 4 * c], [c, 0, s, 4 * s],
                                                                         [0, 1, 0, 0], [0, 0, 0, 1]]})
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": poses}))
    return folder / "transforms.json"


def worst_inputs(which: tuple[str, ...] = MEASURES) -> dict:
    from PIL import Image

    from metainr.tasks.views import ViewsConfig

    limits = Limits()
    side = int(limits.max_pixels ** 0.5)
    out: dict = {"max_pixels": limits.max_pixels}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rng = np.random.default_rng(0)
        for name, s in (("image_512", 512), ("image_at_limit", side)):
            if name not in which:
                continue
            y, x = np.mgrid[:s, :s] / s
            pixels = (np.stack([np.sin(9 * x), np.cos(7 * y), x * y], -1) * 0.5 + 0.5) * 255
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{name}.png")
            out[name] = {"side": s, **peak_fit(["--threads", "2", "fit", f"{name}.png", "--init", "random", "--steps",
                                                "1", "--out", f"{name}.recon.png"], tmp_path)}
            print(name, out[name], flush=True)
        if "sinogram_at_limit" in which:
            detectors = int((limits.max_pixels // CT_PIXEL_COST) ** 0.5)  # CT's own limit on its slices
            np.save(tmp_path / "sino.npy", rng.random((detectors, 4)).astype(np.float32))
            out["sinogram_at_limit"] = {"detectors": detectors, "views": 4, **peak_fit(
                ["--threads", "2", "fit", "sino.npy", "--task", "ct", "--init", "random", "--steps", "1", "--out",
                 "sino.recon.png"], tmp_path)}
            print("sinogram", out["sinogram_at_limit"], flush=True)
        if "image_over_limit" in which:
            over = tmp_path / "over.png"
            Image.fromarray(np.zeros((side + 1, side), np.uint8)).save(over)
            out["image_over_limit"] = {"side": f"{side + 1}x{side}", **peak_fit(
                ["fit", "over.png", "--init", "random", "--steps", "1"], tmp_path)}
        view = ViewsConfig().resolution  # files are resized to it: what a views input holds
        frames = limits.max_pixels // view ** 2
        for name, count in (("views_at_limit", frames), ("views_over_limit", frames + 1)):
            if name not in which:
                continue
            tic = time.perf_counter()
            file = views_file(tmp_path / name, count, view)
            made = round(time.perf_counter() - tic, 1)
            out[name] = {"frames": count, "side": view, "pixels": count * view ** 2, "files_written_s": made,
                         "n_samples": 2, **peak_fit(["--threads", "2", "fit", str(file), "--task", "views", "--init",
                                                     "random", "--steps", "1", "--n-samples", "2", "--out",
                                                     f"{name}.recon.png"], tmp_path)}
            print(name, out[name], flush=True)
    return out


def carried_over(path: Path, measured: dict, which: tuple[str, ...]) -> dict:
    """``measured`` with the inputs not in ``which`` taken from the existing result file, marked."""
    try:
        old = json.loads(path.read_text()).get("worst_inputs") or {}
    except (OSError, ValueError):
        old = {}
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    for name in MEASURES:
        if name not in which and isinstance(old.get(name), dict):
            measured[name] = {**old[name], "carried_over": f"measured by an earlier run ({commit or 'unknown'})"}
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", type=int, default=1000, help="random cases per seed")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--skip-memory", action="store_true", help="only the hostile cases")
    parser.add_argument("--memory", default=",".join(MEASURES),
                        help=f"the worst inputs to measure (default: all of {','.join(MEASURES)}); the others are "
                        "carried over from --out")
    parser.add_argument("--out", default="benchmarks/results/robustness.json")
    args = parser.parse_args()
    which = tuple(n for n in args.memory.split(",") if n)
    unknown = sorted(set(which) - set(MEASURES))
    if unknown:
        parser.error(f"unknown --memory inputs {unknown}; choose from {','.join(MEASURES)}")
    tic = time.perf_counter()
    outcomes = hostile_cases(args.random, [int(s) for s in args.seeds.split(",")])
    kinds = collections.Counter(" ".join(o["name"].split(" ")[:2]) if o["name"].startswith(("meta-train", "fit "))
                                else o["name"].split(" ")[0] for o in outcomes if not o["named"])
    result = {
        "machine": machine(),
        "memory_limit_bytes": LIMIT,
        "cases": {"tried": len(outcomes), "clean": sum(o["clean"] for o in outcomes),
                  "timed_out (legitimately long runs, stopped at 5 s)": sum(o["timed_out"] for o in outcomes),
                  "exit_codes": dict(collections.Counter(str(o["code"]) for o in outcomes))},
        "named": [{k: o[k] for k in ("name", "code", "clean", "message")} for o in outcomes if o["named"]],
        "random_kinds": dict(kinds),
        "not_clean": [o for o in outcomes if not o["clean"]],
        "worst_inputs": None if args.skip_memory else carried_over(Path(args.out), worst_inputs(which), which),
        "seconds": None,
    }
    result["seconds"] = round(time.perf_counter() - tic, 1)
    write_json(args.out, result)
    print(json.dumps(result["cases"]), flush=True)


if __name__ == "__main__":
    main()
