"""Benchmark: 3D view synthesis — radiance fields from a meta-learned init vs a random init, from 1 and 25 views.

    python benchmarks/views.py [--quick] [--minutes M] --out benchmarks/results/views.json

learnit's 3D claim on procedural box chairs (an independent analytic renderer makes every ground
truth; :mod:`metainr.data.box_objects`): a NeRF fitted to ONE view of a new object from a random
init does not recover its shape, one fitted from an init meta-learned on many objects of the class
does; with 25 views the learned init gets there in far fewer steps. TransINR builds the field in
one forward pass from tokens of the input view.

Held-out objects (a seed never used in training or validation) are rendered from 25 + 8 random
cameras: 1-view fits see view 0 (``n_test`` objects), 25-view fits views 0-24 (the first
``n_test_25`` of them), and BOTH are scored on the same 8 novel views 25-32 (PSNR over their pixels
per object, SSIM per view; then the mean over objects). Fits
are full-batch (``metainr.fit``): a 1-view fit uses the view's 1,024 rays at every step; a 25-view
fit a fixed random subset of ``rays_25`` of the 25,600 rays of its views (every step of every
method on the same subset), which keeps 500 random-init steps affordable on 2 cores.

- meta: Reptile with the views task's preset (Adam inner steps), meta-trained for ``--minutes`` of
  process CPU time (run with ``--threads 1``: the wall time of a quiet machine; best validated init), fitted with Adam at an lr picked on validation objects
  (never the test ones): the learned rule's inner lr, a third or a tenth of it (1 view), the lr or a
  third (25 views);
- random: the same field from a random init, Adam at the best lr of ``random_lrs`` picked on
  validation chairs, separately for 1 and 25 views (the rotated class reuses the 1-view pick);
- transinr: the hypernetwork's field (0 steps) and Adam refinement (its test rule);
- baselines: the all-background image and the mean training image on the same novel views.

Classes: ``chairs`` (main) and ``chairs-rotated`` (each object turned by a random angle about the
vertical: the gap must survive without a canonical pose). Rows: {class, input_views, learner,
init, steps, novel_psnr, novel_ssim} at step counts fixed in advance. A full run (``--minutes 15``)
takes about 45 minutes on 2 cores: Reptile 15 min on chairs, 10 on rotated chairs, TransINR 10,
the fits the rest; ``results/views.png`` shows a novel view of each test object.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepCounter, learner_record, machine, write_json  # noqa: E402

from metainr import FieldConfig, TrainConfig, build_field, build_learner, count_parameters, fit  # noqa: E402
from metainr.data.box_objects import box_objects  # noqa: E402
from metainr.data.meshes import mesh_objects  # noqa: E402
from metainr.functional import field_function, field_params  # noqa: E402
from metainr.metrics import psnr, ssim  # noqa: E402
from metainr.plot import plot_image_grid  # noqa: E402
from metainr.tasks import Batch, ViewsTask  # noqa: E402
from metainr.train import meta_train, read_metrics  # noqa: E402

CLASSES = {"chairs": ("chairs", False), "chairs-rotated": ("chairs", True), "meshes": ("meshes", False),
           "photos": ("photos", False)}
"""name -> (dataset, rotate): meshes are pybullet_data's random objects (pip install pybullet), photos one
chair under a random lighting per photo (learnit's Phototourism setting)"""
RUNS = "chairs:reptile,chairs:transinr,chairs-rotated:reptile"
INPUT, NOVEL = 25, 8  # held-out objects: views 0-24 are inputs, 25-32 the novel views scored


def settings(minutes: float, quick: bool = False, smoke: bool = False) -> dict:
    """Everything that defines a run (stored as ``config``); ``minutes`` is the chairs Reptile budget,
    rotated chairs and TransINR get two thirds of it each."""
    preset = ViewsTask.preset
    cfg = dict(resolution=32, train_views=25, n_train=500, n_val=2, n_test=4, n_samples=32, rays=256,
               field=dict(preset.field.to_dict(), in_dim=3, out_dim=4), learner=dict(preset.learner_options),
               batch_size=preset.train["batch_size"], outer_lr=preset.train["outer_lr"], eval_every=250,
               eval_steps=16, transinr=dict(hyper_dim=128, hyper_depth=4, hyper_heads=4, n_groups=32),
               transinr_batch=8, transinr_lr=3e-4, random_lrs=[5e-4, 2e-3, 8e-3],
               steps_1=[0, 5, 10, 20, 50, 100], steps_25=[0, 5, 10, 20, 50, 100, 200, 500], meta_steps_25=100,
               rays_25=2048, pick_steps_25=50, n_test_25=2, minutes=minutes,
               seconds={"chairs": 60 * minutes, "chairs-rotated": 40 * minutes, "transinr": 40 * minutes,
                        "meshes": 40 * minutes, "photos": 40 * minutes})
    if quick:
        cfg.update(n_test=2, steps_1=[0, 5, 10, 20, 50], steps_25=[0, 5, 10, 20, 50, 100, 200], rays_25=1024,
                   pick_steps_25=20, eval_every=100)
    if smoke:  # seconds of everything at toy sizes: exercises every code path, measures nothing
        cfg.update(resolution=16, n_train=12, n_val=1, n_test=2, n_samples=8, rays=32, eval_every=50, eval_steps=2,
                   field=dict(cfg["field"], width=32, depth=3, n_freqs=4), learner=dict(cfg["learner"], inner_steps=2),
                   transinr=dict(hyper_dim=32, hyper_depth=1, hyper_heads=2, n_groups=8), transinr_batch=2,
                   random_lrs=[2e-3, 8e-3], steps_1=[0, 2, 5], steps_25=[0, 2, 5], meta_steps_25=2, rays_25=128,
                   pick_steps_25=2, seconds={"chairs": 8, "chairs-rotated": 5, "transinr": 5, "meshes": 5, "photos": 5})
    return cfg


def task_for(cfg: dict, input_views: int = 1, rotate: bool = False) -> ViewsTask:
    return ViewsTask(resolution=cfg["resolution"], views=cfg["train_views"], input_views=input_views, rays=cfg["rays"],
                     n_samples=cfg["n_samples"], rotate=rotate, count=cfg["n_train"], val_count=cfg["n_val"])


def held_out(cfg: dict, name: str, split: str, n: int):
    """n objects of ``split`` seen from INPUT + NOVEL cameras (float32 posed views)."""
    kind, rotate = CLASSES[name]
    if kind == "meshes":
        return mesh_objects(split, n, INPUT + NOVEL, cfg["resolution"], rotate=rotate)
    return box_objects(kind, split, n, INPUT + NOVEL, cfg["resolution"], rotate=rotate)


def one_view(objects):
    """View 0 (the input) and the NOVEL scored views of each object."""
    return objects.select_views([0, *range(INPUT, INPUT + NOVEL)])


def batch_25(cfg: dict, objects) -> Batch:
    """A 25-view fit's batch: a fixed random ``rays_25`` of its input views' rays (seed 0), the
    packed views as reference (scored: the NOVEL views after the INPUT ones)."""
    full = task_for(cfg, INPUT).fit_batch(objects)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(full.query.shape[1], generator=g)[: cfg["rays_25"]] for _ in range(len(full))])
    take = lambda t: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    return Batch(take(full.query), take(full.values), reference=full.reference)


