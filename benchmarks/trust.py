"""Trust: the zoo's priors in and out of their class, with the out-of-class guard and held-out stopping.

    python benchmarks/trust.py [--quick] [--threads 1] [--out benchmarks/results/trust.json]

Each prior is a packaged zoo init (``zoo:NAME``, meta-trained on its own class by
``benchmarks/zoo.py``), fitted to held-out signals of its class and of another (ground truth is
used only for scoring):

- ``zoo:ct-phantoms`` (CT, 64^2, from 4 and 8 views) on test phantoms (in class), on natural-photo
  crops (scikit-image's test photos, grey, through the CT forward model) and on procedural
  anatomy-like slices (:func:`anatomy_slices`: a textured body, soft organs, bone rings);
- ``zoo:chairs`` (views, 32 px, from 1 view) on box chairs (in class) and on pybullet's random
  meshes (the ``meshes`` class);
- ``zoo:faces`` (image, 25^2 grey) on faces (in class) and on grey photo crops (``patches``).

Every fit starts three ways: ``prior`` (the init and its learner's test rule), ``random`` (a fresh
field of the checkpoint's architecture, seeded as meta-training started, with the task preset's
random rule: Adam 1e-3) and ``guarded`` (:func:`metainr.guard.guarded_fit`, what ``metainr fit
--init zoo:NAME`` does), each with the task preset's held-out stopping (CT and views: 10% of the
observations held out; images: none). The probes of the guard are the prior and random fits (the
guard's default: probes as long as the fit), so one guarded fit gives the three rows. Rows at step
counts below the longest are read off the same trajectories: a fit of k steps is the first k steps
of a longer one, held-out stopping at k chooses among steps 0..k and the guard at k compares those
choices, exactly as the library does for a fit of k steps (checked at the longest).

Held-out rows compare the step held-out stopping chose (per signal) with the best step in
hindsight: the one fixed step count with the highest mean PSNR (what a user who knew the ground
truth would pick), next to fits without held-out stopping (every observation fitted, the last
step kept). Targets (issue 23): out of class the guarded fit is never more than 0.5 dB below the
random init at the same step count; in class it keeps >= 95% of the prior's gain over random; held-
out stopping is within 0.3 dB of the best step in hindsight on 1-view views and 4-view CT.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, write_json  # noqa: E402

from metainr import fit, load_learner  # noqa: E402
from metainr.data.ct import circle_mask, view_angles  # noqa: E402
from metainr.data.images import faces, patches  # noqa: E402
from metainr.guard import Candidate, guarded_fit  # noqa: E402
from metainr.start import learner_start, random_counterpart  # noqa: E402
from metainr.tasks import build_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INITS = ("prior", "random")


def anatomy_slices(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Procedural slices (count, size, size) in [0, 1] that look like anatomy, not like phantoms:
    an elliptical body (a darker fat layer under its edge) of smooth soft tissue with a faint fine
    texture, 2-4 soft-edged organs (thresholded smooth noise), a spine-like bone ring and a few
    bright rib spots near the edge, zero outside the reconstruction circle."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    out = []
    for _ in range(count):
        ax, ay, turn = rng.uniform(0.7, 0.88), rng.uniform(0.5, 0.72), rng.uniform(-0.3, 0.3)
        xr, yr = x * np.cos(turn) + y * np.sin(turn), -x * np.sin(turn) + y * np.cos(turn)
        radius = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
        body = radius < 1
        smooth = gaussian_filter(rng.standard_normal((size, size)), size / 10)
        fine = gaussian_filter(rng.standard_normal((size, size)), 0.8)
        img = 0.38 + 0.5 * smooth / (np.abs(smooth).max() + 1e-9) * 0.1 + 0.03 * fine
        img = np.where(radius > 0.86, 0.22 + 0.02 * fine, img)  # fat under the skin
        organs = gaussian_filter(rng.standard_normal((size, size)), size / 14)
        level = np.quantile(organs[radius < 0.8], rng.uniform(0.7, 0.85))
        soft = np.clip((organs - level) / (0.15 * organs.std() + 1e-9), 0, 1) * (radius < 0.8)
        img = img + soft * (rng.uniform(0.12, 0.25) + 0.02 * fine)
        cx, cy = rng.uniform(-0.08, 0.08), ay * rng.uniform(0.45, 0.6)  # a vertebra behind the organs
        d = np.hypot((x - cx) / 1.1, y - cy)
        img = np.where((d > 0.07) & (d < 0.13), rng.uniform(0.85, 1.0), img)
        for _ in range(rng.integers(2, 6)):  # ribs: small bright spots just inside the fat layer
            angle = rng.uniform(0, 2 * np.pi)
            px, py = 0.8 * ax * np.cos(angle), 0.8 * ay * np.sin(angle)
            img = np.where(np.hypot(xr - px, yr - py) < 0.04, rng.uniform(0.8, 0.95), img)
        out.append(np.clip(img * body, 0, 1))
    images = torch.from_numpy(np.stack(out).astype(np.float32))
    return images * circle_mask(size)


def photo_crops(count: int, size: int) -> torch.Tensor:
    """Grey crops (count, size, size) of scikit-image's test photos, zero outside the circle."""
    return patches("test", resolution=size, count=count).images.mean(-1) * circle_mask(size)


