"""The demo: meta-learn a SIREN init on faces, fit held-out faces from it and from random inits."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .device import resolve_device
from .fields import FieldConfig, build_field, count_parameters
from .fit import fit
from .functional import field_function, field_params
from .meta import build_learner
from .metrics import mean_psnr, ssim
from .plot import plot_image_grid, plot_psnr_curves, plot_training
from .disk import atomic_write_json
from .tasks import ImageTask
from .train import TrainConfig, meta_train, read_metrics

log = logging.getLogger(__name__)

DEMO_STEPS = [0, 1, 2, 3, 5, 10, 20, 50, 100]
RANDOM_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
THREADS = 1
"""intra-op CPU threads of the demo (torch's setting is restored after). Its steps are tiny: a
second thread gains little on a quiet machine (a compiled meta-step 8.1 ms on 2 threads, 13.2 ms on
1; the whole demo 45 s on 1) but beside another job a descheduled thread stalls every parallel
region (measured at load 6 on 2 cores: a compiled meta-step 2.8 s on 2 threads, 0.04 s on 1; a
100-step fit of the 20 test faces 13-14 s on 2 threads, 3.2 s on 1)."""


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, device: str | torch.device | None = "cpu") -> dict:
    """Meta-train MAML on the bundled faces, compare with random inits, write plots + summary.json.

    70 training faces meta-train, 10 validate, the 20 held-out test faces are fitted at the end.

    Field: SIREN, width 32, 4 layers (2,241 params for 625 pixel values, about 3.6x, as the
    papers size fields). MAML K=3, 2,500 outer steps of 8 faces; the meta-batch runs vmapped and
    ``torch.compile``d (a one-off compile, then about 3x faster steps than eager; eager if compiling
    fails). Random inits are fitted with Adam at each lr of ``RANDOM_LRS`` and the best per step is
    reported. On the CPU it runs on ``THREADS`` thread(s). ``device``: auto | cpu | cuda[:i]. Returns
    the summary dict.
    """
    device = resolve_device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(THREADS)
    try:
        return _run_demo(Path(out_dir), quick, device)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, quick: bool, device: torch.device) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # 10 training faces validate (best-checkpoint choice); the 20 test faces are only fitted at the end
    task = ImageTask(resolution=25, channels=1)
    all_train, test_set = task.load("faces", "train"), task.load("faces", "test")
    val_set, train_set = all_train[:10], all_train[10:]
    field_cfg = FieldConfig(kind="siren", in_dim=task.in_dim, out_dim=task.out_dim, width=32, depth=4, w0=30.0,
                            w0_first=30.0)
    # 25^2 signals are overhead-bound: the meta-batch runs at once (batching auto -> vmap) and compiled
    learner = build_learner(build_field(field_cfg), "maml", inner_steps=3, inner_lr=1e-2, compile=True)
    train_cfg = TrainConfig(steps=60 if quick else 2500, batch_size=8, outer_lr=1e-3, eval_every=20 if quick else 250,
                            eval_steps=2, checkpoint_every=250)
    init = meta_train(learner, task, train_set, train_cfg, run_dir=out / "train", val=val_set, overwrite=True,
                      info={"source": "faces", "validation": "the first 10 of faces:train"}, device=device)
    train_seconds = time.perf_counter() - t0
    records = read_metrics(out / "train" / "metrics.jsonl")
    plot_training(records, out / "training.png")

    batch = task.batch(test_set).to(device)
    top = max(DEMO_STEPS) if not quick else 20
    steps = [s for s in DEMO_STEPS if s <= top]
    rule = learner.test_rule().fit_options(task, learner.field)
    meta = fit(task, learner.field, init, batch, top, record=steps, **rule)
    random_field = build_field(FieldConfig(**{**field_cfg.to_dict(), "seed": 1})).to(device)
    random_runs = {lr: fit(task, random_field, field_params(random_field), batch, top, optimizer="adam", lr=lr,
                           record=steps) for lr in RANDOM_LRS}
    meta_curve = [mean_psnr(meta.psnr[:, i]) for i in range(len(steps))]
    random_curves = {lr: [mean_psnr(r.psnr[:, i]) for i in range(len(steps))] for lr, r in random_runs.items()}
    best_random = [max(c[i] for c in random_curves.values()) for i in range(len(steps))]
    plot_psnr_curves(steps, {"meta-learned init (MAML, SGD)": meta_curve,
                             "random init (Adam, best lr per step)": best_random},
                     out / "psnr_vs_steps.png", title="held-out faces: PSNR vs fitting steps")

    h, w, c = test_set.shape[1:]
    two = fit(task, learner.field, init, batch, 2, **rule)
    best_lr = max(RANDOM_LRS, key=lambda lr: random_curves[lr][steps.index(2)])
    rand_two = fit(task, random_field, field_params(random_field), batch, 2, optimizer="adam", lr=best_lr)
    with torch.no_grad():
        recon_meta = task.reconstruct(field_function(learner.field), two.params, batch).cpu()
        recon_rand = task.reconstruct(field_function(random_field), rand_two.params, batch).cpu()
    plot_image_grid({"ground truth": test_set, "meta init, 2 steps": recon_meta,
                     "random init, 2 steps": recon_rand}, out / "reconstructions.png")

    at2 = steps.index(2)
    reach = next((s for s, v in zip(steps, best_random) if v >= meta_curve[at2]), None)
    summary = {
        "headline": {
            "meta_psnr_after_2_steps": round(meta_curve[at2], 2),
            "random_psnr_after_2_steps": round(best_random[at2], 2),
            "random_steps_to_match": reach,
            "meta_ssim_after_2_steps": round(float(ssim(recon_meta, test_set).mean()), 4),
        },
        "steps": steps,
        "psnr": {"maml": meta_curve, "random_best": best_random,
                 **{f"random_adam_lr{lr:g}": c for lr, c in random_curves.items()}},
        "field": field_cfg.to_dict(),
        "field_params": count_parameters(learner.field),
        "values_per_signal": h * w * c,
        "task": task.spec(),
        "learner": learner.spec(),
        "train": train_cfg.to_dict(),
        "data": {"train": len(train_set), "validation": len(val_set), "test": len(test_set), "resolution": h},
        "meta_train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "quick": quick,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