def train(cfg: dict, name: str, learner_name: str, run_dir: Path):
    """Meta-train on ``n_train`` objects of a class for ``seconds[name]`` of wall-clock time, keeping
    the best init on validation (fits from view 0 scored on NOVEL other views)."""
    kind, rotate = CLASSES[name]
    task = task_for(cfg, 1, rotate)
    data = task.load(kind, "train")
    val = one_view(held_out(cfg, name, "val", cfg["n_val"]))
    field = build_field(FieldConfig(**cfg["field"]))
    if learner_name == "transinr":
        tokens = task.tokens(task.batch(data[:1]))
        learner = build_learner(field, "transinr", tokens=tokens.shape[1], token_dim=tokens.shape[2],
                                **cfg["transinr"])
        train_cfg = TrainConfig(steps=10**6, batch_size=cfg["transinr_batch"], outer_lr=cfg["transinr_lr"],
                                eval_every=cfg["eval_every"], eval_steps=0, checkpoint_every=10**6, log_every=50)
    else:
        learner = build_learner(field, learner_name, **cfg["learner"])
        train_cfg = TrainConfig(steps=10**6, batch_size=cfg["batch_size"], outer_lr=cfg["outer_lr"],
                                eval_every=cfg["eval_every"], eval_steps=cfg["eval_steps"], checkpoint_every=10**6,
                                log_every=50)
    steps, seconds = StepCounter(), cfg["seconds"][name if learner_name != "transinr" else "transinr"]
    t0, cpu0 = time.perf_counter(), time.process_time()
    # a CPU-time budget: the same work whatever else runs on the machine (with one thread, the
    # wall time of a quiet machine)
    meta_train(learner, task, data, train_cfg, run_dir=run_dir, val=val, progress=False, callbacks=[steps],
               max_seconds=seconds, clock=time.process_time)
    records = read_metrics(run_dir / "metrics.jsonl")
    val_curve = [[r["step"], round(r["val_psnr"], 3)] for r in records if r.get("val_psnr") is not None]
    info = {"class": name, "learner": learner_record(learner_name, learner), "train": train_cfg.to_dict(),
            "budget_seconds": seconds, "outer_steps": steps.done, "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "val_curve": val_curve,
            "best_step": max(val_curve, key=lambda x: x[1])[0] if val_curve else steps.done,
            "field_params": count_parameters(field), "params": sum(p.numel() for p in learner.parameters())}
    return learner, data, info


