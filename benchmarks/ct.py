"""Benchmark: CT from sparse views — a meta-learned field vs a random-init field, FBP and SART.

    python benchmarks/ct.py [--quick] --out benchmarks/results/ct.json

Meta-trains a field with Reptile on 64^2 procedural ellipse phantoms (600 outer steps with
``--quick``, 4000 otherwise, cosine-decayed outer lr, capped by a CPU-time budget), then
reconstructs held-out phantoms (a seed never used in training or validation) from 1, 2, 4, 8, 16
and 32 parallel-beam views evenly spread over 180 degrees, 64^2 with ``--quick``, 128^2 otherwise
(the field is resolution-free: the same learned init and step sizes, observed at the test size).
Every method's settings are picked per view count on validation phantoms (another unseen seed),
never on the test ones, and recorded under ``choices``:

- meta: from the learned init, the learner's rule (Reptile's inner SGD step) or Adam (its learning
  rate picked on validation at 8 views), and the number of test-time steps;
- random: the same field from a random init, Adam: the learning rate (picked the same way), then
  the number of steps;
- fbp: ``skimage.transform.iradon``'s filter;
- sart: ``skimage.transform.iradon_sart``'s iteration count, relaxation, and clip to [0, 1] or none.

PSNR and SSIM are measured on the image inside the reconstruction circle (PSNR over the pixels
inside it; SSIM on images zeroed outside it, where the phantoms are zero): a scanner measures
nothing outside that circle, and FBP and SART return zeros there. ``rows`` holds one entry per
(views, method); ``results/ct.png`` shows reconstructions of test phantoms.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from metainr import FieldConfig, TrainConfig, build_field, build_learner, count_parameters, fit  # noqa: E402
from metainr.data.ct import ellipse_phantoms, view_angles  # noqa: E402
from metainr.functional import field_function, field_params  # noqa: E402
from metainr.plot import plot_image_grid  # noqa: E402
from metainr.disk import load_tensors  # noqa: E402
from metainr.tasks import CTTask  # noqa: E402
from metainr.tasks.ct_baselines import FBP_FILTERS, circle_psnr, circle_ssim, fbp, sart  # noqa: E402
from metainr.tasks.ct_geometry import radon  # noqa: E402
from metainr.train import meta_train, read_metrics  # noqa: E402

VIEWS = [1, 2, 4, 8, 16, 32]
METHODS = ("meta", "random", "fbp", "sart")
SEEDS = {"train": 1, "val": 2, "test": 3}  # phantom seeds: three disjoint sets of objects
PLOT_VIEWS = (2, 8, 32)


def settings(quick: bool, smoke: bool = False) -> dict:
    """Everything that defines a run (stored as ``config`` in the JSON).

    The field is resolution-free, so the full run meta-trains on 64^2 phantoms (4x the outer steps
    that 128^2 would allow in the same time) and is tested on 128^2 ones. The SIREN's frequency
    ``w0`` is low (10, not the usual 30): from 4-8 views a w0=30 field fills the unobserved
    directions with fine streaks, and a random-init w0=10 field reconstructs 1-9 dB better (64^2,
    4-8 views, measured before the run) -- the random baseline uses the same field. Reptile (12
    plain SGD steps, learnit's CT recipe) gave a better prior than MAML or Meta-SGD with 3 steps in
    600-step trials. Test-time budgets are capped (300 SGD steps with the learned init's rule, 1000
    Adam steps, 100 SART iterations); fitting 2 validation + 6 test phantoms at every view count
    still takes about an hour on 2 cores (67 minutes in the committed run). ``smoke`` (a hidden
    option) is a seconds-long run of every code path at 32^2, meaningless as a measurement.
    """
    field = dict(kind="siren", out_dim=1, width=64, depth=4, w0=10.0, w0_first=10.0, output_offset=0.1)
    learner = dict(kind="reptile", inner_steps=12, inner_lr=3e-2, chunk_coords=1 << 20)
    common = dict(field=field, learner=learner, train_size=64, train_views=[1, 32], batch_size=4, outer_lr=1e-3,
                  schedule="cosine", eval_every=100, n_train_val=6, val_views=[2, 8], eval_steps=50,
                  random_lr_views=8, adam_lrs=[1e-3, 3e-3], sart_clips=[None, [0.0, 1.0]],
                  meta_steps=[0, 1, 2, 5, 12, 20, 50, 100, 200, 300], adam_steps=[10, 20, 50, 100, 200, 300, 500, 1000],
                  sart_relaxations=[0.5], sart_iterations=[1, 2, 5, 10, 20, 50, 100], views=VIEWS)
    if smoke:
        return dict(common, field=dict(field, width=16, depth=3), learner=dict(learner, inner_steps=2),
                    train_size=32, train_views=[1, 8], eval_every=2, n_train_val=2, eval_steps=3, adam_lrs=[1e-3],
                    sart_clips=[None], meta_steps=[0, 2, 5], adam_steps=[5, 10], sart_iterations=[1, 2],
                    views=[2, 8], size=32, n_train=16, n_val=1, n_test=2, train_steps=4, train_cpu_seconds=120)
    if quick:
        return dict(common, size=64, n_train=1000, n_val=2, n_test=4, train_steps=600, train_cpu_seconds=900)
    return dict(common, size=128, n_train=2000, n_val=2, n_test=6, train_steps=4000, train_cpu_seconds=45 * 60)


def build(cfg: dict, seed: int = 0):
    """The benchmark's field (a fresh one per seed) and the learner around it."""
    field = build_field(FieldConfig(**{**cfg["field"], "seed": seed}))
    options = dict(cfg["learner"])
    return field, build_learner(field, options.pop("kind"), **options)


def train_prior(cfg: dict, run_dir: Path) -> tuple[object, dict]:
    """Meta-train the field on ``train_size`` phantoms for ``train_steps`` outer steps (cosine
    decay of the outer lr over them), or until ``train_cpu_seconds`` of CPU time (this process, all
    threads) if that comes first; every ``eval_every`` steps the init is scored on ``n_train_val``
    validation phantoms (``eval_steps`` test steps from ``val_views`` views) and the best is kept."""
    size = cfg["train_size"]
    lo, hi = cfg["train_views"]
    task = CTTask(resolution=size, min_views=lo, max_views=hi, score_image=True, val_views=tuple(cfg["val_views"]))
    train = ellipse_phantoms(cfg["n_train"], size, seed=SEEDS["train"])
    val = ellipse_phantoms(cfg["n_train_val"], size, seed=SEEDS["val"])
    field, learner = build(cfg)
    train_cfg = TrainConfig(steps=cfg["train_steps"], batch_size=cfg["batch_size"], outer_lr=cfg["outer_lr"],
                            schedule=cfg["schedule"], eval_every=cfg["eval_every"], eval_steps=cfg["eval_steps"],
                            checkpoint_every=cfg["eval_every"], log_every=10)
    t0, cpu0 = time.perf_counter(), time.process_time()
    # meta_train returns with the best validated init loaded into the learner
    meta_train(learner, task, train, train_cfg, run_dir=run_dir, val=val, progress=False,
               info={"source": "ct-phantoms", "count": cfg["n_train"], "seed": SEEDS["train"]},
               max_seconds=cfg["train_cpu_seconds"], clock=time.process_time)
    records = read_metrics(run_dir / "metrics.jsonl")
    done = max((r["step"] for r in records if "step" in r), default=0)
    best = run_dir / "best.safetensors"
    info = {"outer_steps": done, "best_step": load_tensors(best)[1]["step"] if best.is_file() else done,
            "train_cpu_seconds": round(time.process_time() - cpu0, 1),
            "train_wall_seconds": round(time.perf_counter() - t0, 1), "train_size": size,
            "val_curve": [[r["step"], round(r["val_psnr"], 3)] for r in records if "val_psnr" in r],
            "field_params": count_parameters(field), "learner": learner.config.to_dict(), "train": train_cfg.to_dict()}
    return learner, info


def pick(val_scores: dict, key_name: str) -> tuple:
    """The setting with the best mean validation PSNR."""
    best = max(val_scores, key=lambda k: val_scores[k])
    return best, {key_name: best, "val_psnr": round(val_scores[best], 3)}


def evaluate(cfg: dict, learner, val: torch.Tensor, test: torch.Tensor) -> tuple[list, dict, dict]:
    """Every method at every view count: settings picked on ``val``, scored on ``test``."""
    both = torch.cat([val, test])
    task = CTTask(resolution=cfg["size"])  # the learned field, observed at the test size
    n_val = len(val)
    rows, choices, shown = [], {m: {} for m in METHODS}, {}
    rule = learner.test_rule()
    meta_field, meta_init = learner.field, {n: p.detach() for n, p in learner.init_params().items()}
    random_field, _ = build(cfg, seed=1)
    random_init = {n: p.detach() for n, p in field_params(random_field).items()}

    def fitted(field, init, images, angles, steps, optimizer, lr) -> dict:
        """step -> (PSNR (B,), SSIM (B,)) of fits of ``images`` scanned at ``angles``, at every step in ``steps``."""
        result = fit(task, field, init, task.scan(images, angles), max(steps), optimizer=optimizer, lr=lr,
                     record=steps, metrics=("psnr", "ssim"))
        return {s: (result.metrics["psnr"][:, i], result.metrics["ssim"][:, i]) for i, s in enumerate(result.steps)}

    def images_at(field, init, angles, steps, optimizer, lr) -> torch.Tensor:
        """The first 4 test images fitted ``steps`` steps (for the figure; fits are deterministic)."""
        batch = task.scan(test[:4], angles)
        result = fit(task, field, init, batch, steps, optimizer=optimizer, lr=lr, metrics=())
        return task.reconstruct(field_function(field), result.params, batch)

    def scores(images: torch.Tensor) -> tuple:
        return circle_psnr(images, both), circle_ssim(images, both)

    def val_psnr(score: tuple) -> float:
        return float(score[0][:n_val].mean())

    # each init's Adam learning rate: the best on the validation phantoms alone (any step count) at
    # ``random_lr_views`` views, then used at every view count
    angles = view_angles(cfg["random_lr_views"])
    adam_lr = {}
    for name, field, init in (("meta", meta_field, meta_init), ("random", random_field, random_init)):
        lr_scores = {}
        for lr in cfg["adam_lrs"]:
            runs = fitted(field, init, val, angles, cfg["adam_steps"], "adam", lr)
            lr_scores[lr] = max(float(psnr.mean()) for psnr, _ in runs.values())
        adam_lr[name] = max(lr_scores, key=lambda lr: lr_scores[lr])
        choices[f"{name}_adam_lr"] = {"views": cfg["random_lr_views"], "picked": adam_lr[name],
                                      "val_psnr": {str(k): round(x, 3) for k, x in lr_scores.items()}}
    random_lr = adam_lr["random"]

    for v in cfg["views"]:
        angles = view_angles(v)
        sinograms = radon(both, angles)
        t0 = time.perf_counter()
        results, settings_of = {}, {}
        # meta: from the learned init, the learner's own rule (its SGD step sizes) or Adam at the
        # learning rate picked above; the rule and the step count are picked on validation
        grid = {}
        for name, opt, lr, steps in (("learned", rule.optimizer, rule.lrs, cfg["meta_steps"]),
                                     ("adam", "adam", adam_lr["meta"], cfg["adam_steps"])):
            runs = fitted(meta_field, meta_init, both, angles, steps, opt, lr)
            grid.update({(name, s): sc for s, sc in runs.items()})
        (name, steps), choice = pick({k: val_psnr(sc) for k, sc in grid.items()}, "rule_steps")
        choices["meta"][v] = {"rule": name, "steps": steps, "val_psnr": choice["val_psnr"]}
        results["meta"] = grid[(name, steps)]
        opt, lr = (rule.optimizer, rule.lrs) if name == "learned" else ("adam", adam_lr["meta"])
        settings_of["meta"] = dict(field=meta_field, init=meta_init, steps=steps, optimizer=opt, lr=lr)
        # random init: Adam at the learning rate picked above, the step count picked on validation
        runs = fitted(random_field, random_init, both, angles, cfg["adam_steps"], "adam", random_lr)
        steps, choice = pick({s: val_psnr(sc) for s, sc in runs.items()}, "steps")
        choices["random"][v] = {"lr": random_lr, **choice}
        results["random"] = runs[steps]
        settings_of["random"] = dict(field=random_field, init=random_init, steps=steps, optimizer="adam", lr=random_lr)
        # FBP: the filter picked on validation
        images = {f: fbp(sinograms, angles, f) for f in FBP_FILTERS}
        grid = {f: scores(im) for f, im in images.items()}
        name, choices["fbp"][v] = pick({f: val_psnr(sc) for f, sc in grid.items()}, "filter")
        results["fbp"], shown_fbp = grid[name], images[name]
        # SART: (relaxation, clip, iterations) picked on validation
        images = {}
        for relax in cfg["sart_relaxations"]:
            for clip in cfg["sart_clips"]:
                runs = sart(sinograms, angles, max(cfg["sart_iterations"]), relaxation=relax, clip=clip,
                            record=cfg["sart_iterations"])
                images.update({(relax, str(clip), it): im for it, im in runs.items()})
        grid = {k: scores(im) for k, im in images.items()}
        (relax, clip, its), choice = pick({k: val_psnr(sc) for k, sc in grid.items()}, "setting")
        choices["sart"][v] = {"relaxation": relax, "clip": clip, "iterations": its, "val_psnr": choice["val_psnr"]}
        results["sart"] = grid[(relax, clip, its)]
        for method in METHODS:
            psnr, ssim = results[method]
            rows.append({"views": v, "method": method, "psnr": round(float(psnr[n_val:].mean()), 3),
                         "ssim": round(float(ssim[n_val:].mean()), 4)})
        if v in PLOT_VIEWS:
            shown[v] = {"meta": images_at(angles=angles, **settings_of["meta"]),
                        "random": images_at(angles=angles, **settings_of["random"]),
                        "fbp": shown_fbp[n_val:], "sart": images[(relax, clip, its)][n_val:]}
        print(f"  {v:>2} views ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{r['method']} {r['psnr']:.2f}" for r in rows[-len(METHODS):]), flush=True)
    return rows, choices, shown


