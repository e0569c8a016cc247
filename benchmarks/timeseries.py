"""Benchmark: video and audio (issue: signals in time) — held-out PSNR / SSIM of meta-learned inits
against random inits and TransINR, NeRV against SIREN, GradNCP K=16 against MAML K=4, and the peak
memory of one outer step per learner and clip size.

    python benchmarks/timeseries.py [--quick] [--part all|quality|memory] --out benchmarks/results/timeseries.json

Quality: every meta-training run is budgeted in CPU time (``time.process_time``, 1 thread), two
runs at a time; each run's learner is then fitted to the held-out clips / sounds with its own
test rule (MAML: SGD at the inner lr; GradNCP: the same, rescaled to the top-25% gradient norm;
TransINR: Adam at 1e-3 from the hypernetwork's field). Random init: a fresh field fitted with Adam
at each lr of a small grid, the best lr at each step. Memory: ONE outer step in a fresh process
(``MALLOC_MMAP_THRESHOLD_=65536``): the peak RSS during the step (VmHWM, reset to the current RSS just
before it) minus the RSS before it; a step whose process passes a cap is killed.
``--part`` runs one section and merges it into an existing ``--out`` file.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepCounter, learner_record, machine, run_script_capped, write_json  # noqa: E402

from metainr import TrainConfig, build_field, build_learner, fit, mean_psnr, meta_train  # noqa: E402
from metainr.fields import FieldConfig, count_parameters  # noqa: E402
from metainr.functional import field_function  # noqa: E402
from metainr.tasks import build_task, field_dims, for_field  # noqa: E402

STEPS = [0, 2, 5, 10, 16, 50]
LEARNERS = {  # name -> (registry name, options); the inner lr is the field's (settings()["inner_lr"])
    "metasgd_k2": ("metasgd", dict(inner_steps=2)),
    "maml_k4": ("maml", dict(inner_steps=4)),
    "gradncp_k16": ("gradncp", dict(inner_steps=16, keep_ratio=0.25, boot_steps=5)),
}
MEMORY_LEARNERS = {**{k: LEARNERS[k] for k in ("maml_k4", "gradncp_k16")},  # batching "auto": recompute when large
                   "maml_k4_loop": ("maml", dict(inner_steps=4, batching="loop")),  # the graph of every step kept
                   "gradncp_k16_loop": ("gradncp", dict(inner_steps=16, keep_ratio=0.25, boot_steps=5, batching="loop"))}


def settings(quick: bool) -> dict:
    """Everything that defines a run (stored as ``config`` in the JSON)."""
    video = dict(task=dict(frames=8, resolution=32, count=400, val_count=16), data="pans", size="8x32x32")
    audio = dict(task=dict(sample_rate=16000, length=4000, count=400, val_count=16), data="notes",
                 size="4000 samples (0.25 s at 16 kHz)")
    fields = {"video/siren": dict(kind="siren", width=128, depth=4, w0=30.0, w0_first=30.0),
              "video/nerv": dict(kind="nerv", width=28, depth=5, n_freqs=8, output_offset=0.5),
              "audio/siren": dict(kind="siren", width=128, depth=4, w0=30.0, w0_first=30.0),
              "video/pe": dict(kind="pe", width=128, depth=4, n_freqs=6, output_offset=0.5),
              "audio/pe": dict(kind="pe", width=128, depth=4, n_freqs=8, output_offset=0.5)}
    runs = [("video", "siren", "metasgd_k2"), ("audio", "siren", "metasgd_k2"), ("video", "siren", "maml_k4"),
            ("video", "siren", "gradncp_k16"), ("video", "nerv", "maml_k4"), ("video", "nerv", "gradncp_k16"),
            ("audio", "siren", "maml_k4"), ("audio", "siren", "gradncp_k16"), ("video", "pe", "transinr"),
            ("audio", "pe", "transinr")]
    cfg = dict(tasks={"video": video, "audio": audio}, fields=fields, runs=runs, steps=STEPS, batch_size=4,
               outer_lr={"metasgd_k2": 1e-3, "maml_k4": 1e-4, "gradncp_k16": 1e-4, "transinr": 1e-4, "nerv": 1e-3},
               inner_lr={"siren": 1e-2, "nerv": 1.0}, meta_seconds=300, transinr_seconds=240,
               random_lrs=[1e-4, 1e-3, 1e-2], hyper=dict(hyper_dim=128, hyper_depth=4, hyper_heads=4, n_groups=32),
               memory=dict(sizes=[[8, 32], [16, 32], [8, 64], [16, 64], [16, 128]], meta_batch=2, threads=2,
                           budget_gib=4, safety_cap_gib=12, timeout_s=300,
                           field=dict(kind="siren", width=128, depth=4, w0=30.0)))
    if quick:
        cfg.update(meta_seconds=20, transinr_seconds=15, runs=runs[:2] + runs[4:5] + runs[8:9])
        cfg["tasks"] = {"video": dict(video, task=dict(frames=4, resolution=16, count=32, val_count=4),
                                      size="4x16x16"),
                        "audio": dict(audio, task=dict(sample_rate=16000, length=1000, count=32, val_count=4),
                                      size="1000 samples")}
        cfg["memory"] = dict(cfg["memory"], sizes=[[4, 16], [8, 32]], timeout_s=60)
    return cfg


def _task(cfg: dict, name: str, field_kind: str):
    spec = cfg["tasks"][name]
    task = build_task(name, **spec["task"])
    train, test = task.load(spec["data"], "train"), task.load(spec["data"], "test")
    task = for_field(task.settled(task.batch(train[:1])), field_kind)
    return task, train, test


def _field_config(cfg: dict, name: str, field_kind: str, task) -> FieldConfig:
    return FieldConfig(**{**cfg["fields"][f"{name}/{field_kind}"], **field_dims(task)})


def _curve(result) -> dict[str, list[float]]:
    out = {"psnr": [round(mean_psnr(result.psnr[:, i]), 3) for i in range(len(result.steps))]}
    if "ssim" in result.metrics:
        out["ssim"] = [round(float(result.metrics["ssim"][:, i].mean()), 4) for i in range(len(result.steps))]
    return out


def _evaluate(task, field, init, batch, metrics, **rule) -> tuple[dict, dict]:
    """Mean metrics at every step of STEPS, and the first signal's reconstruction after 2 steps."""
    res = fit(task, field, init, batch, max(STEPS), record=STEPS, metrics=metrics, **rule)
    shapes = {n: p.shape for n, p in field.named_parameters()}
    first = {n: p if p.shape == shapes[n] else p[:1] for n, p in init.items()}  # shared or per-signal init
    one = batch.signals(slice(0, 1))
    two = fit(task, field, first, one, 2, record=[2], **rule)
    with torch.no_grad():
        picture = task.reconstruct(field_function(field), two.params, one)[0]
    return _curve(res), {"two_steps": picture.tolist()}