def fitted(task, field, init, batch, steps, optimizer, lr) -> dict:
    """Fits of every object of ``batch``: mean novel PSNR / SSIM per recorded step, per-object
    PSNR, and the novel views rendered at the last step."""
    result = fit(task, field, init, batch, max(steps), optimizer=optimizer, lr=lr, record=steps,
                 metrics=("psnr", "ssim"))
    with torch.no_grad():
        views = task.reconstruct(field_function(field), result.params, batch)
    return {"steps": result.steps, "psnr": [round(float(v), 3) for v in result.metrics["psnr"].mean(0)],
            "ssim": [round(float(v), 4) for v in result.metrics["ssim"].mean(0)], "per_object": result.psnr,
            "views": views}


def pick_lr(lrs: list[float], task, field, init, batch, steps) -> tuple[float, dict]:
    """The Adam lr of ``lrs`` whose best validation PSNR over ``steps`` is highest."""
    scores = {lr: max(fitted(task, field, init, batch, steps, "adam", lr)["psnr"]) for lr in lrs}
    best = max(scores, key=scores.get)
    return best, {"picked": best, "val_psnr": {f"{k:g}": round(v, 3) for k, v in scores.items()}, "steps": steps}


def baselines(cfg: dict, batch, train_images: torch.Tensor, background: float) -> dict:
    """PSNR / SSIM of the all-background image and of the mean training image on the scored views."""
    truth = batch.reference[:, 1:, ..., 6:]  # the NOVEL views of a 1-view batch
    b, v, h, w, _ = truth.shape
    flat = truth.reshape(b * v, h, w, 3)
    out = {}
    for name, image in (("background", torch.full((h, w, 3), background)), ("mean_image", train_images.mean((0, 1)))):
        guess = image.expand(b, v, h, w, 3)
        out[name] = {"novel_psnr": round(float(psnr(guess, truth).mean()), 3),
                     "novel_ssim": round(float(ssim(guess.reshape(b * v, h, w, 3), flat).reshape(b, v).mean()), 4)}
    return out


