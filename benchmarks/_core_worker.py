"""Worker of benchmarks/core.py: one measurement in a fresh process, against whichever metainr is
importable (``PYTHONPATH=<tree>/src``), old API or new. Prints one JSON object as its last line.

    python benchmarks/_core_worker.py reference_step [--threads 2] [--warmup 2] [--repeats 5]
    python benchmarks/_core_worker.py fit [--threads 2]

It imports nothing from benchmarks/ (it runs against another tree's package), and records
``metainr.__file__`` so the caller can check which tree it measured.

- reference_step: ONE second-order MAML outer step (``meta_gradient``, which returns the outer
  gradient: its backward pass is included), K=4 inner steps at lr 1e-2, SIREN width 256 depth 5
  (w0 30), 4 random 64x64 RGB crops ``patches("train", 64, count=4)``; after ``--warmup`` steps,
  ``--repeats`` timed ones: seconds = their median; peak_rss_mb = ru_maxrss of this process.
  ``cpu_seconds`` (process CPU time, all threads) moves less than wall time when other processes
  compete for the cores; ``first_loss`` / ``final_mean_psnr`` show both trees computed the same thing.
- fit: ONE ``fit`` of 24 held-out 64x64 RGB crops ``patches("test", 64, count=24)``, 100 Adam
  steps at lr 1e-3 from the random init of a SIREN width 128 depth 4 (the image_meta field).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def api(metainr) -> str:
    """``new`` (tasks and named learners) or ``old`` (LearnerConfig, coords/values)."""
    return "new" if hasattr(metainr, "ImageTask") else "old"


def reference_step(warmup: int, repeats: int) -> dict:
    import metainr
    from metainr import FieldConfig, build_field, build_learner, patches

    images = patches("train", 64, count=4)
    field = build_field(FieldConfig(out_dim=3, width=256, depth=5, w0=30.0))
    if api(metainr) == "new":
        task = metainr.ImageTask(channels=3)
        batch = task.batch(images.images)
        learner = build_learner(field, "maml", inner_steps=4, inner_lr=1e-2)
        step = lambda: learner.meta_gradient(task, batch)  # noqa: E731
    else:
        learner = build_learner(field, metainr.LearnerConfig(kind="maml", inner_steps=4, inner_lr=1e-2))
        coords, values = images.coords, images.values
        step = lambda: learner.meta_gradient(coords, values)  # noqa: E731
    rss_before = peak_rss_mb()
    times, cpu, losses = [], [], []
    for _ in range(warmup + repeats):
        t, c = time.perf_counter(), time.process_time()
        stats, _ = step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        losses.append(float(stats["loss"]))
    return {"seconds": statistics.median(times[warmup:]), "seconds_all": times,
            "cpu_seconds": statistics.median(cpu[warmup:]), "cpu_seconds_all": cpu, "warmup": warmup,
            "repeats": repeats, "peak_rss_mb": peak_rss_mb(), "rss_before_steps_mb": rss_before,
            "first_loss": losses[0]}


def fit_seconds() -> dict:
    import metainr
    from metainr import FieldConfig, build_field, fit, mean_psnr, patches
    from metainr.functional import field_params

    images = patches("test", 64, count=24)
    field = build_field(FieldConfig(out_dim=3, width=128, depth=4))
    init = field_params(field)
    if api(metainr) == "new":
        task = metainr.ImageTask(channels=3)
        batch = task.batch(images.images)
        run = lambda: fit(task, field, init, batch, 100, optimizer="adam", lr=1e-3)  # noqa: E731
    else:
        coords, values = images.coords, images.values
        run = lambda: fit(field, init, coords, values, 100, optimizer="adam", lr=1e-3)  # noqa: E731
    t, c = time.perf_counter(), time.process_time()
    result = run()
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": seconds, "cpu_seconds": cpu, "signals": len(images), "steps": 100,
            "final_mean_psnr": mean_psnr(result.psnr[:, -1]), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["reference_step", "fit"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import metainr

    out = reference_step(args.warmup, args.repeats) if args.what == "reference_step" else fit_seconds()
    out.update(api=api(metainr), metainr_file=metainr.__file__, threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
