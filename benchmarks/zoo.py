"""Train the zoo: one meta-learned init per bundled class, shipped in ``src/metainr/zoo/inits/``.

    python benchmarks/zoo.py [--quick] [--only NAME,...] [--threads 1] --out benchmarks/results/zoo.json

Each entry meta-trains the task preset's learner (its learner options and train options too) on
the task's default dataset, with the changes ``ZOO`` lists per entry (every entry: a fixed number
of outer steps; a narrower field than the preset where the preset's would not fit the zoo's size
budget; outer lr 1e-3 where the preset leaves the 1e-4 default; notes: 0.25 s sounds, not the
1 s default, and the best of 10 validations on held-back training sounds, see its ``why``).
Then, on the dataset's held-out ``test`` split (the task's validation batches, as
:func:`metainr.train.validate` scores them): the PSNR after N test steps of the learner's own test
rule, where N is what ``metainr fit --init zoo:NAME`` takes by default (the learner's inner steps, or the preset's ``eval_steps``, at least
2), against a random init of the same field (the weights meta-training started from) fitted for
the same N steps with the task preset's random rule (``type(task).preset.random``: Adam, 1e-3).

Every entry runs in a fresh process (``run_script_capped``: an RSS cap and a time limit) on
``--threads`` torch threads, one after another. The checkpoints are written without optimizer
state (:func:`metainr.train.save_checkpoint` with no optimizer), with a ``zoo`` record in their
metadata; ``zoo.json`` beside them is the manifest ``metainr zoo`` lists. ``--quick`` trains a few
steps into a temporary folder (the package's inits are left alone).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, run_script_capped, write_json  # noqa: E402

from metainr import TrainConfig, build_field, build_learner, fit, mean_psnr, meta_train  # noqa: E402
from metainr.fields import count_parameters  # noqa: E402
from metainr.start import learner_start  # noqa: E402
from metainr.tasks import build_task  # noqa: E402
from metainr.train import save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_INITS = ROOT / "src" / "metainr" / "zoo" / "inits"
NARROW = "width 64 (preset 128) to keep the zoo a few hundred KB"
ZOO: dict[str, dict] = {
    # name -> task, data, field (width, depth), outer steps, train options over the preset's, task options, why
    "faces": dict(task="image", data="faces", width=64, depth=4, steps=1200, train={"outer_lr": 1e-3},
                  why=[NARROW, "outer_lr 1e-3 (preset: the 1e-4 default; 1e-3 reached 29.0 vs 21.1 dB after 100 "
                       "steps in a pilot)"]),
    "patches": dict(task="image", data="patches", width=64, depth=4, steps=900, train={"outer_lr": 1e-3},
                    why=[NARROW, "outer_lr 1e-3 (preset: the 1e-4 default)"]),
    "ct-phantoms": dict(task="ct", data="ct-phantoms", width=64, depth=4, steps=200, train={}, why=[]),
    "chairs": dict(task="views", data="chairs", width=64, depth=4, steps=400, train={}, why=[NARROW]),
    "pans": dict(task="video", data="pans", width=64, depth=4, steps=200, train={}, why=[NARROW]),
    "notes": dict(task="audio", data="notes", width=64, depth=4, steps=500, train={}, task_options={"length": 4000},
                  validate=True,
                  why=[NARROW, "0.25 s sounds (length 4000 at 16 kHz, as benchmarks/timeseries.py): on the 1 s "
                       "default, 2 steps from the init reached 22.68 dB against 21.55 from random (120 outer steps; "
                       "300 steps, or width 96 / 128, gave 22.66 / 22.67 / 22.60): the init learned little more "
                       "than the mean", "validated every 50 steps on 40 held-back training sounds, the best "
                       "init kept (Meta-SGD on notes drifts late: without it, 25.18 dB on test after 500 steps; "
                       "a pilot reached 31.41 after 300)"]),
    "climate": dict(task="sphere", data="climate", width=64, depth=4, steps=300, train={}, why=[]),
    "glyphs": dict(task="sdf2d", data="glyphs", width=64, depth=4, steps=1800, train={}, why=[]),
    "shapes": dict(task="sdf3d", data="shapes", width=64, depth=4, steps=300, train={}, why=[]),
}
SEED = 0
QUICK_STEPS = 3


def _psnr(task, field, inits, batches, steps: int, **rule) -> float:
    """Mean PSNR after ``steps`` over ``batches`` (each batch's mean, then their mean, as
    :func:`metainr.train.validate`); ``inits(batch)`` gives the initial params of a batch."""
    scores = [mean_psnr(fit(task, field, inits(b), b, steps, **rule).psnr[:, -1]) for b in batches]
    return sum(scores) / len(scores)


def train_entry(name: str, quick: bool, inits_dir: Path, threads: int) -> dict:
    """Meta-train zoo entry ``name``, score it and a random init on the test split, write its
    checkpoint into ``inits_dir``; returns its record."""
    torch.set_num_threads(threads)
    spec = ZOO[name]
    load_t0 = time.perf_counter()
    task = build_task(spec["task"], **spec.get("task_options", {}))
    train, test = task.load(spec["data"], "train"), task.load(spec["data"], "test")
    task = task.settled(task.batch(train[:1]))
    load_s = time.perf_counter() - load_t0
    preset = type(task).preset
    field_cfg = preset.field_config(task, width=spec["width"], depth=spec["depth"], seed=SEED)
    learner = build_learner(build_field(field_cfg), preset.learner, **preset.learner_options)
    random_field = build_field(field_cfg)  # the weights meta-training starts from
    steps = QUICK_STEPS if quick else spec["steps"]
    cfg = TrainConfig(**{**preset.train, **spec["train"], "steps": steps, "seed": SEED})
    val, validation = None, None
    if spec.get("validate"):  # as `metainr meta-train` on a dataset without a val split: the best of 10 kept
        n_val = len(train) // 10
        train, val, validation = train[:-n_val], train[-n_val:], f"the last {n_val} of {spec['data']}:train"
        cfg = TrainConfig(**{**cfg.to_dict(), "eval_every": max(steps // 10, 1)})
    t0, c0 = time.perf_counter(), time.process_time()
    meta_train(learner, task, train, cfg, val=val, progress=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    n_test = learner_start(learner, {"train": cfg.to_dict()}, task).default_steps
    batches = task.validation_batches(test)
    meta_rule = learner.test_rule().fit_options(task, learner.field)
    psnr = _psnr(task, learner.field, lambda b: learner.signal_init(task, b), batches, n_test, **meta_rule)
    random_params = {n: p.detach() for n, p in random_field.named_parameters()}
    rand = preset.random
    random_psnr = _psnr(task, random_field, lambda b: random_params, batches, n_test, optimizer=rand.optimizer,
                        lr=rand.lr)
    record = {
        "name": name, "task": task.name, "data": spec["data"], "task_options": spec.get("task_options", {}),
        "learner": learner.name,
        "field": {"kind": field_cfg.kind, "width": field_cfg.width, "depth": field_cfg.depth},
        "params": count_parameters(learner.field), "learner_params": sum(p.numel() for p in learner.parameters()),
        "steps": n_test, "psnr": round(psnr, 2), "random_psnr": round(random_psnr, 2),
        "random_rule": {"optimizer": rand.optimizer, "lr": rand.lr},
        "test": f"{spec['data']}:test", "test_signals": len(test),
        "outer_steps": steps, "validation": validation, "outer_lr": cfg.outer_lr, "batch_size": cfg.batch_size,
        "schedule": cfg.schedule,
        "seed": SEED, "threads": threads, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "why": spec["why"],
    }
    path = inits_dir / f"{name}.safetensors"
    save_checkpoint(path, learner, None, steps, task, cfg,
                    data={"source": spec["data"], "validation": validation, "signals": len(train),
                          "val_signals": 0 if val is None else len(val)},
                    extra={"zoo": {k: v for k, v in record.items() if k not in ("field", "params")}})
    return {**record, "bytes": path.stat().st_size, "load_seconds": round(load_s, 1), "peak_rss_mb": peak_rss_mb()}


MANIFEST_KEYS = ("name", "task", "data", "learner", "field", "params", "bytes", "steps", "psnr", "random_psnr",
                 "outer_steps", "outer_lr", "batch_size", "seconds", "cpu_seconds", "seed", "threads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} outer steps each, into a temporary folder")
    ap.add_argument("--only", default=None, help="comma-separated entry names (default: all); the others' records "
                    "are kept from an existing manifest")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inits", default=None, help="where checkpoints and zoo.json go (default: the package's "
                    "src/metainr/zoo/inits; a temporary folder with --quick)")
    ap.add_argument("--out", default=None, help="the benchmark JSON (default: benchmarks/results/zoo.json; "
                    "zoo_quick.json in the temporary folder with --quick)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cap-gib", type=float, default=6.0, help="RSS cap of one entry's process")
    ap.add_argument("--timeout", type=float, default=1200.0, help="time limit of one entry's process (s)")
    args = ap.parse_args()
    inits = Path(args.inits) if args.inits else (Path(tempfile.mkdtemp(prefix="metainr-zoo-")) if args.quick
                                                 else PACKAGE_INITS)
    if args.worker:
        print(json.dumps(train_entry(args.worker, args.quick, inits, args.threads)))
        return
    inits.mkdir(parents=True, exist_ok=True)
    default_out = inits / "zoo_quick.json" if args.quick else ROOT / "benchmarks" / "results" / "zoo.json"
    out = Path(args.out) if args.out else default_out
    names = args.only.split(",") if args.only else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise SystemExit(f"unknown zoo entries {unknown}; choose from {list(ZOO)}")
    manifest_path = inits / "zoo.json"
    old = {e["name"]: e for e in json.loads(manifest_path.read_text())["entries"]} if manifest_path.is_file() else {}
    old_runs = json.loads(out.read_text()).get("runs", {}) if out.is_file() else {}
    runs: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name in names:
        worker_args = ["--worker", name, "--threads", str(args.threads), "--inits", str(inits)]
        rec = run_script_capped(__file__, worker_args + (["--quick"] if args.quick else []),
                                int(args.cap_gib * 2**30), args.timeout, env={"OMP_NUM_THREADS": str(args.threads)})
        runs[name] = rec
        if "error" in rec:
            print(f"[{name}] failed: {rec['error']}", flush=True)
            continue
        print(f"[{name}] {rec['task']}/{rec['learner']} {rec['field']['kind']} {rec['field']['width']}x"
              f"{rec['field']['depth']}: {rec['outer_steps']} outer steps in {rec['seconds']:.0f} s; held-out PSNR "
              f"after {rec['steps']} steps {rec['psnr']:.2f} dB (random {rec['random_psnr']:.2f}); "
              f"{rec['bytes'] / 1024:.0f} KB", flush=True)
    merged = {**{k: v for k, v in old_runs.items() if k in ZOO}, **runs}
    entries = {**old, **{n: {k: r[k] for k in MANIFEST_KEYS} for n, r in runs.items() if "error" not in r}}
    ordered = [entries[n] for n in ZOO if n in entries]
    write_json(manifest_path, {"version": 1, "note": "written by benchmarks/zoo.py; see benchmarks/results/zoo.json",
                               "entries": ordered})
    write_json(out, {"config": {"quick": args.quick, "seed": SEED, "threads": args.threads, "zoo": ZOO},
                     "machine": {**machine(), "threads": args.threads}, "runs": merged,
                     "total_bytes": sum(e["bytes"] for e in ordered), "seconds": round(time.perf_counter() - t0, 1)})
    print(f"wrote {manifest_path} ({len(ordered)} entries, {sum(e['bytes'] for e in ordered) / 1024:.0f} KB) "
          f"and {out}", flush=True)


if __name__ == "__main__":
    main()