def quality_job(job: tuple) -> dict:
    """One (task, field, learner) run: meta-training under the CPU budget, then the held-out fits."""
    name, field_kind, learner_name, quick = job
    torch.set_num_threads(1)
    cfg = settings(quick)
    task, train, test = _task(cfg, name, field_kind)
    batch = task.batch(test)
    metrics = ("psnr", "ssim") if name == "video" else ("psnr",)
    field_cfg = _field_config(cfg, name, field_kind, task)
    if learner_name == "transinr":
        tokens = task.tokens(task.batch(train[:1]))
        learner = build_learner(build_field(field_cfg), "transinr", tokens=int(tokens.shape[1]),
                                token_dim=int(tokens.shape[2]), test_optimizer="adam", test_lr=1e-3, **cfg["hyper"])
        seconds, outer_lr = cfg["transinr_seconds"], cfg["outer_lr"]["transinr"]
    else:
        kind, options = LEARNERS[learner_name]
        learner = build_learner(build_field(field_cfg), kind, inner_lr=cfg["inner_lr"][field_kind], **options)
        seconds = cfg["meta_seconds"]
        outer_lr = cfg["outer_lr"]["nerv" if field_kind == "nerv" else learner_name]
    steps = StepCounter()
    t0 = time.process_time()
    meta_train(learner, task, train, TrainConfig(steps=10**6, batch_size=cfg["batch_size"], outer_lr=outer_lr,
               log_every=10**9), progress=False, max_seconds=seconds, clock=time.process_time, callbacks=[steps])
    train_s = time.process_time() - t0
    with torch.no_grad():
        init = learner.signal_init(task, batch)
    curve, pictures = _evaluate(task, learner.field, init, batch, metrics,
                                **learner.test_rule().fit_options(task, learner.field))
    init_kind = "transinr" if learner_name == "transinr" else "meta"
    rows = [{"task": name, "size": cfg["tasks"][name]["size"], "field": field_kind, "learner": learner_name,
             "init": init_kind, "steps": s, **{m: curve[m][i] for m in curve}} for i, s in enumerate(STEPS)]
    print(f"[{name}/{field_kind}/{learner_name}] {steps.done} outer steps in {train_s:.0f} CPU-s: "
          f"psnr {curve['psnr']}", flush=True)
    return {"rows": rows, "pictures": {f"{name}/{field_kind}/{learner_name}": pictures["two_steps"]},
            "runs": {f"{name}/{field_kind}/{learner_name}": {
                "outer_steps": steps.done, "cpu_seconds": round(train_s, 1), "outer_lr": outer_lr,
                "params": count_parameters(learner.field), "learner": learner_record(learner_name, learner)
                if learner_name != "transinr" else learner.config.to_dict(), "field": field_cfg.to_dict()}}}