def rows_of(name: str, input_views: int, learner: str | None, init: str, curve: dict, **extra) -> list[dict]:
    return [{"class": name, "input_views": input_views, "learner": learner, "init": init, "steps": s, "novel_psnr": p,
             "novel_ssim": q, **extra} for s, p, q in zip(curve["steps"], curve["psnr"], curve["ssim"])]


def targets(rows: list[dict], base: dict) -> list[dict]:
    """The issue's targets on chairs (each method's best over its fixed step counts)."""
    if not any(r["class"] == "chairs" for r in rows) or "chairs" not in base:
        return []  # a run without chairs (e.g. --runs meshes:reptile): the targets are set on chairs
    def curve(**key):
        return {r["steps"]: r["novel_psnr"] for r in rows if all(r[k] == v for k, v in key.items())}

    meta1, rand1 = curve(**{"class": "chairs", "input_views": 1, "init": "meta"}), curve(
        **{"class": "chairs", "input_views": 1, "init": "random"})
    meta25, rand25 = curve(**{"class": "chairs", "input_views": INPUT, "init": "meta"}), curve(
        **{"class": "chairs", "input_views": INPUT, "init": "random"})
    trans = curve(**{"class": "chairs", "input_views": 1, "init": "transinr"})
    mean_image = base["chairs"]["mean_image"]["novel_psnr"]
    best_meta1, last_random = max(meta1.values()), rand25[max(rand25)]
    reach = min((s for s, p in sorted(meta25.items()) if p >= last_random), default=None)
    gains = [("1 view: meta >= random + 5 dB", best_meta1 - max(rand1.values()), 5.0),
             ("1 view: meta >= mean image + 4 dB", best_meta1 - mean_image, 4.0),
             ("1 view: fitting adds >= 2.5 dB over the meta init", best_meta1 - meta1[0], 2.5),
             ("TransINR, 1 view, 0 steps >= mean image + 3 dB", trans[0] - mean_image if trans else None, 3.0)]
    out = [{"target": t, "value": None if v is None else round(float(v), 3), "needs": f">= {th} dB",
            "met": None if v is None else bool(v >= th)} for t, v, th in gains]
    out.insert(3, {"target": f"{INPUT} views: meta reaches random's {max(rand25)}-step PSNR ({last_random:.2f} dB) "
                             "within 100 steps", "value": reach, "needs": "<= 100 steps",
                   "met": reach is not None and reach <= 100})
    return out


