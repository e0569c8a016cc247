"""Benchmark: fields on the sphere and signed distance fields (2D, 3D), meta vs random vs TransINR.

    python benchmarks/shapes.py [--quick] [--tasks sphere,sdf2d,sdf3d] --out benchmarks/results/shapes.json

For each task, on its bundled class (climate maps, font glyphs, procedural solids) with the
field, learner and outer lr of the task's preset (what ``metainr meta-train --task T`` uses):
a learned init (a CPU-time budget of meta-training), TransINR (the same budget) and a random
init are fitted to held-out signals; ``rows`` hold PSNR (and IoU, Chamfer for 3D) after
[0, 2, 5, 10, 100] steps; the random init is the best of an Adam lr grid at each step. For 2D
SDFs, ``sparse`` rows compare Meta-SparseINR (magnitude pruning of the meta-learned field, 10
rounds of 20%) with random pruning, a dense-narrow field meta-learned at the same parameter
count and a narrow field from scratch, under the paper's two test protocols. PNGs beside --out.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepCounter, learner_record, machine, write_json  # noqa: E402

from metainr import (FieldConfig, PruneConfig, TrainConfig, build_field, build_learner, build_task,  # noqa: E402
                     count_parameters, fit, iterative_pruning, meta_train, narrow_width)
from metainr.fields import nonzero_parameters  # noqa: E402
from metainr.functional import field_function, field_params  # noqa: E402

STEPS = [0, 2, 5, 10, 100]
RANDOM_LRS = (3e-4, 1e-3, 3e-3)
DATA = {"sphere": "climate", "sdf2d": "glyphs", "sdf3d": "shapes"}
METRICS = {"sphere": ("psnr",), "sdf2d": ("psnr", "iou"), "sdf3d": ("psnr", "iou", "chamfer")}
PROTOCOLS = {"psnr_2sgd": {"optimizer": "sgd", "lr": 1e-2, "steps": 2},
             "psnr_100adam": {"optimizer": "adam", "lr": 1e-4, "steps": 100}}


def settings(quick: bool) -> dict:
    return {"meta_seconds": 45 if quick else 240, "transinr_seconds": 30 if quick else 150,
            "max_outer_steps": 100_000, "batch_size": 8, "transinr_batch": 16, "transinr_lr": 3e-4,
            "hyper": dict(hyper_dim=128, hyper_depth=4, hyper_heads=4, n_groups=32),
            "task_options": {"sphere": {"count": 120 if quick else 400, "val_count": 16},
                             "sdf2d": {"count": 300 if quick else 1000, "val_count": 16},
                             "sdf3d": {"count": 60 if quick else 300, "val_count": 12}},
            "sparse": {"rounds": 3 if quick else 10, "fraction": 0.2, "round_steps": 20 if quick else 150,
                       "dense_seconds_from": "meta"}}


def _mean(t: torch.Tensor, cap: float = 60.0) -> float:
    """Mean of the finite values (each capped at ``cap``; NaN when none is finite)."""
    finite = t[torch.isfinite(t)].float()
    return float(finite.clamp(max=cap).mean()) if finite.numel() else float("nan")


def curves(task, field, init, batch, metrics, **rule) -> tuple[dict[str, list[float]], dict]:
    """Mean metrics at every step of STEPS, and the fitted params at each recorded step."""
    res = fit(task, field, init, batch, max(STEPS), record=STEPS, metrics=metrics, **rule)
    out = {m: [_mean(res.metrics[m][:, i]) if m != "chamfer" else _mean(res.metrics[m][:, i], cap=math.inf)
               for i in range(len(STEPS))] for m in res.metrics}
    if "chamfer" in res.metrics:  # shapes whose fitted field has no surface at all (Chamfer infinite)
        out["chamfer_empty"] = [int((~torch.isfinite(res.metrics["chamfer"][:, i])).sum()) for i in range(len(STEPS))]
    return out, res.params



def params_at(task, field, init, batch, steps: int, **rule) -> dict:
    """The params after ``steps`` steps of a rule (for pictures)."""
    return fit(task, field, init, batch, steps, record=[steps], **rule).params


def field_config(task) -> FieldConfig:
    return type(task).preset.field_config(task)


def train_meta(task, train, cfg: dict, sparse: bool = False):
    """The task preset's learner meta-trained for the CPU-time budget."""
    preset = type(task).preset
    field_cfg = dataclasses.replace(field_config(task), sparse=sparse)
    learner = build_learner(build_field(field_cfg), preset.learner, **preset.learner_options)
    steps = StepCounter()
    t0 = time.process_time()
    meta_train(learner, task, train, TrainConfig(steps=cfg["max_outer_steps"], batch_size=cfg["batch_size"],
               outer_lr=preset.train["outer_lr"], log_every=10**9), progress=False,
               max_seconds=cfg["meta_seconds"], clock=time.process_time, callbacks=[steps])
    return learner, {"cpu_seconds": round(time.process_time() - t0, 1), "outer_steps": steps.done,
                     "learner": learner_record(preset.learner, learner), "field": field_cfg.to_dict(),
                     "params": count_parameters(learner.field)}