def random_job(job: tuple) -> dict:
    """A random init of a field fitted with Adam at each lr of the grid; the best lr at each step."""
    name, field_kind, quick = job
    torch.set_num_threads(1)
    cfg = settings(quick)
    task, _, test = _task(cfg, name, field_kind)
    batch = task.batch(test)
    metrics = ("psnr", "ssim") if name == "video" else ("psnr",)
    field = build_field(_field_config(cfg, name, field_kind, task))
    init = {n: p.detach() for n, p in field.named_parameters()}
    per_lr = {lr: _evaluate(task, field, init, batch, metrics, optimizer="adam", lr=lr) for lr in cfg["random_lrs"]}
    best = [max(cfg["random_lrs"], key=lambda lr: per_lr[lr][0]["psnr"][i]) for i in range(len(STEPS))]
    rows = [{"task": name, "size": cfg["tasks"][name]["size"], "field": field_kind, "learner": "adam",
             "init": "random", "steps": s, "lr": best[i], **{m: per_lr[best[i]][0][m][i] for m in per_lr[best[i]][0]}}
            for i, s in enumerate(STEPS)]
    print(f"[{name}/{field_kind}/random] psnr {[r['psnr'] for r in rows]} (lrs {best})", flush=True)
    lr2 = best[STEPS.index(2)]
    return {"rows": rows, "pictures": {f"{name}/{field_kind}/random": per_lr[lr2][1]["two_steps"]},
            "random_per_lr": {f"{name}/{field_kind}": {f"{lr:g}": per_lr[lr][0] for lr in per_lr}}}


def quality_part(cfg: dict, quick: bool, out_dir: Path) -> dict:
    jobs = [("q", (*run, quick)) for run in cfg["runs"]]
    fields = sorted({(t, f) for t, f, learner in cfg["runs"] if learner != "transinr"})
    jobs += [("r", (t, f, quick)) for t, f in fields]
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_dispatch, jobs, chunksize=1)
    rows, pictures, runs, per_lr = [], {}, {}, {}
    for r in results:
        rows += r["rows"]
        pictures.update(r["pictures"])
        runs.update(r.get("runs", {}))
        per_lr.update(r.get("random_per_lr", {}))
    truth = {}
    for name in cfg["tasks"]:
        task, _, test = _task(cfg, name, "siren")
        truth[name] = test[0].tolist()
    _pictures(cfg, truth, pictures, out_dir)
    return {"rows": rows, "runs": runs, "random_per_lr": per_lr}


def _dispatch(job):
    kind, args = job
    return quality_job(args) if kind == "q" else random_job(args)


