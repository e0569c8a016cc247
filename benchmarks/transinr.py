"""Benchmark: TransINR (one forward pass) vs MAML (K inner steps) vs random init.

    python benchmarks/transinr.py [--quick] --out benchmarks/results/transinr.json

Same data, split and field size as benchmarks/image_meta.py. TransINR builds each held-out
field with one hypernetwork pass (optionally refined with Adam); MAML adapts its learned init
with K SGD steps; random init is fitted with Adam at the best lr of a grid at every step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import learner_record, machine, write_json  # noqa: E402
from image_meta import RANDOM_LRS, curve, datasets, image_task, settings  # noqa: E402

from metainr import FieldConfig, TrainConfig, build_field, build_learner, count_parameters, fit  # noqa: E402
from metainr.functional import field_params  # noqa: E402
from metainr.train import meta_train, read_metrics  # noqa: E402

STEPS = [0, 1, 2, 5, 10, 20, 50]


def transinr_settings(quick: bool) -> dict:
    base = settings(quick)
    side = base["resolution"]
    pe_field = FieldConfig(kind="pe", out_dim=base["field"]["out_dim"], width=base["field"]["width"],
                           depth=base["field"]["depth"], n_freqs=4 if quick else 6, output_offset=0.5)
    hyper = dict(image_size=side, hyper_dim=64 if quick else 128, hyper_depth=2 if quick else 4, hyper_heads=4,
                 n_groups=32)
    return {**base, "transinr_field": pe_field.to_dict(), "hyper": hyper,
            "transinr_steps": 300 if quick else 3000, "transinr_batch": 16, "transinr_lr": 1e-3 if quick else 3e-4,
            "maml_steps": 150 if quick else 1000, "max_seconds": 90 if quick else 900,
            "test_lrs": [1e-4, 1e-3]}


def train(kind: str, cfg: dict, train_set, val, root: Path):
    task = image_task(cfg)
    if kind == "transinr":
        field_cfg = FieldConfig(**cfg["transinr_field"])
        # the hypernetwork reads the task's patch tokens (image_size names the side they come from)
        tokens, token_dim = task.tokens(task.batch(train_set.images[:1])).shape[1:]
        options = {k: v for k, v in cfg["hyper"].items() if k != "image_size"}
        options.update(tokens=tokens, token_dim=token_dim, test_optimizer="adam", test_lr=1e-3)
        train_cfg = TrainConfig(steps=cfg["transinr_steps"], batch_size=cfg["transinr_batch"],
                                outer_lr=cfg["transinr_lr"], schedule="cosine", eval_every=cfg["transinr_steps"] // 10,
                                eval_steps=0, log_every=10, checkpoint_every=cfg["transinr_steps"] // 10)
    else:
        field_cfg = FieldConfig(**cfg["field"])
        options = dict(inner_steps=cfg["inner_steps"], inner_lr=cfg["inner_lr"])
        train_cfg = TrainConfig(steps=cfg["maml_steps"], batch_size=cfg["batch_size"], outer_lr=cfg["outer_lr"],
                                eval_every=cfg["eval_every"], eval_steps=2, log_every=10,
                                checkpoint_every=cfg["eval_every"])
    learner = build_learner(build_field(field_cfg), kind, **options)
    t0 = time.perf_counter()
    meta_train(learner, task, train_set.images, train_cfg, run_dir=root / kind, val=val.images, progress=False,
               max_seconds=cfg["max_seconds"])
    seconds = time.perf_counter() - t0
    records = read_metrics(root / kind / "metrics.jsonl")
    return learner, {"train_seconds": round(seconds, 1), "outer_steps": records[-1]["step"],
                     "params": sum(p.numel() for p in learner.parameters()),
                     "field_params": count_parameters(learner.field),
                     "val_curve": [[r["step"], round(r["val_psnr"], 3)] for r in records if "val_psnr" in r],
                     "learner": learner_record(kind, learner), "train": train_cfg.to_dict()}


def median_seconds(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/transinr.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = transinr_settings(args.quick)
    steps = [s for s in STEPS if s <= max(cfg["steps"])]
    train_set, val, test = datasets(cfg)
    task = image_task(cfg)
    batch = task.batch(test.images)
    root = Path(tempfile.mkdtemp(prefix="transinr_"))
    psnr, info = {}, {}

    print("training transinr ...", flush=True)
    hyper, info["transinr"] = train("transinr", cfg, train_set, val, root)
    with torch.no_grad():
        init = hyper.signal_init(task, batch)
    for lr in cfg["test_lrs"]:
        res = fit(task, hyper.field, init, batch, max(steps), optimizer="adam", lr=lr, record=steps)
        psnr[f"transinr_adam_{lr:g}"] = curve(res, len(steps))
    psnr["transinr"] = psnr[f"transinr_adam_{hyper.config.test_lr:g}"]

    print("training maml ...", flush=True)
    maml, info["maml"] = train("maml", cfg, train_set, val, root)
    rule = maml.test_rule()
    res = fit(task, maml.field, maml.signal_init(task, batch), batch, max(steps), record=steps,
              **rule.fit_options(task, maml.field))
    psnr["maml"] = curve(res, len(steps))

    print("random init ...", flush=True)
    random_field = build_field(FieldConfig(**{**cfg["field"], "seed": 1}))
    per_lr = {lr: curve(fit(task, random_field, field_params(random_field), batch, max(steps), optimizer="adam",
                            lr=lr, record=steps), len(steps)) for lr in RANDOM_LRS}
    psnr["random"] = [max(c[i] for c in per_lr.values()) for i in range(len(steps))]

    one = batch.signals(slice(0, 1))

    def encode():
        with torch.no_grad():
            hyper.signal_init(task, one)

    def adapt():
        fit(task, maml.field, maml.signal_init(task, one), one, maml.config.inner_steps, optimizer="sgd",
            lr=maml.config.inner_lr)

    encode_s, adapt_s = median_seconds(encode), median_seconds(adapt)
    k = maml.config.inner_steps
    result = {
        "steps": steps,
        "psnr": psnr,
        "encode_seconds": encode_s,
        "maml_adapt_seconds": adapt_s,
        "maml_inner_steps": k,
        "encode_speedup": adapt_s / encode_s,
        "train_seconds": {k_: v["train_seconds"] for k_, v in info.items()},
        "gap_to_maml_after_k_db": psnr["transinr"][0] - psnr["maml"][steps.index(k)] if k in steps else None,
        "zero_step_gain_over_maml_db": psnr["transinr"][0] - psnr["maml"][0],
        "learners": info,
        "threads": args.threads,
        "config": {**cfg, "random_lrs": list(RANDOM_LRS), "quick": args.quick},
        "machine": machine(),
    }
    write_json(args.out, result)
    print(f"\nheld-out PSNR (dB), {len(test)} signals at {cfg['resolution']}px, {args.threads} threads")
    print(f"{'method':>22} | " + " ".join(f"{s:>6}" for s in steps))
    for name, ys in psnr.items():
        print(f"{name:>22} | " + " ".join(f"{y:6.2f}" for y in ys))
    print(f"encode {encode_s * 1e3:.1f} ms vs MAML {k}-step adapt {adapt_s * 1e3:.1f} ms ({adapt_s / encode_s:.1f}x); "
          f"train seconds {result['train_seconds']}")


if __name__ == "__main__":
    main()
