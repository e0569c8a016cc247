"""Benchmark: Meta-SparseINR vs random pruning, dense-narrow and scratch at equal parameter count.

    python benchmarks/sparse.py [--quick] --out benchmarks/results/sparse.json

Dense MAML meta-training, then R rounds of pruning 20% of the remaining weights + more
meta-training (magnitude = meta_sparse, random = random_prune; both start from the same dense
phase: one trainer run each, the same seeds and data).
dense_narrow meta-learns a narrower dense field with the same parameter count and the same
number of outer steps; scratch fits that narrow field from a random init. Every init is tested
with the paper's two protocols (2 SGD steps lr 1e-2; 100 Adam steps lr 1e-4) on held-out faces.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from metainr import (FieldConfig, ImageTask, PruneConfig, TrainConfig, build_field, build_learner,  # noqa: E402
                     count_parameters, density, faces, fit, iterative_pruning, mean_psnr, meta_train, narrow_width)
from metainr.compact import export_compact  # noqa: E402
from metainr.fields import nonzero_parameters  # noqa: E402
from metainr.functional import field_params  # noqa: E402
from metainr.disk import save_tensors  # noqa: E402

TASK = ImageTask(channels=1)  # grey faces


def settings(quick: bool) -> dict:
    return dict(data="faces", resolution=25, n_val=10,
                field=FieldConfig(out_dim=1, width=32 if quick else 64, depth=4, sparse=True).to_dict(),
                inner_steps=2, inner_lr=1e-2, outer_lr=1e-3, batch_size=8,
                dense_steps=200 if quick else 1000, round_steps=50 if quick else 200,
                rounds=3 if quick else 10, fraction=0.2,
                protocols={"psnr_2sgd": {"optimizer": "sgd", "lr": 1e-2, "steps": 2},
                           "psnr_100adam": {"optimizer": "adam", "lr": 1e-4, "steps": 100}})


def evaluate(field, init, test, protocols) -> tuple[dict, dict]:
    """PSNR of both protocols, and the params fitted by the Adam protocol (for export)."""
    out, fitted = {}, None
    batch = TASK.batch(test.images)
    for key, p in protocols.items():
        res = fit(TASK, field, init, batch, p["steps"], optimizer=p["optimizer"], lr=p["lr"])
        out[key] = mean_psnr(res.psnr[:, -1])
        if p["optimizer"] == "adam":
            fitted = {n: t[0] for n, t in res.params.items()}
    return out, fitted


def stored_bytes(field, params, tmp: Path) -> int:
    """Bytes on disk of one fitted signal: compact format for sparse fields, safetensors for dense."""
    path = tmp / "signal.safetensors"
    if field.config.sparse:
        return export_compact(path, field, params)
    save_tensors(path, params, {"field": field.config.to_dict()})
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/sparse.json")
    parser.add_argument("--plot", default=None, help="PSNR-vs-density PNG (default: next to --out)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    t0 = time.perf_counter()
    full_train = faces("train", cfg["resolution"])
    val, train = full_train.subset(slice(0, cfg["n_val"])), full_train.subset(slice(cfg["n_val"], None))
    test = faces("test", cfg["resolution"])
    values_per_signal = test.values[0].numel()
    tmp = Path(tempfile.mkdtemp(prefix="sparse_"))
    field_cfg = FieldConfig(**cfg["field"])
    learner_options = dict(inner_steps=cfg["inner_steps"], inner_lr=cfg["inner_lr"])
    train_cfg = TrainConfig(steps=cfg["dense_steps"], batch_size=cfg["batch_size"], outer_lr=cfg["outer_lr"],
                            eval_every=max(cfg["round_steps"] // 2, 1), eval_steps=2, log_every=50)
    rows = []

    def add_row(method: str, field, init, target_density: float, steps: int) -> None:
        scores, fitted = evaluate(field, init, test, cfg["protocols"])
        params = nonzero_parameters(field) if field.config.sparse else count_parameters(field)
        nbytes = stored_bytes(field, fitted, tmp)
        rows.append({"method": method, "density": target_density, "params": params, **scores,
                     "bytes_per_signal": nbytes, "bits_per_value": 8 * nbytes / values_per_signal,
                     "outer_steps": steps, "width": field.config.width})
        print(f"  {method:>13} density {target_density:.3f}: {params:6d} params, 2sgd {scores['psnr_2sgd']:.2f}, "
              f"100adam {scores['psnr_100adam']:.2f}, {nbytes} B", flush=True)

    print("dense meta-training ...", flush=True)
    dense = build_learner(build_field(field_cfg), "maml", **learner_options)
    meta_train(dense, TASK, train.images, train_cfg, run_dir=tmp / "dense", val=val.images, progress=False)
    targets = {}
    for method, prune_method in (("meta_sparse", "magnitude"), ("random_prune", "random")):
        print(f"{method} ...", flush=True)
        learner = copy.deepcopy(dense)
        prune_cfg = PruneConfig(rounds=cfg["rounds"], fraction=cfg["fraction"], steps=cfg["round_steps"],
                                method=prune_method)

        def on_round(r: int, lrn, method=method) -> None:
            init = {n: p.detach().clone() for n, p in lrn.init_params().items()}
            targets.setdefault(r, nonzero_parameters(lrn.field))
            add_row(method, lrn.field, init, (1 - cfg["fraction"]) ** r,
                    cfg["dense_steps"] + r * cfg["round_steps"])

        # round 0 is the shared dense phase: the schedule runs with 0 dense steps from it
        iterative_pruning(learner, TASK, train.images, dataclasses.replace(train_cfg, steps=0), prune_cfg,
                          val=val.images, on_round=on_round, progress=False)
        rows[-1]["final_density_measured"] = density(learner.field)

    print("dense_narrow and scratch ...", flush=True)
    for r in range(cfg["rounds"] + 1):
        width = narrow_width(field_cfg, targets[r])
        narrow_cfg = dataclasses.replace(field_cfg, width=width, sparse=False)
        steps = cfg["dense_steps"] + r * cfg["round_steps"]
        narrow = build_learner(build_field(narrow_cfg), "maml", **learner_options)
        meta_train(narrow, TASK, train.images, dataclasses.replace(train_cfg, steps=steps), val=val.images,
                   progress=False)
        add_row("dense_narrow", narrow.field, {n: p.detach() for n, p in narrow.init_params().items()},
                (1 - cfg["fraction"]) ** r, steps)
        scratch_field = build_field(dataclasses.replace(narrow_cfg, seed=1))
        add_row("scratch", scratch_field, field_params(scratch_field), (1 - cfg["fraction"]) ** r, 0)

    result = {"rows": rows, "values_per_signal": values_per_signal,
              "dense_params": count_parameters(build_field(dataclasses.replace(field_cfg, sparse=False))),
              "threads": args.threads, "config": {**cfg, "quick": args.quick}, "machine": machine(),
              "total_seconds": round(time.perf_counter() - t0, 1)}
    at10 = {row["method"]: row for row in rows if abs(row["density"] - 0.8 ** min(cfg["rounds"], 10)) < 1e-9}
    result["at_lowest_density"] = {m: {k: at10[m][k] for k in ("params", "psnr_2sgd", "psnr_100adam")} for m in at10}
    write_json(args.out, result)
    plot(rows, args.plot or str(Path(args.out).with_suffix(".png")))
    print_table(rows)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("psnr_2sgd", "psnr_100adam"), ("2 SGD steps, lr 1e-2", "100 Adam steps, lr 1e-4")):
        for method in ("meta_sparse", "random_prune", "dense_narrow", "scratch"):
            pts = sorted((r["density"], r[key]) for r in rows if r["method"] == method)
            ax.plot(*zip(*pts), marker="o", ms=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of the dense field's weights)")
        ax.set_ylabel("held-out PSNR (dB)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'method':>13} {'density':>8} {'params':>7} {'2sgd':>7} {'100adam':>8} {'bytes':>7}")
    for r in sorted(rows, key=lambda r: (-r["density"], r["method"])):
        print(f"{r['method']:>13} {r['density']:8.3f} {r['params']:7d} {r['psnr_2sgd']:7.2f} {r['psnr_100adam']:8.2f} "
              f"{r['bytes_per_signal']:7d}")


if __name__ == "__main__":
    main()