def _pictures(cfg: dict, truth: dict, pictures: dict, out_dir: Path) -> None:
    """timeseries_video.png (truth / random / meta frames after 2 steps) and timeseries_audio.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    video = [("truth", truth["video"])] + [(k.split("/", 1)[1], v) for k, v in sorted(pictures.items())
                                           if k.startswith("video/")]
    frames = len(truth["video"])
    fig, axes = plt.subplots(len(video), frames, figsize=(1.3 * frames, 1.4 * len(video)), squeeze=False)
    for r, (label, clip) in enumerate(video):
        clip = np.clip(np.asarray(clip, dtype=np.float32), 0, 1)
        for t in range(frames):
            axes[r, t].imshow(clip[t])
            axes[r, t].set_xticks([])
            axes[r, t].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle("held-out clip, every frame, after 2 test steps", fontsize=9)
    fig.savefig(out_dir / "timeseries_video.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    audio = [("truth", truth["audio"])] + [(k.split("/", 1)[1], v) for k, v in sorted(pictures.items())
                                           if k.startswith("audio/")]
    fig, axes = plt.subplots(len(audio), 1, figsize=(9, 1.3 * len(audio)), sharex=True, squeeze=False)
    for r, (label, wave) in enumerate(audio):
        wave = np.asarray(wave, dtype=np.float32)
        axes[r, 0].plot(wave[:800], lw=0.7)
        axes[r, 0].set_ylim(-1, 1)
        axes[r, 0].set_ylabel(label, fontsize=7)
    axes[-1, 0].set_xlabel("sample (the first 800 of the held-out sound)")
    fig.suptitle("held-out sound after 2 test steps", fontsize=9)
    fig.savefig(out_dir / "timeseries_audio.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- memory: one outer step, fresh process
def step_worker(learner_name: str, frames: int, side: int, quick: bool) -> None:
    cfg = settings(quick)["memory"]
    torch.set_num_threads(cfg["threads"])
    task = build_task("video", frames=frames, resolution=side, count=cfg["meta_batch"], val_count=1)
    clips = task.load("pans", "train")
    kind, options = MEMORY_LEARNERS[learner_name]
    learner = build_learner(build_field(FieldConfig(**{**cfg["field"], **field_dims(task)})), kind, inner_lr=1e-2,
                            **options)
    batch = task.batch(clips)
    before = _reset_peak_rss_mb()  # loading the photos peaks higher than a small step: start the peak afresh
    t = time.perf_counter()
    learner.meta_gradient(task, batch)
    seconds = time.perf_counter() - t
    print(json.dumps({"mb": _status_mb("VmHWM") - before, "rss_before_mb": before, "seconds": seconds}))


def _status_mb(key: str) -> float:
    """A size from /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in MB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024


def _reset_peak_rss_mb() -> float:
    """Reset this process's peak RSS to its current RSS (Linux: clear_refs 5); returns that, in MB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def memory_part(cfg: dict, quick: bool) -> dict:
    m = cfg["memory"]
    rows, fits = [], {}
    for frames, side in m["sizes"]:
        for name in MEMORY_LEARNERS:
            r = run_script_capped(str(Path(__file__).resolve()),
                                  ["--step-worker", name, str(frames), str(side)] + (["--quick"] if quick else []),
                                  int(m["safety_cap_gib"] * 2**30), m["timeout_s"],
                                  {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(m["threads"])})
            mb = round(r["mb"], 1) if "mb" in r else None
            rows.append({"task": "video", "size": f"{frames}x{side}x{side}", "field": "siren", "learner": name,
                         "peak_mb": mb, "seconds": round(r["seconds"], 2) if "seconds" in r else None,
                         "error": r.get("error")})
            fits.setdefault(name, []).append((frames, side, mb is not None and mb < m["budget_gib"] * 1024))
            print(f"  memory {frames}x{side}^2 {name:<12} {mb} MB {r.get('error') or ''}", flush=True)
    largest = {name: max([(f * s * s, f"{f}x{s}x{s}") for f, s, ok in v if ok], default=(0, None))[1]
               for name, v in fits.items()}
    there = {}
    for mode in ("", "_loop"):
        at = largest[f"gradncp_k16{mode}"]
        there[f"maml_k4{mode}"] = next((ok for f, s, ok in fits[f"maml_k4{mode}"] if f"{f}x{s}x{s}" == at), None)
    return {"memory": rows, "largest_under_budget": largest, "maml_k4_fits_gradncp_largest": there}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", default="all", choices=["all", "quality", "memory"])
    ap.add_argument("--out", default="benchmarks/results/timeseries.json")
    ap.add_argument("--step-worker", nargs=3, metavar=("LEARNER", "FRAMES", "SIDE"))
    args = ap.parse_args()
    if args.step_worker:
        step_worker(args.step_worker[0], int(args.step_worker[1]), int(args.step_worker[2]), args.quick)
        return
    cfg = settings(args.quick)
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.part != "all" and out.is_file() else {}
    t0 = time.perf_counter()
    if args.part in ("all", "quality"):
        result.update(quality_part(cfg, args.quick, out.parent))
    if args.part in ("all", "memory"):
        result.update(memory_part(cfg, args.quick))
    result.update(config={**cfg, "runs": [list(r) for r in cfg["runs"]]}, machine=machine(), quick=args.quick,
                  total_seconds=round(time.perf_counter() - t0, 1),
                  note="quality: 1 thread a run, two runs at a time, CPU-time budgets; memory: MB = peak RSS during "
                       "ONE outer step (VmHWM reset just before it) minus the RSS before it (fresh process, meta-batch "
                       "2, 2 threads)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
