"""Benchmark: the refactored core against the previous main — same machine, one run, before and after.

    python benchmarks/core.py --before /tmp/metainr_before --out benchmarks/results/core.json
    python benchmarks/core.py --before-ref <commit> --out benchmarks/results/core.json   # exports that commit
    python benchmarks/core.py --before DIR --skip-quick --out /tmp/core.json   # worker numbers only
    python benchmarks/core.py --before DIR --quick --out /tmp/core.json        # the same, 1 warm-up step

``--before DIR`` is a checkout of the previous main (its ``src/`` and ``benchmarks/``);
``--before-ref REF`` instead exports commit REF of this repository (``git archive``) into a temp
dir that is removed at the end. ``--after`` defaults to the tree this script lives in.

For each tree, in FRESH processes with ``PYTHONPATH=<tree>/src`` (the workers run with their cwd
in a temp dir, and every record keeps ``metainr.__file__`` to show which package it measured),
interleaved before / after so that drifting machine load hits both alike:

- ``reference_step``: median seconds of one second-order MAML outer step (K=4, inner lr 1e-2,
  SIREN width 256 depth 5 w0 30, 4 random 64^2 RGB crops; the outer gradient's backward pass is
  part of ``meta_gradient``) after 2 warm-up steps, 5 timed, and the process's peak RSS (the old
  main measured 1.47 s / 916 MB in image_meta.json); see ``benchmarks/_core_worker.py``;
- ``fit_seconds``: one ``fit`` of 24 held-out 64^2 RGB crops, 100 Adam steps lr 1e-3, from a
  random SIREN width 128 depth 4;
- ``image_meta_quick`` / ``ct_quick``: that tree's own ``benchmarks/image_meta.py --quick`` and
  ``benchmarks/ct.py --quick`` (cwd = the tree), whose PSNR tables are copied (image_meta: PSNR vs
  test steps per method; ct: PSNR / SSIM per view count and method) and compared cell by cell in
  ``psnr_diff``. Both quick runs stop meta-training on wall-clock / CPU-time budgets (image_meta:
  60 s per method; ct: 600 outer steps or 900 CPU-s), so under load their PSNRs move with the
  number of outer steps reached: compare ``outer_steps`` before reading a PSNR difference.

Every sub-run that fails is recorded as ``{"error": <last stderr line>}``; the rest go on. With
CUDA available, the after tree's test suite also runs on it (``METAINR_TEST_DEVICE=cuda pytest
-q``) and its counts go in ``suite_cuda`` with the device name in ``gpu``. JSON keys: ``config``,
``machine``, ``before``, ``after`` (each: ``tree``, ``reference_step`` {seconds, peak_rss_mb, ...},
``fit_seconds``, ``fit``, ``image_meta_quick``, ``ct_quick``, ``wall_seconds`` of each sub-run),
``ratios`` (after / before; wall and process-CPU seconds), ``psnr_diff``, ``gpu``, ``suite_cuda``,
``load_average`` (1/5/15-min, at the start and the end: other processes skew wall times),
``total_seconds``; ``python benchmarks/report.py [PATH.json]`` renders it as markdown.

Wall time of the full run on 2 quiet cores, both trees, estimated from the old main's quick
settings: the workers take about 40 s a tree (measured: reference step ~10 s with imports, fit
~22 s; ``--quick`` took 75 s in all); image_meta --quick about 4 min a tree (4 methods of at
most 150 outer steps / 60 s on 25^2 faces, ~1 min; its 4 fresh-process reference steps ~1 min;
the RWF fits at 128^2, 2 fields x 2 lrs x 200 Adam steps, ~1 min; the random-init lr grid and the
rest well under a minute); ct --quick about 12-16 min a tree (600 Reptile outer steps on 64^2
phantoms, ~2.5 min: the full run did 4000 in 920 s; then 2 + 4 phantoms reconstructed from 6 view
counts at 64^2, about 1/4 of the field evaluations per phantom of the full run's 128^2 and 6 of
its 8 phantoms, whose reconstructions took ~66 min: ~12 min). In all about 40 min (30-50 min);
other processes on the machine stretch it, and the quick runs' time budgets then cut training.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_core_worker.py"
OLD_MAIN_REFERENCE = {"seconds": 1.47, "peak_rss_mb": 916}


# ------------------------------------------------------------------------------------------ running
def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_logged(cmd: list[str], *, cwd: Path, env: dict, timeout: float,
               log: Path) -> tuple[dict | None, float, str]:
    """Run ``cmd``: (None or {"error": last stderr line}, wall seconds, stdout); all output goes to ``log``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        log.write_text(f"$ {' '.join(cmd)}\n(cwd {cwd}, timed out)\n--- stdout\n{out}\n--- stderr\n{err}")
        return {"error": f"timed out after {timeout:.0f} s"}, round(time.perf_counter() - t0, 1), out
    wall = round(time.perf_counter() - t0, 1)
    log.write_text(f"$ {' '.join(cmd)}\n(cwd {cwd}, exit {proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n"
                   f"{proc.stderr}")
    if proc.returncode != 0:
        return {"error": last_line(proc.stderr) or f"exit {proc.returncode}"}, wall, proc.stdout
    return None, wall, proc.stdout