def train_transinr(task, train, cfg: dict):
    # the hypernetwork L2-normalises weight rows, which a SIREN's w0-scaled init does not survive
    # (7 dB at 0 steps on 2D SDFs): a positional-encoding ReLU field of the preset's size, as
    # benchmarks/transinr.py uses
    base = field_config(task)
    field_cfg = FieldConfig(kind="pe", in_dim=base.in_dim, out_dim=base.out_dim, width=base.width, depth=base.depth,
                            n_freqs=6, output_offset=0.5)
    tokens, token_dim = task.tokens(task.batch(train[:1])).shape[1:]
    learner = build_learner(build_field(field_cfg), "transinr", tokens=int(tokens), token_dim=int(token_dim),
                            test_optimizer="adam", test_lr=1e-3, **cfg["hyper"])
    steps = StepCounter()
    t0 = time.process_time()
    meta_train(learner, task, train, TrainConfig(steps=cfg["max_outer_steps"], batch_size=cfg["transinr_batch"],
               outer_lr=cfg["transinr_lr"], log_every=10**9), progress=False, max_seconds=cfg["transinr_seconds"],
               clock=time.process_time, callbacks=[steps])
    return learner, {"cpu_seconds": round(time.process_time() - t0, 1), "outer_steps": steps.done,
                     "tokens": int(tokens), "token_dim": int(token_dim), "field": field_cfg.to_dict(),
                     "params": sum(p.numel() for p in learner.parameters())}


def run_task(name: str, cfg: dict, out_dir: Path, rows: list, info: dict) -> dict:
    task = build_task(name, **cfg["task_options"][name])
    t0 = time.perf_counter()
    train, test = task.load(DATA[name], "train"), task.load(DATA[name], "test")
    batch = task.batch(test)
    metrics = METRICS[name]
    info[name] = {"data": DATA[name], "train_signals": len(train), "test_signals": len(test),
                  "data_seconds": round(time.perf_counter() - t0, 1), "task": task.spec()}
    print(f"[{name}] {len(train)} train / {len(test)} test signals ({info[name]['data_seconds']} s)", flush=True)

    def add(init_kind: str, curve: dict, extra: dict | None = None) -> None:
        for i, s in enumerate(STEPS):
            row = {"task": name, "learner": init_kind if init_kind != "meta" else type(task).preset.learner,
                   "init": init_kind, "steps": s, **{m: round(curve[m][i], 4) for m in curve}, **(extra or {})}
            rows.append(row)
        print(f"  {init_kind:>8}: " + ", ".join(f"{m} " + " ".join(f"{v:.3f}" for v in curve[m]) for m in curve),
              flush=True)

    # random init: the best Adam lr at each step
    field = build_field(field_config(task))
    per_lr = {lr: curves(task, field, field_params(field), batch, metrics, optimizer="adam", lr=lr)[0]
              for lr in RANDOM_LRS}
    best: dict[str, list] = {}
    best_lr = []
    for i in range(len(STEPS)):
        lr = max(RANDOM_LRS, key=lambda r: per_lr[r]["psnr"][i])
        best_lr.append(lr)
        for m in per_lr[lr]:
            best.setdefault(m, []).append(per_lr[lr][m][i])
    add("random", best)
    info[name]["random_lr_per_step"] = best_lr
    info[name]["random_per_lr"] = {f"{lr:g}": per_lr[lr] for lr in RANDOM_LRS}

    print(f"[{name}] meta-training ({type(task).preset.learner}) ...", flush=True)
    learner, info[name]["meta"] = train_meta(task, train, cfg, sparse=(name == "sdf2d"))
    rule = learner.test_rule().fit_options(task, learner.field)
    meta_curve, _ = curves(task, learner.field, learner.signal_init(task, batch), batch, metrics, **rule)
    add("meta", meta_curve)

    print(f"[{name}] TransINR ...", flush=True)
    hyper, info[name]["transinr"] = train_transinr(task, train, cfg)
    with torch.no_grad():
        hyper_init = hyper.signal_init(task, batch)
    t_curve, _ = curves(task, hyper.field, hyper_init, batch, metrics, **hyper.test_rule().fit_options(task, hyper.field))
    add("transinr", t_curve)

    pictures(name, task, batch, field, learner, hyper, out_dir)
    return {"task": task, "train": train, "batch": batch, "learner": learner}