def _mean(x: torch.Tensor) -> float:
    return round(float(x.clamp(max=60).mean()), 3)


def _curve_rows(probes, steps: list[int], record: list[int], base: dict) -> tuple[list[dict], dict, dict]:
    """Rows (prior, random, guarded) at each of ``steps`` from the probes' trajectories, and the
    per-signal PSNR and chosen step of each at each step count ({init: {k: (B,)}}). The PSNR of a
    chosen step is the recorded one, or at the longest count the fit's own ``chosen_metrics``."""
    rows, per, when = [], {}, {}
    hl = {i: probes[i].holdout_loss for i in INITS}  # (B, K + 1)
    psnr = {i: probes[i].psnr for i in INITS}  # (B, len(record))
    at = {s: j for j, s in enumerate(record)}
    for k in steps:
        chosen = {i: hl[i][:, :k + 1].argmin(dim=1) for i in INITS}  # first minimum, as fit keeps ties
        best = {i: hl[i][:, :k + 1].min(dim=1).values for i in INITS}
        got = {i: probes[i].chosen_metrics["psnr"] if k == max(steps) else
               torch.stack([psnr[i][b, at[int(c)]] for b, c in enumerate(chosen[i])]) for i in INITS}
        for i in INITS:
            when.setdefault(i, {})[k] = chosen[i]
        random_wins = best["random"] < best["prior"]
        got["guarded"] = torch.where(random_wins, got["random"], got["prior"])
        for init, value in got.items():
            per.setdefault(init, {})[k] = value
            row = {**base, "init": init, "steps": k, "psnr": _mean(value)}
            if init == "guarded":
                row["random_won"] = int(random_wins.sum())
            rows.append(row)
    return rows, per, when


def _holdout_rows(probes, plain, per: dict, when: dict, k: int, record: list[int], base: dict) -> list[dict]:
    """Held-out stopping at ``k`` steps against the best fixed step count in hindsight (recorded
    steps up to k), with and without held-out stopping (``plain``: fits of every observation)."""
    rows = []
    for init in INITS:
        for holdout, result in ((True, probes[init]), (False, plain.get(init))):
            if result is None:
                continue
            upto = [j for j, s in enumerate(record) if s <= k]
            curve = result.psnr[:, upto].clamp(max=60).mean(0)
            j = int(curve.argmax())
            chosen = per[init][k] if holdout else result.psnr[:, upto[-1]]
            steps = when[init][k].float().mean() if holdout else torch.tensor(float(k))
            rows.append({**base, "init": init, "steps": k, "holdout": holdout, "chosen_step": round(float(steps), 1),
                         "best_step_in_hindsight": record[upto[j]], "psnr_chosen": _mean(chosen),
                         "psnr_best": round(float(curve[j]), 3),
                         "psnr_oracle": _mean(result.psnr[:, upto].max(dim=1).values)})
    return rows