def evaluate(cfg: dict, name: str, learner, data, out: dict) -> None:
    """Fits of the held-out objects of a class from 1 view (and, for chairs, 25 views): rows,
    baselines, choices and pictures into ``out``."""
    task = task_for(cfg)
    test, val = held_out(cfg, name, "test", cfg["n_test"]), held_out(cfg, name, "val", cfg["n_val"])
    batch1, val1 = task.fit_batch(one_view(test)), task.fit_batch(one_view(val))
    out["baselines"][name] = baselines(cfg, batch1, data.images, task.config.background)
    rand_field = build_field(FieldConfig(**{**cfg["field"], "seed": 1}))
    rand_init, choices = field_params(rand_field), out["choices"].setdefault(name, {})
    meta_field, meta_init, rule = learner.field, learner.signal_init(task, batch1), learner.test_rule()
    # every init's Adam lr picked on validation objects: random among random_lrs (on chairs; the same
    # random field serves the rotated class), meta among the learned rule's lr and a third and a tenth
    # of it (a 1-view fit runs longer than the inner loop)
    # (picked on this class's validation objects when chairs were not run first: a run of meshes only)
    source = "chairs" if "random_lr_1_view" in out["choices"].get("chairs", {}) else name
    if source == name:
        choices["random_lr_1_view"] = pick_lr(cfg["random_lrs"], task, rand_field, rand_init, val1, cfg["steps_1"])[1]
    lr1 = out["choices"][source]["random_lr_1_view"]["picked"]
    meta_lrs = [rule.lrs, rule.lrs / 3, rule.lrs / 10]
    meta_lr, choices["meta_lr_1_view"] = pick_lr(meta_lrs, task, meta_field, meta_init, val1, cfg["steps_1"])
    meta = fitted(task, meta_field, meta_init, batch1, cfg["steps_1"], "adam", meta_lr)
    rand = fitted(task, rand_field, rand_init, batch1, cfg["steps_1"], "adam", lr1)
    out["rows"] += (rows_of(name, 1, "reptile", "meta", meta, lr=meta_lr)
                    + rows_of(name, 1, None, "random", rand, lr=lr1))
    with torch.no_grad():
        shared = {n: p.expand(len(batch1), *p.shape) for n, p in meta_init.items()}
        before = task.reconstruct(field_function(meta_field), shared, batch1)
    last = cfg["steps_1"][-1]
    out["shown"][name] = {"truth": batch1.reference[:, 1, ..., 6:], "input view": batch1.reference[:, 0, ..., 6:],
                          f"random {last}": rand["views"][:, 0], "meta 0": before[:, 0],
                          f"meta {last}": meta["views"][:, 0]}
    print(f"  1 view: meta (adam {meta_lr:g}) {meta['psnr']}, random (adam {lr1:g}) {rand['psnr']}; baselines "
          f"{out['baselines'][name]}", flush=True)
    if name != "chairs":
        return
    task25, batch25, val25 = task_for(cfg, INPUT), batch_25(cfg, test[: cfg["n_test_25"]]), batch_25(cfg, val)
    picks = [s for s in cfg["steps_25"] if s <= cfg["pick_steps_25"]]
    lr25, choices[f"random_lr_{INPUT}_views"] = pick_lr(cfg["random_lrs"], task25, rand_field, rand_init, val25, picks)
    meta_lr25, choices[f"meta_lr_{INPUT}_views"] = pick_lr([rule.lrs, rule.lrs / 3], task25, meta_field, meta_init,
                                                           val25, picks)
    meta25 = fitted(task25, meta_field, meta_init, batch25, [s for s in cfg["steps_25"] if s <= cfg["meta_steps_25"]],
                    "adam", meta_lr25)
    rand25 = fitted(task25, rand_field, rand_init, batch25, cfg["steps_25"], "adam", lr25)
    out["rows"] += (rows_of(name, INPUT, "reptile", "meta", meta25, lr=meta_lr25)
                    + rows_of(name, INPUT, None, "random", rand25, lr=lr25))
    print(f"  {INPUT} views: meta (adam {meta_lr25:g}) {meta25['psnr']}, random (adam {lr25:g}) {rand25['psnr']}",
          flush=True)