def plot(shown: dict, test: torch.Tensor, path: str | Path, views=PLOT_VIEWS, n: int = 4) -> None:
    """Rows: the true phantoms, then each method at a few view counts."""
    grid = {"truth": test[:n, ..., None]}
    for v in (v for v in views if v in shown):
        for m in METHODS:
            grid[f"{m} {v}v"] = shown[v][m][:n, ..., None]
    plot_image_grid(grid, path)


def print_table(rows: list[dict], views: list[int] = VIEWS) -> None:
    print("\ntest PSNR (dB) inside the reconstruction circle / SSIM")
    print(f"{'views':>5} | " + " ".join(f"{m:>14}" for m in METHODS))
    for v in views:
        cells = {r["method"]: r for r in rows if r["views"] == v}
        print(f"{v:>5} | " + " ".join(f"{cells[m]['psnr']:7.2f} {cells[m]['ssim']:.3f}" for m in METHODS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^2 and a short meta-training (a few minutes)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # seconds: every code path, no result
    parser.add_argument("--out", default="benchmarks/results/ct.json")
    parser.add_argument("--png", default=None, help="reconstruction grid (default: the --out path with .png)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick, args.smoke)
    t_start = time.perf_counter()
    print(f"meta-training on {cfg['n_train']} phantoms of {cfg['train_size']}^2 for {cfg['train_cpu_seconds']} "
          f"CPU-seconds or {cfg['train_steps']} outer steps ...", flush=True)
    learner, info = train_prior(cfg, Path(tempfile.mkdtemp(prefix="ct_")))
    print(f"  {info['outer_steps']} outer steps in {info['train_wall_seconds']:.0f} s; best validation PSNR at step "
          f"{info['best_step']}; curve {info['val_curve']}", flush=True)
    val = ellipse_phantoms(cfg["n_val"], cfg["size"], seed=SEEDS["val"])
    test = ellipse_phantoms(cfg["n_test"], cfg["size"], seed=SEEDS["test"])
    print("reconstructing validation + test phantoms ...", flush=True)
    rows, choices, shown = evaluate(cfg, learner, val, test)
    png = args.png or str(Path(args.out).with_suffix(".png"))
    plot(shown, test, png)
    result = {
        "rows": rows,
        "choices": choices,
        "views": cfg["views"],
        "size": cfg["size"],
        "meta_training": info,
        "psnr_region": "inside the reconstruction circle (radius size//2 pixels about pixel size//2, scikit-image's)",
        "ssim_region": "whole image, reconstructions zeroed outside the circle (the phantoms are zero there)",
        "angles": "views evenly over [0, 180) degrees starting at 0; parallel beam, one detector per pixel",
        "config": {**cfg, "quick": args.quick, "seeds": SEEDS},
        "machine": machine(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "figure": png,
    }
    write_json(args.out, result)
    print_table(rows, cfg["views"])
    print(f"total {result['total_seconds']:.0f} s; wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
