"""Benchmark: meta-learned inits vs random init on held-out images (issue: foundation).

    python benchmarks/image_meta.py [--quick] --out benchmarks/results/image_meta.json

Meta-trains maml, fomaml, metasgd and reptile on a default image class until the validation
curve stops improving (or a per-method budget ends), fits held-out images from each learned
init and from a random init (Adam, best lr of a grid at each step), and measures time per
outer step, MFU, the reference MAML step in a fresh process, and random weight factorization.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import learner_record, machine, matmul_gflops, peak_rss_mb, run_worker, write_json  # noqa: E402

from metainr import (FieldConfig, ImageTask, TrainConfig, build_field, build_learner,  # noqa: E402
                     count_parameters, faces, fit, mean_psnr, patches)
from metainr.functional import field_params  # noqa: E402
from metainr.train import meta_train, read_metrics  # noqa: E402

METHODS = ("maml", "fomaml", "metasgd", "reptile")
STEPS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]
RANDOM_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
PSNR_CAP = 60.0


def settings(quick: bool) -> dict:
    """Everything that defines a run (stored as ``config`` in the JSON)."""
    if quick:
        return dict(data="faces", resolution=25, n_train=80, n_val=10, n_test=10,
                    field=FieldConfig(out_dim=1, width=32, depth=4).to_dict(),
                    inner_steps=3, reptile_inner_steps=8, inner_lr=1e-2, outer_lr=1e-3, batch_size=8,
                    max_outer_steps=150, eval_every=50, patience=3, max_seconds_per_method=60,
                    steps=[s for s in STEPS if s <= 100],
                    rwf=dict(resolution=128, images=1, width=128, depth=5, lrs=[3e-4, 1e-3], steps=[50, 100, 200]))
    return dict(data="patches", resolution=64, n_train=1000, n_val=16, n_test=24,
                field=FieldConfig(out_dim=3, width=128, depth=4).to_dict(),
                inner_steps=3, reptile_inner_steps=8, inner_lr=1e-2, outer_lr=5e-4, batch_size=4,
                max_outer_steps=1500, eval_every=100, patience=3, max_seconds_per_method=900,
                steps=STEPS,
                rwf=dict(resolution=128, images=3, width=128, depth=5, lrs=[1e-4, 3e-4, 1e-3],
                         steps=[100, 200, 500, 1000]))


def datasets(cfg: dict):
    """(train, validation, test): validation crops come from the training photos, test from others."""
    if cfg["data"] == "faces":
        train, test = faces("train", cfg["resolution"]), faces("test", cfg["resolution"])
        return train.subset(slice(cfg["n_val"], None)), train.subset(slice(0, cfg["n_val"])), test.subset(
            slice(0, cfg["n_test"]))
    res = cfg["resolution"]
    return (patches("train", res, count=cfg["n_train"], seed=0), patches("train", res, count=cfg["n_val"], seed=1),
            patches("test", res, count=cfg["n_test"], seed=0))


def forward_matmul_flops(field_cfg: FieldConfig, n_coords: int) -> int:
    """Matmul FLOPs of one forward pass of the field on ``n_coords`` coordinates."""
    field = build_field(field_cfg)
    dims = [(layer.in_dim, layer.out_dim) for layer in [*field.hidden, field.head]]
    return sum(2 * n_coords * a * b for a, b in dims)


def outer_step_flops(kind: str, k: int, batch: int, fwd: int) -> int:
    """Analytic matmul FLOPs of one outer step: forward F, backward 2F, and for second order the
    backward through each inner step's forward+backward (another 6F per step)."""
    if kind in ("maml", "metasgd"):
        per_signal = k * (3 + 6) * fwd + 3 * fwd
    elif kind == "fomaml":
        per_signal = k * 3 * fwd + 3 * fwd
    else:
        per_signal = k * 3 * fwd + fwd
    return batch * per_signal


def image_task(cfg: dict) -> ImageTask:
    """The images of a run: as many channels as the field has outputs."""
    return ImageTask(channels=cfg["field"]["out_dim"])