def sparse_case(prior: str, data: str, views: int, task, learner, meta, batch, steps: list[int],
                record: list[int], in_class: bool, plain: tuple[str, ...]) -> dict:
    """One prior on one class of a sparse task: guarded fit of max(steps) (its probes give the prior
    and random fits), rows at every step count, held-out rows at each, and fits without held-out
    stopping from the starts ``plain`` names."""
    t0 = time.perf_counter()
    top = max(steps)
    start = learner_start(learner, meta, task)
    rand = random_counterpart(start)
    cands = [Candidate(s.field, s.init(batch), s.rule.fit_options(task, s.field)) for s in (start, rand)]
    holdout = type(task).preset.holdout
    result, report = guarded_fit(task, batch, top, *cands, holdout=holdout, record=record)
    base = {"prior": prior, "data": data, "views_or_size": views, "class": "in" if in_class else "out",
            "signals": len(batch)}
    rows, per, when = _curve_rows(report.probes, steps, record, base)
    gap = float((per["guarded"][top] - result.chosen_metrics["psnr"]).abs().max())  # the library's own guarded fit
    assert gap < 1e-4, f"derived guarded row differs from guarded_fit by {gap}"
    fits = {}
    for init, cand in zip(INITS, cands):
        if init in plain:
            fits[init] = fit(task, cand.field, cand.init, batch, top, record=record, **cand.options)
    holdout_rows = [r for k in steps for r in _holdout_rows(report.probes, fits, per, when, k, record, base)]
    seconds = round(time.perf_counter() - t0, 1)
    print(f"[{prior} -> {data}, {views}] " + ", ".join(
        f"{k}: prior {_mean(per['prior'][k]):.2f} random {_mean(per['random'][k]):.2f} guarded "
        f"{_mean(per['guarded'][k]):.2f}" for k in steps) + f" ({seconds} s)", flush=True)
    return {"rows": rows, "holdout_rows": holdout_rows, "seconds": seconds,
            "probe_losses": {k: [round(float(v), 6) for v in t] for k, t in report.losses.items()}}


def ct_cases(quick: bool) -> list[dict]:
    learner, meta = load_learner("zoo:ct-phantoms")
    task = build_task(meta["task"])
    n, count = task.size, 2 if quick else 4
    classes = {"phantoms": (task.load("ct-phantoms", "test")[:count], True),
               "photo-crops": (photo_crops(count, n), False), "anatomy": (anatomy_slices(count, n), False)}
    steps = [5, 10] if quick else [10, 25, 50, 100]
    record = list(range(max(steps) + 1))
    out = []
    for views in ((4,) if quick else (4, 8)):
        for data, (images, in_class) in classes.items():
            batch = task.scan(images, view_angles(views))
            out.append(sparse_case("ct-phantoms", data, views, task, learner, meta, batch, steps, record, in_class,
                                   plain=INITS if views == 4 else ()))
    return out


def views_cases(quick: bool) -> list[dict]:
    learner, meta = load_learner("zoo:chairs")
    count, n_views = (2, 3) if quick else (4, 5)
    steps = [3, 5] if quick else [5, 16, 50]
    record = sorted(set(range(min(17, max(steps) + 1))) | set(range(0, max(steps) + 1, 5)))
    out = []
    for data, in_class in (("chairs", True), ("meshes", False)):
        task = build_task(meta["task"], views=n_views, val_count=count)
        batch = task.fit_batch(task.load(data, "test"))
        task = task.settled(batch)
        out.append(sparse_case("chairs", data, task.config.input_views, task, learner, meta, batch, steps, record,
                               in_class, plain=("prior",)))  # a random init's views curve only rises
    return out


def image_cases(quick: bool) -> list[dict]:
    """Dense: no held-out stopping; the guard compares each probe's loss on every observation.
    A fit of each step count is its own guarded fit (no held-out losses to read choices from)."""
    learner, meta = load_learner("zoo:faces")
    task = build_task(meta["task"])
    size, count = task.config.resolution, 4 if quick else 8
    classes = {"faces": (faces("test").images[:count], True),
               "photo-crops": (patches("test", resolution=size, count=count).images.mean(-1, keepdim=True), False)}
    out = []
    for data, (images, in_class) in classes.items():
        t0 = time.perf_counter()
        batch = task.batch(images)
        start = learner_start(learner, meta, task)
        rand = random_counterpart(start)
        cands = [Candidate(s.field, s.init(batch), s.rule.fit_options(task, s.field)) for s in (start, rand)]
        rows = []
        base = {"prior": "faces", "data": data, "views_or_size": size, "class": "in" if in_class else "out",
                "signals": count}
        for k in ([3] if quick else [3, 20, 100]):
            result, report = guarded_fit(task, batch, k, *cands, record=[k])
            random_wins = report.losses["random"] < report.losses["prior"]
            for init, value in (("prior", report.probes["prior"].psnr[:, -1]),
                                ("random", report.probes["random"].psnr[:, -1]), ("guarded", result.psnr[:, -1])):
                rows.append({**base, "init": init, "steps": k, "psnr": _mean(value),
                             **({"random_won": int(random_wins.sum())} if init == "guarded" else {})})
        seconds = round(time.perf_counter() - t0, 1)
        print(f"[faces -> {data}] " + ", ".join(f"{r['steps']} {r['init']} {r['psnr']:.2f}" for r in rows)
              + f" ({seconds} s)", flush=True)
        out.append({"rows": rows, "holdout_rows": [], "seconds": seconds})
    return out