def tree_env(tree: Path, extra: dict | None = None) -> dict:
    """The environment of a process that must import ``tree``'s metainr and nothing else."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(tree / "src"), **(extra or {})}


def tree_info(tree: Path, work: Path) -> dict:
    """Where a tree is, its commit (if a git checkout) and which metainr its processes import."""
    info: dict = {"path": str(tree)}
    if (tree / ".git").exists():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
        info["commit"] = head.stdout.strip() or None
        info["uncommitted_changes"] = bool(dirty.stdout.strip())
    proc = subprocess.run([sys.executable, "-c", "import metainr; print(metainr.__file__); "
                           "print('new' if hasattr(metainr, 'ImageTask') else 'old')"],
                          cwd=work, env=tree_env(tree), capture_output=True, text=True)
    if proc.returncode == 0:
        info["metainr_file"], info["api"] = proc.stdout.split()[-2:]
        info["imports_own_package"] = Path(info["metainr_file"]).resolve().is_relative_to((tree / "src").resolve())
    else:
        info["error"] = last_line(proc.stderr)
    return info


def worker(tree: Path, what: str, args, work: Path, logs: Path, name: str) -> tuple[dict, float]:
    """One ``_core_worker.py`` measurement of ``tree`` in a fresh process (cwd: a temp dir)."""
    cmd = [sys.executable, str(WORKER), what, "--threads", str(args.threads)]
    if what == "reference_step":
        cmd += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    err, wall, stdout = run_logged(cmd, cwd=work, env=tree_env(tree), timeout=args.timeout,
                                   log=logs / f"{name}_{what}.log")
    if err:
        return err, wall
    try:
        out = json.loads(last_line(stdout))
    except ValueError:
        return {"error": "the worker printed no JSON"}, wall
    if not Path(out["metainr_file"]).resolve().is_relative_to((tree / "src").resolve()):
        return {"error": f"measured {out['metainr_file']}, not {tree / 'src'}"}, wall
    return out, wall


def sub_benchmark(tree: Path, script: str, args, logs: Path, name: str) -> tuple[dict, float]:
    """``tree``'s own ``benchmarks/<script> --quick`` (cwd: the tree); its JSON result, or an error."""
    out = logs / f"{name}_{Path(script).stem}_quick.json"
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out), "--threads", str(args.threads)]
    err, wall, _ = run_logged(cmd, cwd=tree, env=tree_env(tree), timeout=args.timeout_quick,
                              log=logs / f"{name}_{Path(script).stem}_quick.log")
    if err:
        return err, wall
    try:
        return json.loads(out.read_text()), wall
    except (OSError, ValueError) as exc:
        return {"error": f"no result JSON: {exc}"}, wall


# ------------------------------------------------------------------------------------------ tables
def image_meta_table(r: dict) -> dict:
    """The PSNR-vs-test-steps table of an image_meta result, as it is, + what bounds it."""
    if "error" in r:
        return r
    if "psnr" not in r or "steps" not in r:
        return {"error": f"unrecognised image_meta JSON (keys {sorted(r)})"}
    return {"steps": r["steps"], "psnr": r["psnr"], "speedup_at_2": r.get("speedup_at_2"),
            "outer_steps": {k: v.get("outer_steps") for k, v in r.get("methods", {}).items()},
            "seconds_per_outer_step": r.get("seconds_per_outer_step"), "total_seconds": r.get("total_seconds")}


