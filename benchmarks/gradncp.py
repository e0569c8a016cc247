"""Benchmark: GradNCP vs MAML — memory and time per outer step, the largest trainable
resolution under a memory cap, and held-out quality at matched memory (issue: GradNCP).

    python benchmarks/gradncp.py [--quick] [--part all|memory|maxres|quality] --out benchmarks/results/gradncp.json

Memory: every (resolution, configuration) is ONE outer step in a fresh process with
``MALLOC_MMAP_THRESHOLD_=65536`` (glibc otherwise keeps freed small blocks and inflates RSS);
the number is ru_maxrss after the step minus ru_maxrss just before it (data, field and learner
built, imports done). A watchdog in the parent kills a worker whose total RSS passes the cap.
Quality: each run is budgeted in CPU time (``time.process_time``, 1 thread), two runs at a time.
``--part`` runs one section and merges it into an existing ``--out`` file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, run_script_capped, write_json  # noqa: E402

from metainr import (FieldConfig, GradientRescaling, ImageTask, TrainConfig, build_field,  # noqa: E402
                     build_learner, fit, mean_psnr, patches)
from metainr.train import meta_train, read_metrics  # noqa: E402

CONFIGS = {  # name -> (learner or preset name, its options); "gradncp" is the paper's settings (ContextConfig)
    "maml_k4": ("maml", dict(inner_steps=4)),
    "gradncp_k4": ("gradncp", dict(inner_steps=4, keep_ratio=0.25, boot_steps=5)),
    "gradncp_k16": ("gradncp", dict(inner_steps=16, keep_ratio=0.25, boot_steps=5)),
}
TASK = ImageTask(channels=3)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
GIB = 1024**3


def settings(quick: bool) -> dict:
    """Everything that defines a run (stored as ``config`` in the JSON)."""
    common = dict(step_field=dict(kind="siren", out_dim=3, width=256, depth=5, w0=30.0), meta_batch=4,
                  inner_lr=1e-2, memory_threads=2, budget_gib=4, maxres_sides=[64, 128, 256, 512, 1024])
    if quick:
        return dict(common, resolutions=[32, 64], step_timeout_s=120, safety_cap_gib=6,
                    maxres_sides=[64, 128], quality=dict(
                        resolution=32, field=dict(kind="siren", out_dim=3, width=64, depth=4, w0=30.0),
                        n_train=200, n_val=8, n_test=8, cpu_seconds=30, equal_steps=20, outer_lrs=[3e-4],
                        seeds=[0], maml_test_lrs=[1e-2, 2e-2], test_lr=1e-2, record=[0, 2, 4, 16],
                        eval_every=10, batch_size=4))
    return dict(common, resolutions=[32, 64, 128, 256, 512], step_timeout_s=420, safety_cap_gib=14,
                quality=dict(resolution=64, field=dict(kind="siren", out_dim=3, width=128, depth=5, w0=30.0),
                             n_train=2000, n_val=8, n_test=24, cpu_seconds=720, equal_steps=100,
                             outer_lrs=[1e-4, 3e-4], seeds=[0, 1], maml_test_lrs=[1e-2, 2e-2], test_lr=1e-2,
                             record=[0, 2, 4, 16], eval_every=50, batch_size=4))


# ---------------------------------------------------------------- one outer step, fresh process
def step_worker(name: str, resolution: int, cfg: dict) -> None:
    """Build data + learner, then time ONE (or two, if small) outer steps; print JSON."""
    torch.set_num_threads(cfg["memory_threads"])
    data = patches("train", resolution, count=cfg["meta_batch"], photo_side=max(256, resolution))
    kind, options = CONFIGS[name]
    learner = build_learner(build_field(FieldConfig(**cfg["step_field"])), kind, inner_lr=cfg["inner_lr"], **options)
    batch = TASK.batch(data.images)
    before = peak_rss_mb()
    times = []
    for _ in range(2 if resolution <= 128 else 1):
        t = time.perf_counter()
        learner.meta_gradient(TASK, batch)
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            peak_one = peak_rss_mb()
    print(json.dumps({"mb": peak_one - before, "rss_before_mb": before, "peak_total_mb": peak_one,
                      "seconds": times[-1], "seconds_all": times}))


def run_capped(args: list[str], cap_bytes: int, timeout: float, threads: int) -> dict:
    """Run this script with ``args`` in a fresh process under an RSS cap (:func:`_common.run_capped`)."""
    return run_script_capped(str(Path(__file__).resolve()), args, cap_bytes, timeout,
                             {**MALLOC_ENV, "OMP_NUM_THREADS": str(threads)})


def memory_part(cfg: dict, quick: bool) -> dict:
    memory, seconds, details = {}, {}, {}
    for res in cfg["resolutions"]:
        memory[str(res)], seconds[str(res)] = {}, {}
        for name in CONFIGS:
            r = run_capped(["--step-worker", name, str(res)] + (["--quick"] if quick else []),
                           int(cfg["safety_cap_gib"] * GIB), cfg["step_timeout_s"], cfg["memory_threads"])
            details[f"{res}/{name}"] = r
            memory[str(res)][name] = round(r["mb"], 1) if "mb" in r else None
            seconds[str(res)][name] = round(r["seconds"], 3) if "seconds" in r else None
            print(f"  {res:>4}^2 {name:<12} {memory[str(res)][name]} MB  {seconds[str(res)][name]} s", flush=True)
    ratios = {res: {k: (m[k] / m["maml_k4"] if m.get(k) and m.get("maml_k4") else None) for k in m}
              for res, m in memory.items()}
    return {"memory": memory, "seconds_per_outer_step": seconds, "memory_ratio_to_maml_k4": ratios,
            "memory_details": details}


def maxres_part(cfg: dict, quick: bool) -> dict:
    """Largest side whose outer step finishes with total RSS under the cap (ascending; stop at the first failure)."""
    best, trials = {}, {}
    for name in CONFIGS:
        best[name] = None
        for side in cfg["maxres_sides"]:
            r = run_capped(["--step-worker", name, str(side)] + (["--quick"] if quick else []),
                           int(cfg["budget_gib"] * GIB), cfg["step_timeout_s"], cfg["memory_threads"])
            trials[f"{side}/{name}"] = r
            ok = "error" not in r
            print(f"  cap {cfg['budget_gib']} GiB: {name:<12} {side:>5}^2 {'fits' if ok else r['error']}", flush=True)
            if not ok:
                break
            best[name] = side
    return {"max_resolution_under_budget": best, "max_resolution_trials": trials}


# ---------------------------------------------------------------- quality at matched memory
def quality_sets(q: dict):
    res = q["resolution"]
    return (patches("train", res, count=q["n_train"], seed=0), patches("train", res, count=q["n_val"], seed=1),
            patches("test", res, count=q["n_test"], seed=0))


def evaluate(learner, data, q: dict, lr: float, rescale: float) -> list[float]:
    init = {n: p.detach() for n, p in learner.init_params().items()}
    transform = GradientRescaling(TASK, learner.field, rescale) if rescale else None
    res = fit(TASK, learner.field, init, TASK.batch(data.images), max(q["record"]), optimizer="sgd", lr=lr,
              record=q["record"], transform=transform)
    return [round(mean_psnr(res.psnr[:, i]), 3) for i in range(len(q["record"]))]


def test_rules(method: str, q: dict) -> dict[str, tuple[float, float]]:
    """name -> (test lr, rescale keep ratio) of the test-time variants a method is scored with."""
    if method == "maml_k4":
        return {f"sgd_lr{lr:g}": (lr, 0.0) for lr in q["maml_test_lrs"]}
    return {"rescaled": (q["test_lr"], 0.25), "plain_sgd": (q["test_lr"], 0.0)}


def quality_worker(method: str, lr: float, seed: int, run_dir: str, quick: bool, keep_dir: str | None = None) -> None:
    """One meta-training under a CPU-time budget (1 thread); scores at equal_steps and at the end."""
    torch.set_num_threads(1)
    q = settings(quick)["quality"]
    if method == "gradncp_k16_random" and lr != q["outer_lrs"][-1]:
        sys.exit(f"skipped: the random-pruning ablation runs at outer lr {q['outer_lrs'][-1]} only")
    train, val, test = quality_sets(q)
    kind, options = CONFIGS["gradncp_k16" if method.startswith("gradncp") else "maml_k4"]
    if method == "gradncp_k16_random":
        options = dict(options, policy="random")
    learner = build_learner(build_field(FieldConfig(seed=seed, **q["field"])), kind, inner_lr=1e-2, **options)
    common = dict(batch_size=q["batch_size"], outer_lr=lr, seed=seed, eval_every=q["eval_every"], eval_steps=16,
                  checkpoint_every=q["eval_every"], log_every=1)
    out = {"method": method, "outer_lr": lr, "seed": seed}
    # phase 1: the same number of outer steps for every method (CPU time counts training only)
    start = time.process_time()
    meta_train(learner, TASK, train.images, TrainConfig(steps=q["equal_steps"], **common), run_dir=run_dir,
               val=val.images, progress=False)
    spent = time.process_time() - start
    out["equal_steps"] = {"steps": q["equal_steps"], "cpu_seconds": round(spent, 1),
                          "test": {k: evaluate(learner, test, q, *r) for k, r in test_rules(method, q).items()}}
    # phase 2: continue (exact resume) until the CPU budget is spent; the best validated init is kept
    start = time.process_time()
    meta_train(learner, TASK, train.images, TrainConfig(steps=100_000, **common), run_dir=run_dir, val=val.images,
               progress=False, resume=True, max_seconds=max(q["cpu_seconds"] - spent, 0.0), clock=time.process_time)
    spent += time.process_time() - start
    if keep_dir:
        import shutil
        shutil.copytree(run_dir, keep_dir, dirs_exist_ok=True)
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    out["equal_time"] = {
        "cpu_seconds": round(spent, 1), "outer_steps": records[-1]["step"],
        "val_curve": [[r["step"], round(r["val_psnr"], 3)] for r in records if "val_psnr" in r],
        "val": {k: evaluate(learner, val, q, *r) for k, r in test_rules(method, q).items()},
        "test": {k: evaluate(learner, test, q, *r) for k, r in test_rules(method, q).items()},
        "median_step_seconds": statistics.median(r["seconds"] for r in records[1:]),
    }
    print(json.dumps(out))


def quality_part(cfg: dict, quick: bool, jobs: int = 2) -> dict:
    q = cfg["quality"]
    runs = [(m, lr, s) for s in q["seeds"] for lr in q["outer_lrs"] for m in ("maml_k4", "gradncp_k16")]
    runs += [("gradncp_k16_random", q["outer_lrs"][-1], q["seeds"][0])]  # the ablation: one seed, one lr
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(runs)
        active: list[tuple[subprocess.Popen, tuple]] = []
        while pending or active:
            while pending and len(active) < jobs:
                m, lr, s = pending.pop(0)
                args = ["--quality-worker", m, str(lr), str(s), f"{tmp}/{m}_{lr}_{s}"] + (["--quick"] if quick else [])
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                active.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                               (m, lr, s)))
            time.sleep(1)
            for proc, run in list(active):
                if proc.poll() is not None:
                    out, err = proc.communicate()
                    active.remove((proc, run))
                    if proc.returncode == 0:
                        results.append(json.loads(out.strip().splitlines()[-1]))
                        print(f"  done {run}: {results[-1]['equal_time']['test']}", flush=True)
                    else:
                        results.append({"method": run[0], "outer_lr": run[1], "seed": run[2],
                                        "error": (err.strip().splitlines() or ["?"])[-1]})
                        print(f"  FAILED {run}: {results[-1]['error']}", flush=True)
    return {"quality": summarise_quality(results, q), "quality_runs": results}


def summarise_quality(results: list[dict], q: dict) -> dict:
    """Pick each method's outer lr (and MAML's test lr) on validation; average test over seeds."""
    ok = [r for r in results if "error" not in r]
    at16 = q["record"].index(16)

    def val_score(method: str, lr: float, rule: str) -> float:
        rs = [r for r in ok if r["method"] == method and r["outer_lr"] == lr]
        return statistics.mean(r["equal_time"]["val"][rule][at16] for r in rs) if rs else float("-inf")

    summary = {"record_steps": q["record"], "selection": "outer lr (and MAML's test lr) by mean validation PSNR "
               "after 16 steps over seeds; test numbers are means over seeds"}
    for method, rule in (("maml_k4", None), ("gradncp_k16", "rescaled"), ("gradncp_k16_random", "rescaled")):
        rules = [rule] if rule else list(test_rules("maml_k4", q))
        choices = [(val_score(method, lr, r), lr, r) for lr in q["outer_lrs"] for r in rules]
        score, lr, best_rule = max(choices)
        if score == float("-inf"):
            continue
        rs = [r for r in ok if r["method"] == method and r["outer_lr"] == lr]
        entry = {"outer_lr": lr, "test_rule": best_rule, "seeds": [r["seed"] for r in rs]}
        for budget in ("equal_time", "equal_steps"):
            for name in test_rules(method, q):
                curve = [statistics.mean(r[budget]["test"][name][i] for r in rs) for i in range(len(q["record"]))]
                entry[f"{budget}/{name}"] = [round(v, 3) for v in curve]
        entry["outer_steps"] = [r["equal_time"]["outer_steps"] for r in rs]
        entry["cpu_seconds"] = [r["equal_time"]["cpu_seconds"] for r in rs]
        summary[method] = entry
    if "maml_k4" in summary and "gradncp_k16" in summary:
        m, g = summary["maml_k4"], summary["gradncp_k16"]
        for budget in ("equal_time", "equal_steps"):
            maml16 = m[f"{budget}/{m['test_rule']}"][at16]
            summary[f"{budget}/gain_at_16_db"] = round(g[f"{budget}/rescaled"][at16] - maml16, 3)
            summary[f"{budget}/gain_at_16_plain_sgd_db"] = round(g[f"{budget}/plain_sgd"][at16] - maml16, 3)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", default="all", choices=["all", "memory", "maxres", "quality"])
    ap.add_argument("--out", default="benchmarks/results/gradncp.json")
    ap.add_argument("--step-worker", nargs=2, metavar=("CONFIG", "RES"))
    ap.add_argument("--quality-worker", nargs=4, metavar=("METHOD", "LR", "SEED", "RUN"))
    args = ap.parse_args()
    cfg = settings(args.quick)
    if args.step_worker:
        return step_worker(args.step_worker[0], int(args.step_worker[1]), cfg)
    if args.quality_worker:
        m, lr, seed, run = args.quality_worker
        keep = f"runs/gradncp_quality/{Path(run).name}" if not args.quick else None
        return quality_worker(m, float(lr), int(seed), run, args.quick, keep)
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if args.part != "all" and out_path.is_file() else {}
    result.update(config=cfg, quick=args.quick, machine=machine(), malloc_env=MALLOC_ENV,
                  memory_note="MB = ru_maxrss after ONE outer step minus ru_maxrss just before it, fresh process, "
                              "MALLOC_MMAP_THRESHOLD_=65536; max resolution: total VmRSS of the worker (imports "
                              "included) must stay under budget_gib, checked every 20 ms by the parent")
    parts = ["memory", "maxres", "quality"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        print(f"== {part}", flush=True)
        result.update({"memory": memory_part, "maxres": maxres_part, "quality": quality_part}[part](cfg, args.quick))
        result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t0, 1)
        write_json(out_path, result)
    print_table(result)


def print_table(r: dict) -> None:
    if "memory" in r:
        print("\nresolution | " + " | ".join(f"{k} MB / s" for k in CONFIGS))
        for res, m in r["memory"].items():
            s = r["seconds_per_outer_step"][res]
            print(f"{res:>10} | " + " | ".join(f"{m[k]} / {s[k]}" for k in CONFIGS))
    if "max_resolution_under_budget" in r:
        print("max resolution under budget:", r["max_resolution_under_budget"])
    if "quality" in r:
        print(json.dumps(r["quality"], indent=1))


if __name__ == "__main__":
    main()