def pictures(name: str, task, batch, random_field, learner, hyper, out_dir: Path) -> None:
    """Truth / random / meta (/ TransINR) of a few held-out signals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = batch.signals(slice(0, 3))
    with torch.no_grad():
        hyper_init = hyper.signal_init(task, show)
    adam = dict(optimizer="adam", lr=1e-3)
    start = field_params(random_field)
    meta_rule = learner.test_rule().fit_options(task, learner.field)
    inits = {"random (100 Adam)": (random_field, params_at(task, random_field, start, show, 100, **adam)),
             "random (2 Adam)": (random_field, params_at(task, random_field, start, show, 2, **adam)),
             "meta (2 steps)": (learner.field, params_at(task, learner.field, learner.signal_init(task, show), show, 2,
                                                         **meta_rule)),
             "TransINR (0 steps)": (hyper.field, hyper_init)}
    if name == "sdf3d":
        return turntables(task, show, inits, out_dir / "shapes_sdf3d.png")
    if name == "sphere":
        globes(show, inits, out_dir / "shapes_globes.png")
    with torch.no_grad():
        recon = {k: task.reconstruct(field_function(f), p, show).cpu() for k, (f, p) in inits.items()}
    truth = show.reference.cpu()
    cols = {"truth": truth, **recon}
    fig, axes = plt.subplots(len(show), len(cols), figsize=(2.6 * len(cols), 2.2 * len(show) * (0.6 if name ==
                                                                                                 "sphere" else 1)))
    for r in range(len(show)):
        for c, (title, images) in enumerate(cols.items()):
            ax = axes[r, c]
            img = images[r].reshape(images.shape[1], images.shape[2]).numpy()
            if name == "sphere":
                ax.imshow(img, cmap="coolwarm", vmin=0, vmax=1, extent=(0, 360, -90, 90))
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
                ax.contour(img, levels=[0.5], colors="red", linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle({"sphere": "held-out climate maps (equirectangular)", "sdf2d": "held-out glyph SDFs (red: zero "
                  "level set)"}[name], fontsize=10)
    fig.savefig(out_dir / f"shapes_{name}.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def globe_points(size: int = 96, lat0: float = 25.0, lon0: float = -30.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-sphere points (size^2, 3) an orthographic camera above (lat0, lon0) degrees sees, and
    the mask (size, size) of pixels on the globe (north up)."""
    la, lo = np.radians(lat0), np.radians(lon0)
    forward = torch.tensor([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])
    east = torch.tensor([-np.sin(lo), np.cos(lo), 0.0])
    north = torch.cross(forward, east, dim=0)
    axis = torch.linspace(-1, 1, size, dtype=torch.float64)
    up, right = torch.meshgrid(-axis, axis, indexing="ij")
    inside = up ** 2 + right ** 2 <= 1
    depth = (1 - up ** 2 - right ** 2).clamp(min=0).sqrt()
    pts = right[..., None] * east + up[..., None] * north + depth[..., None] * forward
    return pts.reshape(-1, 3).float(), inside