def ct_table(r: dict) -> dict:
    """The per-(views, method) PSNR / SSIM rows of a ct result, as they are, + what bounds them."""
    if "error" in r:
        return r
    if "rows" not in r:
        return {"error": f"unrecognised ct JSON (keys {sorted(r)})"}
    m = r.get("meta_training", {})
    return {"views": r.get("views"), "size": r.get("size"), "rows": r["rows"],
            "outer_steps": m.get("outer_steps"), "train_cpu_seconds": m.get("train_cpu_seconds"),
            "total_seconds": r.get("total_seconds")}


def _summary(cells: list[dict]) -> dict:
    diffs = [c["diff"] for c in cells]
    return {"cells": cells, "max_abs_diff": max(map(abs, diffs)) if diffs else None,
            "mean_diff": round(sum(diffs) / len(diffs), 3) if diffs else None}


def compare(before: dict, after: dict) -> dict:
    """Cell-by-cell before / after / difference (dB) of both PSNR tables (cells present in both)."""
    out = {}
    b, a = before.get("image_meta_quick", {}), after.get("image_meta_quick", {})
    if "error" in b or "error" in a or "psnr" not in b or "psnr" not in a:
        out["image_meta"] = {"error": "a run is missing: " + "; ".join(
            f"{n}: {x.get('error', 'skipped')}" for n, x in (("before", b), ("after", a)) if "psnr" not in x)}
    else:
        cells = []
        for method, ys in a["psnr"].items():
            for step, y in zip(a["steps"], ys):
                if method in b["psnr"] and step in b["steps"]:
                    x = b["psnr"][method][b["steps"].index(step)]
                    cells.append({"method": method, "step": step, "before": round(x, 3), "after": round(y, 3),
                                  "diff": round(y - x, 3)})
        out["image_meta"] = _summary(cells)
    b, a = before.get("ct_quick", {}), after.get("ct_quick", {})
    if "rows" not in b or "rows" not in a:
        out["ct"] = {"error": "a run is missing: " + "; ".join(
            f"{n}: {x.get('error', 'skipped')}" for n, x in (("before", b), ("after", a)) if "rows" not in x)}
    else:
        old = {(x["views"], x["method"]): x["psnr"] for x in b["rows"]}
        cells = [{"views": x["views"], "method": x["method"], "before": old[x["views"], x["method"]],
                  "after": x["psnr"], "diff": round(x["psnr"] - old[x["views"], x["method"]], 3)}
                 for x in a["rows"] if (x["views"], x["method"]) in old]
        out["ct"] = _summary(cells)
    return out


def ratio(after, before) -> float | None:
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (after, before)) and before
    return round(after / before, 3) if ok else None


def ratios(before: dict, after: dict) -> dict:
    rb, ra = before.get("reference_step", {}), after.get("reference_step", {})
    fb, fa = before.get("fit", {}), after.get("fit", {})
    return {"reference_step_seconds": ratio(ra.get("seconds"), rb.get("seconds")),
            "reference_step_peak_rss_mb": ratio(ra.get("peak_rss_mb"), rb.get("peak_rss_mb")),
            "fit_seconds": ratio(after.get("fit_seconds"), before.get("fit_seconds")),
            "reference_step_cpu_seconds": ratio(ra.get("cpu_seconds"), rb.get("cpu_seconds")),
            "fit_cpu_seconds": ratio(fa.get("cpu_seconds"), fb.get("cpu_seconds"))}


# ------------------------------------------------------------------------------------------ GPU suite
def gpu_info() -> dict:
    available = torch.cuda.is_available()
    return {"available": available, "device_name": torch.cuda.get_device_name(0) if available else None,
            "device_count": torch.cuda.device_count() if available else 0}


def suite_cuda(tree: Path, timeout: float, logs: Path) -> dict:
    """``pytest -q`` of ``tree`` with ``METAINR_TEST_DEVICE=cuda``: the counts of its summary line."""
    log = logs / "after_pytest_cuda.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    err, wall, _ = run_logged(cmd, cwd=tree, env=tree_env(tree, {"METAINR_TEST_DEVICE": "cuda"}),
                              timeout=timeout, log=log)
    out = {**pytest_counts(log.read_text()), "wall_seconds": wall, "device": torch.cuda.get_device_name(0)}
    if err and not out["summary"]:
        out["error"] = err["error"]
    return out