def evaluate_transinr(cfg: dict, hyper, out: dict) -> None:
    """TransINR's fields of the held-out chairs from 1 view (0 steps, then its Adam refinement)."""
    task = task_for(cfg)
    batch1 = task.fit_batch(one_view(held_out(cfg, "chairs", "test", cfg["n_test"])))
    rule = hyper.test_rule()
    init = hyper.signal_init(task, batch1)
    trans = fitted(task, hyper.field, init, batch1, cfg["steps_1"], rule.optimizer, rule.lrs)
    out["rows"] += rows_of("chairs", 1, "transinr", "transinr", trans, lr=rule.lrs)
    with torch.no_grad():
        out["shown"]["chairs"]["transinr 0"] = task.reconstruct(field_function(hyper.field), init, batch1)[:, 0]
    print(f"  transinr 1 view: {trans['psnr']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="Reptile budget on chairs (others: 2/3 of it)")
    parser.add_argument("--quick", action="store_true", help="--minutes 3 and lighter fits (about 15 minutes)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, every code path, under 2 minutes")
    parser.add_argument("--out", default="benchmarks/results/views.json")
    parser.add_argument("--png", default=None, help="picture grid (default: the --out path with .png)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default=RUNS, help=f"class:learner pairs to meta-train and test (default: {RUNS}; "
                        f"classes: {', '.join(CLASSES)})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = settings(3.0 if args.quick and args.minutes == 15.0 else args.minutes, args.quick, args.smoke)
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="views_"))
    out = {"rows": [], "baselines": {}, "choices": {}, "shown": {}}
    info = {}
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    for name, learner_name in runs:
        key = name if learner_name == "reptile" else learner_name
        print(f"[{time.perf_counter() - t_start:6.0f} s] meta-training {learner_name} on {name} for "
              f"{cfg['seconds'][key]:.0f} s ...", flush=True)
        learner, data, info[key] = train(cfg, name, learner_name, root / key)
        print(f"  {info[key]['outer_steps']} outer steps; validation (step, dB) {info[key]['val_curve'][-4:]}",
              flush=True)
        if learner_name == "transinr":
            evaluate_transinr(cfg, learner, out)
        else:
            evaluate(cfg, name, learner, data, out)
    png = args.png or str(Path(args.out).with_suffix(".png"))
    short = {"chairs": "", "chairs-rotated": "rot. ", "meshes": "mesh ", "photos": "photo "}
    plot_image_grid({f"{short[name]}{label}": images for name, labels in out["shown"].items()
                     for label, images in labels.items()}, png)
    result = {"rows": out["rows"], "baselines": out["baselines"], "targets": targets(out["rows"], out["baselines"]),
              "choices": out["choices"], "meta_training": info,
              "scored_views": f"{NOVEL} novel views per held-out object (cameras {INPUT}-{INPUT + NOVEL - 1}); 1-view "
              f"fits see camera 0, {INPUT}-view fits cameras 0-{INPUT - 1} through a fixed random {cfg['rays_25']} "
              "of their rays",
              "config": {**cfg, "quick": args.quick, "smoke": args.smoke,
                         "classes": {k: {"kind": v[0], "rotate": v[1]} for k, v in CLASSES.items()}},
              "machine": machine(), "total_seconds": round(time.perf_counter() - t_start, 1), "figure": png}
    write_json(args.out, result)
    print_table(result)
    print(f"total {result['total_seconds']:.0f} s; wrote {args.out} and {png}")


def print_table(result: dict) -> None:
    rows = result["rows"]
    keys = list(dict.fromkeys((r["class"], r["input_views"], r["init"]) for r in rows))
    steps = sorted({r["steps"] for r in rows})
    cell = {(r["class"], r["input_views"], r["init"], r["steps"]): r["novel_psnr"] for r in rows}
    print("\nnovel-view PSNR (dB) of held-out objects vs fitting steps")
    print(f"{'class':>15} {'views':>5} {'init':>9} | " + " ".join(f"{s:>6}" for s in steps))
    for c, v, i in keys:
        print(f"{c:>15} {v:>5} {i:>9} | " + " ".join(f"{cell[c, v, i, s]:6.2f}" if (c, v, i, s) in cell else
                                                     f"{'':>6}" for s in steps))
    for name, b in result["baselines"].items():
        print(f"{name}: background {b['background']['novel_psnr']:.2f} dB, mean training image "
              f"{b['mean_image']['novel_psnr']:.2f} dB")
    for t in result["targets"]:
        value = "never" if t["value"] is None else (f"{t['value']:+.2f} dB" if isinstance(t["value"], float)
                                                    else f"{t['value']} steps")
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: {value} (needs {t['needs']})")


if __name__ == "__main__":
    main()