def targets(rows: list[dict], holdout_rows: list[dict]) -> dict:
    """The issue's three targets, with every comparison they rest on."""
    key = lambda r: (r["prior"], r["data"], r["views_or_size"], r["steps"])  # noqa: E731
    table: dict = {}
    for r in rows:
        table.setdefault(key(r), {"class": r["class"]})[r["init"]] = r["psnr"]
    out_rows, in_rows = [], []
    for k, v in table.items():
        label = {"prior": k[0], "data": k[1], "views_or_size": k[2], "steps": k[3]}
        if v["class"] == "out":
            out_rows.append({**label, "guarded_minus_random": round(v["guarded"] - v["random"], 3),
                             "met": v["guarded"] >= v["random"] - 0.5})
        else:
            gain = v["prior"] - v["random"]
            kept = (v["guarded"] - v["random"]) / gain if gain > 0 else None
            in_rows.append({**label, "prior_gain": round(gain, 3), "kept": None if kept is None else round(kept, 3),
                            "met": (kept is not None and kept >= 0.95) or (gain <= 0 and v["guarded"] >= v["prior"])})
    stop_rows = [{k: r[k] for k in ("prior", "data", "views_or_size", "class", "init", "steps", "psnr_chosen",
                                    "psnr_best")} | {"shortfall": round(r["psnr_best"] - r["psnr_chosen"], 3),
                                                     "met": r["psnr_best"] - r["psnr_chosen"] <= 0.3}
                 for r in holdout_rows if r["holdout"] and (r["prior"], r["views_or_size"]) in
                 (("chairs", 1), ("ct-phantoms", 4))]
    return {
        "out_of_class_guarded_within_0.5dB_of_random": {"met": all(r["met"] for r in out_rows), "rows": out_rows},
        "in_class_guarded_keeps_95pct_of_prior_gain": {"met": all(r["met"] for r in in_rows), "rows": in_rows},
        "holdout_within_0.3dB_of_best_step": {"met": all(r["met"] for r in stop_rows),
                                              "met_in_class_prior": all(r["met"] for r in stop_rows
                                                                        if r["class"] == "in" and r["init"] == "prior"),
                                              "rows": stop_rows},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer signals, steps and cases")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/trust.json (with --quick: trust_quick.json "
                    "in a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="metainr-trust-")) / "trust_quick.json"
                                           if args.quick else ROOT / "benchmarks" / "results" / "trust.json")
    t0 = time.perf_counter()
    cases = image_cases(args.quick) + ct_cases(args.quick) + views_cases(args.quick)
    rows = [r for c in cases for r in c["rows"]]
    holdout_rows = [r for c in cases for r in c["holdout_rows"]]
    result = {"config": {"quick": args.quick, "threads": args.threads, "guard": "probes as long as the fit",
                         "holdout": "the task preset's (ct, views 0.1; image 0)"},
              "machine": {**machine(), "threads": args.threads}, "targets": targets(rows, holdout_rows),
              "rows": rows, "holdout_rows": holdout_rows, "seconds": round(time.perf_counter() - t0, 1),
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    write_json(out, result)
    for name, t in result["targets"].items():
        print(f"{name}: {'met' if t['met'] else 'MISSED'}", flush=True)
    print(f"wrote {out} in {result['seconds']:.0f} s", flush=True)
    assert math.isfinite(result["seconds"])


if __name__ == "__main__":
    main()