def pytest_counts(text: str) -> dict:
    """passed / failed / skipped / errors / xfailed / xpassed of pytest's last summary line, and the line."""
    summary = next((line for line in reversed(text.splitlines())
                    if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)\b", line)), "")
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")}
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b", summary):
        counts["errors" if word.startswith("error") else word] = int(n)
    if not summary:  # -q twice (the command's and addopts') prints no summary line: count the progress marks
        marks = "".join(re.sub(r"\s*\[\s*\d+%\]\s*$", "", line) for line in text.splitlines()
                        if re.fullmatch(r"[.sFExX]+\s*\[\s*\d+%\]\s*", line))
        for mark, key in ((".", "passed"), ("s", "skipped"), ("F", "failed"), ("E", "errors"), ("x", "xfailed"),
                          ("X", "xpassed")):
            counts[key] = marks.count(mark)
        if marks:
            summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + " (from the progress marks)"
    return {**counts, "summary": summary.strip("= ")}


# ------------------------------------------------------------------------------------------ main
def export_ref(repo: Path, ref: str) -> Path:
    """Commit ``ref`` of ``repo`` as a plain tree in a new temp dir (``git archive``)."""
    dest = Path(tempfile.mkdtemp(prefix="metainr_before_"))
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref], capture_output=True)
    if archive.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        sys.exit(f"core.py: git archive {ref} failed: {last_line(archive.stderr.decode())}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="a checkout of the previous main")
    ap.add_argument("--before-ref", help="instead of --before: export this commit of this repository")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="the tree under test (default: this one)")
    ap.add_argument("--out", default="benchmarks/results/core.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="reference step: untimed steps first")
    ap.add_argument("--repeats", type=int, default=5, help="reference step: timed steps (median)")
    ap.add_argument("--skip-quick", action="store_true", help="workers only: skip image_meta/ct --quick")
    ap.add_argument("--quick", action="store_true", help="a smoke run of the harness: --skip-quick, 1 warm-up step")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a worker may take")
    ap.add_argument("--timeout-quick", type=float, default=3600, help="seconds a --quick sub-benchmark may take")
    ap.add_argument("--logs", type=Path, default=None, help="keep every sub-run's output here (default: a temp dir)")
    args = ap.parse_args()
    if (args.before is None) == (args.before_ref is None):
        ap.error("give exactly one of --before DIR or --before-ref REF")
    if args.quick:
        args.skip_quick, args.warmup = True, 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    after = args.after.resolve()
    exported = export_ref(after, args.before_ref) if args.before_ref else None
    before = exported or args.before.resolve()
    if not (before / "src" / "metainr").is_dir():
        ap.error(f"{before} has no src/metainr")
    logs = (args.logs or Path(tempfile.mkdtemp(prefix="core_logs_"))).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="core_work_"))
    trees = {"before": before, "after": after}
    result: dict = {
        "config": {"before": str(args.before_ref or before), "after": str(after), "threads": args.threads,
                   "reference_step": {"field": "siren width 256 depth 5 w0 30", "learner": "maml (second order)",
                                      "inner_steps": 4, "inner_lr": 1e-2, "meta_batch": 4, "resolution": 64,
                                      "channels": 3, "data": "patches('train', 64, count=4)",
                                      "warmup": args.warmup, "repeats": args.repeats, "statistic": "median"},
                   "fit": {"field": "siren width 128 depth 4", "init": "random", "signals": 24, "resolution": 64,
                           "channels": 3, "data": "patches('test', 64, count=24)", "steps": 100,
                           "optimizer": "adam", "lr": 1e-3},
                   "quick_benchmarks": None if args.skip_quick else ["image_meta.py --quick", "ct.py --quick"],
                   "old_main_reference_step": OLD_MAIN_REFERENCE},
        "machine": machine(),
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    side = {name: {"tree": tree_info(tree, work), "wall_seconds": {}} for name, tree in trees.items()}
    for name in trees:
        print(f"{name}: {side[name]['tree']}", flush=True)
    try:
        for what in ("reference_step", "fit"):
            for name, tree in trees.items():
                print(f"{what} ({name}) ...", flush=True)
                out, wall = worker(tree, what, args, work, logs, name)
                side[name]["wall_seconds"][what] = wall
                if what == "reference_step":
                    side[name]["reference_step"] = out
                else:
                    side[name]["fit_seconds"] = out.get("seconds", out)
                    side[name]["fit"] = out
                print(f"  {json.dumps(out)[:300]}", flush=True)
        for script, key, table in (("image_meta.py", "image_meta_quick", image_meta_table),
                                   ("ct.py", "ct_quick", ct_table)):
            for name, tree in trees.items():
                if args.skip_quick:
                    side[name][key] = {"skipped": True}
                    continue
                print(f"{script} --quick ({name}) ...", flush=True)
                out, wall = sub_benchmark(tree, script, args, logs, name)
                side[name][key] = table(out)
                side[name]["wall_seconds"][key] = wall
                print(f"  {wall:.0f} s" + (f": {out['error']}" if "error" in out else ""), flush=True)
        gpu = gpu_info()
        result.update(before=side["before"], after=side["after"], ratios=ratios(side["before"], side["after"]),
                      psnr_diff=compare(side["before"], side["after"]), gpu=gpu)
        if gpu["available"]:
            print("test suite on CUDA (after) ...", flush=True)
            result["suite_cuda"] = suite_cuda(after, args.timeout_quick, logs)
        else:
            result["suite_cuda"] = None
            result["suite_cuda_reason"] = "no CUDA device on this machine"
        result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
        result["total_seconds"] = round(time.perf_counter() - t_start, 1)
        result["logs"] = str(logs)
        write_json(args.out, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    print_table(result)
    print(f"wrote {args.out}; sub-run logs in {logs}")


def _fmt(v, spec: str = ".2f") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    if isinstance(v, dict) and "error" in v:
        return "error"
    return "—"


def print_table(r: dict) -> None:
    b, a, q = r["before"], r["after"], r["ratios"]
    print(f"\n{'':<28} {'before':>10} {'after':>10} {'after/before':>13}")
    rows = [("reference step (s)", b["reference_step"].get("seconds"), a["reference_step"].get("seconds"),
             q["reference_step_seconds"]),
            ("reference step peak RSS (MB)", b["reference_step"].get("peak_rss_mb"),
             a["reference_step"].get("peak_rss_mb"), q["reference_step_peak_rss_mb"]),
            ("fit 24x64^2, 100 Adam (s)", b.get("fit_seconds"), a.get("fit_seconds"), q["fit_seconds"]),
            ("reference step CPU (s)", b["reference_step"].get("cpu_seconds"), a["reference_step"].get("cpu_seconds"),
             q["reference_step_cpu_seconds"]),
            ("fit CPU (s)", b.get("fit", {}).get("cpu_seconds"), a.get("fit", {}).get("cpu_seconds"),
             q["fit_cpu_seconds"])]
    for label, x, y, z in rows:
        print(f"{label:<28} {_fmt(x):>10} {_fmt(y):>10} {_fmt(z, '.3f'):>13}")
    for name, side in (("before", b), ("after", a)):
        for key in ("reference_step", "fit"):
            if isinstance(side.get(key), dict) and "error" in side[key]:
                print(f"{name} {key}: {side[key]['error']}")
    for key, label in (("image_meta", "image_meta --quick PSNR (dB)"), ("ct", "ct --quick PSNR (dB)")):
        d = r["psnr_diff"][key]
        if "error" in d:
            print(f"{label}: {d['error']}")
            continue
        row, col = ("method", "step") if key == "image_meta" else ("views", "method")
        rows = list(dict.fromkeys(c[row] for c in d["cells"]))
        cols = list(dict.fromkeys(c[col] for c in d["cells"]))
        cell = {(c[row], c[col]): c for c in d["cells"]}
        print(f"\n{label}: after - before, max |diff| {d['max_abs_diff']}, mean {d['mean_diff']}")
        print(f"{row:>8} {'':>6} | " + " ".join(f"{c:>7}" for c in cols))
        for k in rows:
            for what, spec in (("before", "7.2f"), ("after", "7.2f"), ("diff", "+7.2f")):
                print(f"{k if what == 'before' else '':>8} {what:>6} | " + " ".join(
                    format(cell[k, c][what], spec) if (k, c) in cell else f"{'—':>7}" for c in cols))
    g = r["gpu"]
    print(f"\nGPU: {g['device_name'] if g['available'] else 'none'}; suite on CUDA: "
          + (r["suite_cuda"]["summary"] if r.get("suite_cuda") else r.get("suite_cuda_reason", "—")))


if __name__ == "__main__":
    main()