def train_method(kind: str, cfg: dict, train, val, run_root: Path) -> tuple:
    field_cfg = FieldConfig(**cfg["field"])
    k = cfg["reptile_inner_steps"] if kind == "reptile" else cfg["inner_steps"]
    train_cfg = TrainConfig(steps=cfg["max_outer_steps"], batch_size=cfg["batch_size"], outer_lr=cfg["outer_lr"],
                            eval_every=cfg["eval_every"], eval_steps=2, patience=cfg["patience"],
                            checkpoint_every=cfg["eval_every"], log_every=1)
    learner = build_learner(build_field(field_cfg), kind, inner_steps=k, inner_lr=cfg["inner_lr"])
    run_dir = run_root / kind
    t0 = time.perf_counter()
    init = meta_train(learner, image_task(cfg), train.images, train_cfg, run_dir=run_dir, val=val.images,
                      progress=False, max_seconds=cfg["max_seconds_per_method"])
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir / "metrics.jsonl")
    seconds = statistics.median(r["seconds"] for r in records[1:]) if len(records) > 1 else records[0]["seconds"]
    info = {"outer_steps": records[-1]["step"], "train_seconds": round(wall, 1),
            "val_curve": [[r["step"], round(r["val_psnr"], 3)] for r in records if "val_psnr" in r],
            "learner": learner_record(kind, learner), "train": train_cfg.to_dict()}
    return learner, init, seconds, info


def curve(result, n_steps: int) -> list[float]:
    return [mean_psnr(result.psnr[:, i], PSNR_CAP) for i in range(n_steps)]


def rwf_experiment(cfg: dict) -> dict:
    """Random weight factorization vs the plain layer: fit 128^2 images from random init with Adam."""
    r = cfg["rwf"]
    images = patches("test", r["resolution"], count=r["images"], seed=5)
    task = ImageTask(channels=3)
    batch = task.batch(images.images)
    out = {"steps": r["steps"], "resolution": r["resolution"], "images": r["images"], "lrs": r["lrs"],
           "width": r["width"], "depth": r["depth"]}
    for name, use_rwf in (("plain", False), ("rwf", True)):
        field = build_field(FieldConfig(out_dim=3, width=r["width"], depth=r["depth"], rwf=use_rwf, seed=3))
        per_lr = {}
        for lr in r["lrs"]:
            res = fit(task, field, field_params(field), batch, max(r["steps"]), optimizer="adam", lr=lr,
                      record=r["steps"])
            per_lr[lr] = curve(res, len(r["steps"]))
        best_lr = max(per_lr, key=lambda lr: per_lr[lr][-1])
        out[name] = per_lr[best_lr]
        out[f"{name}_best_lr"] = best_lr
        out[f"{name}_all"] = {str(lr): c for lr, c in per_lr.items()}
        out[f"{name}_params"] = count_parameters(field)
    return out


def reference_step_worker(batching: str) -> None:
    """Fresh-process measurement: ONE second-order MAML outer step, K=4, SIREN 5x256, 64^2 RGB, B=4."""
    torch.set_num_threads(2)
    task = ImageTask(channels=3)
    batch = task.batch(patches("train", 64, count=4).images)
    learner = build_learner(build_field(FieldConfig(out_dim=3, width=256, depth=5, w0=30.0)), "maml", inner_steps=4,
                            inner_lr=1e-2, batching=batching)
    before = peak_rss_mb()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        learner.meta_gradient(task, batch)
        times.append(time.perf_counter() - t)
    print(json.dumps({"first_step_seconds": times[0], "seconds": statistics.median(times[1:]),
                      "peak_rss_mb": peak_rss_mb(), "rss_before_step_mb": before}))