def globes(show, inits: dict, path: Path, size: int = 96) -> None:
    """Orthographic globes of held-out maps: the truth looked up on its grid (nearest cell), each
    init's field evaluated at the globe's own 3D points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, inside = globe_points(size)
    truth = show.reference[..., 0]
    h, w = truth.shape[1:]
    lat = torch.asin(pts[:, 2].clamp(-1, 1))
    lon = torch.atan2(pts[:, 1], pts[:, 0]) % (2 * np.pi)
    rows = ((np.pi / 2 - lat) / (np.pi / (h - 1))).round().long().clamp(0, h - 1)
    cols = (lon / (2 * np.pi / w)).round().long() % w
    cells = {"truth": [truth[b, rows, cols] for b in range(len(show))]}
    with torch.no_grad():
        for title, (field, params) in inits.items():
            fn = field_function(field)
            cells[title] = [fn({n: t[b] for n, t in params.items()}, pts)[:, 0] for b in range(len(show))]
    fig, axes = plt.subplots(len(show), len(cells), figsize=(2.2 * len(cells), 2.2 * len(show)))
    for c, (title, values) in enumerate(cells.items()):
        for r, v in enumerate(values):
            img = np.where(inside.numpy(), v.reshape(size, size).clamp(0, 1).numpy(), np.nan)
            axes[r, c].imshow(img, cmap="coolwarm", vmin=0, vmax=1)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.suptitle("held-out climate maps on the globe (fields evaluated at the globe's points)", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def turntables(task, show, inits: dict, path: Path) -> None:
    """Four turntable views of truth (the true SDF grid, trilinear) and of each init's field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid_field(grid: torch.Tensor):
        g = grid[None, None].float()

        def fn(params, coords):  # coords (N, 3) as (x, y, z) = grid axes (0, 1, 2)
            pts = coords.reshape(1, -1, 1, 1, 3).flip(-1)  # grid_sample wants (W, H, D) = axes (2, 1, 0)
            return torch.nn.functional.grid_sample(g, pts, align_corners=True, padding_mode="border").reshape(-1, 1)
        return fn

    rows = []
    with torch.no_grad():
        for b in range(min(2, len(show))):
            line = [task.render(grid_field(show.reference[b]), {"x": show.reference[b]}, 4)]
            for f, p in inits.values():
                line.append(task.render(field_function(f), {n: t[b] for n, t in p.items()}, 4))
            rows.append(line)
    titles = ["truth", *inits]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(4.4 * len(titles), 1.5 * len(rows)), squeeze=False)
    for r, line in enumerate(rows):
        for c, views in enumerate(line):
            ax = axes[r, c]
            ax.imshow(np.concatenate(list(views.clamp(0, 1).cpu().numpy()), axis=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.suptitle("held-out solids, four turntable views each (sphere-traced fields)", fontsize=10, y=1.02)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def sparse_rows(state: dict, cfg: dict, info: dict) -> list[dict]:
    """Meta-SparseINR on 2D SDFs at about 10% density vs random pruning, dense-narrow, scratch."""
    task, train, batch, dense = state["task"], state["train"], state["batch"], state["learner"]
    sp = cfg["sparse"]
    out = []
    preset = type(task).preset

    def score(method: str, field, init, target_density: float, outer_steps: int) -> None:
        res = {}
        for key, p in PROTOCOLS.items():
            r = fit(task, field, init, batch, p["steps"], optimizer=p["optimizer"], lr=p["lr"])
            res[key] = round(_mean(r.psnr[:, -1]), 4)
        params = nonzero_parameters(field) if field.config.sparse else count_parameters(field)
        out.append({"method": method, "density": round(target_density, 4), "params": params, **res,
                    "outer_steps": outer_steps, "width": field.config.width})
        print(f"  {method:>13} density {target_density:.3f}: {params:6d} params, 2sgd {res['psnr_2sgd']:.2f}, "
              f"100adam {res['psnr_100adam']:.2f}", flush=True)

    dense_steps = info["sdf2d"]["meta"]["outer_steps"]
    score("meta_sparse", dense.field, {n: p.detach() for n, p in dense.init_params().items()}, 1.0, dense_steps)
    final = {}
    for method, how in (("meta_sparse", "magnitude"), ("random_prune", "random")):
        learner = copy.deepcopy(dense)
        train_cfg = TrainConfig(steps=0, batch_size=cfg["batch_size"], outer_lr=preset.train["outer_lr"],
                                log_every=10**9)
        iterative_pruning(learner, task, train, train_cfg, PruneConfig(rounds=sp["rounds"], fraction=sp["fraction"],
                          steps=sp["round_steps"], method=how), progress=False)
        total = dense_steps + sp["rounds"] * sp["round_steps"]
        score(method, learner.field, {n: p.detach() for n, p in learner.init_params().items()},
              (1 - sp["fraction"]) ** sp["rounds"], total)
        final[method] = nonzero_parameters(learner.field)
    field_cfg = field_config(task)
    width = narrow_width(field_cfg, final["meta_sparse"])
    narrow_cfg = dataclasses.replace(field_cfg, width=width, sparse=False)
    total = dense_steps + sp["rounds"] * sp["round_steps"]
    narrow = build_learner(build_field(narrow_cfg), preset.learner, **preset.learner_options)
    meta_train(narrow, task, train, TrainConfig(steps=total, batch_size=cfg["batch_size"],
                                                outer_lr=preset.train["outer_lr"], log_every=10**9), progress=False)
    score("dense_narrow", narrow.field, {n: p.detach() for n, p in narrow.init_params().items()},
          (1 - sp["fraction"]) ** sp["rounds"], total)
    scratch = build_field(dataclasses.replace(narrow_cfg, seed=1))
    score("scratch", scratch, field_params(scratch), (1 - sp["fraction"]) ** sp["rounds"], 0)
    return out


def targets(rows: list[dict], sparse: list[dict]) -> dict:
    def get(task, init, steps, key="psnr"):
        hit = [r[key] for r in rows if r["task"] == task and r["init"] == init and r["steps"] == steps]
        return hit[0] if hit else None

    out = {}
    for task in sorted({r["task"] for r in rows}):
        meta2, rand2 = get(task, "meta", 2), get(task, "random", 2)
        out[f"{task}_meta_minus_random_2_steps_db"] = None if None in (meta2, rand2) else round(meta2 - rand2, 2)
        t0, m0 = get(task, "transinr", 0), get(task, "meta", 0)
        out[f"{task}_transinr_minus_meta_0_steps_db"] = None if None in (t0, m0) else round(t0 - m0, 2)
    if any(r["task"] == "sdf3d" for r in rows):
        out["sdf3d_meta_10_chamfer"] = get("sdf3d", "meta", 10, "chamfer")
        out["sdf3d_random_100_chamfer"] = get("sdf3d", "random", 100, "chamfer")
    low = {r["method"]: r for r in sparse if r["density"] < 1.0}
    if {"meta_sparse", "random_prune", "dense_narrow"} <= set(low):
        out["sdf2d_sparse_density"] = low["meta_sparse"]["density"]
        out["sdf2d_meta_sparse_minus_random_prune_100adam_db"] = round(
            low["meta_sparse"]["psnr_100adam"] - low["random_prune"]["psnr_100adam"], 2)
        out["sdf2d_meta_sparse_minus_dense_narrow_100adam_db"] = round(
            low["meta_sparse"]["psnr_100adam"] - low["dense_narrow"]["psnr_100adam"], 2)
    return out


def merged(path: Path, result: dict, tasks: list[str]) -> dict:
    """``result`` (these ``tasks``) merged into the results already in ``path`` (other tasks kept);
    the per-task run settings are recorded under ``runs``."""
    import json

    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "sparse": [], "info": {}, "runs": {}}
    keep = [r for r in old.get("rows", []) if r["task"] not in tasks]
    sparse = result["sparse"] if "sdf2d" in tasks else old.get("sparse", [])
    runs = {**old.get("runs", {}), **{t: {"config": result["config"], "machine": result["machine"],
                                          "threads": result["threads"], "seconds": result["total_seconds"]}
                                      for t in tasks}}
    out = {**result, "rows": keep + result["rows"], "sparse": sparse, "info": {**old.get("info", {}), **result["info"]},
           "runs": runs}
    out["targets"] = targets(out["rows"], out["sparse"])
    return out


def _json_safe(obj):
    """The result with NaN / infinite numbers as None (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", default="sphere,sdf2d,sdf3d")
    parser.add_argument("--out", default="benchmarks/results/shapes.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round-steps", type=int, default=None, help="outer steps a pruning round (SDF 2D sparse rows)")
    parser.add_argument("--update", action="store_true",
                        help="replace only these tasks' results in --out, keeping the other tasks' (re-read at "
                             "every write, so runs of different tasks may share one file)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    if args.round_steps:
        cfg["sparse"]["round_steps"] = args.round_steps
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, sparse, info = [], [], {}
    result = {"rows": rows, "sparse": sparse, "info": info, "config": {**cfg, "quick": args.quick, "steps": STEPS,
              "random_lrs": RANDOM_LRS, "protocols": PROTOCOLS}, "machine": machine(), "threads": args.threads}
    t0 = time.perf_counter()
    for name in args.tasks.split(","):
        torch.manual_seed(0)
        state = run_task(name, cfg, out.parent, rows, info)
        if name == "sdf2d":
            print("[sdf2d] sparse ...", flush=True)
            sparse.extend(sparse_rows(state, cfg, info))
        result["targets"] = targets(rows, sparse)
        result["total_seconds"] = round(time.perf_counter() - t0, 1)
        # after every task: a partial run keeps what it measured
        write_json(out, _json_safe(merged(out, result, args.tasks.split(",")) if args.update else result))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in result["targets"].items()))


if __name__ == "__main__":
    main()