def reference_step() -> dict:
    script = str(Path(__file__).resolve())
    out = {}
    for batching in ("loop", "vmap"):
        out[batching] = run_worker(script, ["--reference-step-worker", batching])
        out[batching + "_mmap_threshold_65536"] = run_worker(
            script, ["--reference-step-worker", batching], env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    ref = out["loop"]
    return {"seconds": ref.get("seconds"), "peak_rss_mb": ref.get("peak_rss_mb"),
            "first_step_seconds": ref.get("first_step_seconds"), "batching": "loop",
            "published_gradncp_code": {"seconds": 3.39, "peak_rss_mb": 2857},
            "ratio_seconds": ref["seconds"] / 3.39 if "seconds" in ref else None,
            "ratio_peak_rss": ref["peak_rss_mb"] / 2857 if "peak_rss_mb" in ref else None,
            "config": {"field": "siren width 256 depth 5 w0 30", "resolution": 64, "channels": 3,
                       "inner_steps": 4, "meta_batch": 4, "threads": 2, "second_order": True},
            "note": "seconds = median of steps 2-3 in a fresh process; first_step_seconds includes warm-up",
            "all": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes in total")
    parser.add_argument("--out", default="benchmarks/results/image_meta.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--reference-step-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_step_worker:
        reference_step_worker(args.reference_step_worker)
        return
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    t_start = time.perf_counter()
    print("measuring matmul rate and the reference MAML step ...", flush=True)
    rate = matmul_gflops()
    ref = reference_step()
    train, val, test = datasets(cfg)
    field_cfg = FieldConfig(**cfg["field"])
    n_params = count_parameters(build_field(field_cfg))
    values_per_signal = test.values[0].numel()
    steps = cfg["steps"]
    task = image_task(cfg)
    batch = task.batch(test.images)
    psnr, seconds, mfu, details = {}, {}, {}, {}
    run_root = Path(tempfile.mkdtemp(prefix="image_meta_"))
    fwd = forward_matmul_flops(field_cfg, batch.query.shape[0])
    for kind in args.methods.split(","):
        print(f"meta-training {kind} ...", flush=True)
        learner, init, sec, info = train_method(kind, cfg, train, val, run_root)
        rule = learner.test_rule()
        res = fit(task, learner.field, init, batch, max(steps), record=steps, **rule.fit_options(task, learner.field))
        psnr[kind] = curve(res, len(steps))
        seconds[kind] = sec
        k = learner.config.inner_steps
        mfu[kind] = outer_step_flops(kind, k, cfg["batch_size"], fwd) / sec / (rate * 1e9)
        details[kind] = info
        print(f"  {kind}: {info['outer_steps']} outer steps, {sec:.3f} s/step, PSNR@2 {psnr[kind][steps.index(2)]:.2f}",
              flush=True)

    print("fitting from random init (Adam lr grid) ...", flush=True)
    random_field = build_field(FieldConfig(**{**cfg["field"], "seed": 1}))
    dense = list(range(max(steps) + 1))
    random_dense = {}
    for lr in RANDOM_LRS:
        res = fit(task, random_field, field_params(random_field), batch, max(steps), optimizer="adam", lr=lr,
                  record=dense)
        random_dense[lr] = curve(res, len(dense))
    best_dense = [max(c[i] for c in random_dense.values()) for i in range(len(dense))]
    psnr["random"] = [best_dense[s] for s in steps]
    random_by_lr = {str(lr): [c[s] for s in steps] for lr, c in random_dense.items()}

    speedup = None
    if "maml" in psnr:
        target = psnr["maml"][steps.index(2)]
        reach = next((s for s, v in enumerate(best_dense) if v >= target), None)
        speedup = reach / 2 if reach is not None else None

    print("random weight factorization ...", flush=True)
    rwf = rwf_experiment(cfg)

    result = {
        "steps": steps,
        "psnr": psnr,
        "speedup_at_2": speedup,
        "speedup_note": None if speedup is not None else f"random init never reached maml@2 within {max(steps)} steps",
        "seconds_per_outer_step": seconds,
        "threads": args.threads,
        "field_params": n_params,
        "values_per_signal": values_per_signal,
        "params_per_value": n_params / values_per_signal,
        "mfu": mfu,
        "matmul_gflops": rate,
        "rwf": rwf,
        "reference_step": ref,
        "random_by_lr": random_by_lr,
        "methods": details,
        "config": {**cfg, "random_lrs": list(RANDOM_LRS), "psnr_cap": PSNR_CAP, "quick": args.quick,
                   "test_rule": {k: "sgd (learned lr)" if k == "metasgd" else "sgd lr inner_lr" for k in psnr if k != "random"}},
        "machine": machine(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.out, result)
    print_table(result)


def print_table(r: dict) -> None:
    steps = r["steps"]
    print(f"\nheld-out PSNR (dB) vs test steps; field {r['field_params']} params "
          f"({r['params_per_value']:.2f}x values), {r['threads']} threads")
    print(f"{'method':>8} | " + " ".join(f"{s:>6}" for s in steps))
    for name, ys in r["psnr"].items():
        print(f"{name:>8} | " + " ".join(f"{y:6.2f}" for y in ys))
    print(f"speedup_at_2: {r['speedup_at_2']}")
    for k, s in r["seconds_per_outer_step"].items():
        print(f"{k:>8}: {s:.3f} s/outer step, MFU {r['mfu'][k]:.3f}")
    ref = r["reference_step"]
    print(f"reference MAML step: {ref['seconds']:.2f} s (first {ref['first_step_seconds']:.2f} s), "
          f"peak RSS {ref['peak_rss_mb']:.0f} MB")
    w = r["rwf"]
    print(f"RWF @ {w['steps']}: plain {[round(x, 2) for x in w['plain']]}, rwf {[round(x, 2) for x in w['rwf']]}")


if __name__ == "__main__":
    main()
