"""Render the committed benchmark JSON files as the markdown tables (and plots) of the README.

    python benchmarks/report.py [--plots]   # markdown for every results/*.json present;
                                            # --plots also writes results/image_meta.png
    python benchmarks/report.py PATH.json   # one file (its kind from its name, e.g. core.json)
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def image_meta(r: dict) -> list[str]:
    steps = r["steps"]
    out = [f"**Held-out PSNR (dB) vs test-time steps** — {r['config']['data']} {r['config']['resolution']}², "
           f"SIREN {r['field_params']} params ({r['params_per_value']:.2f}× the values of one signal), "
           f"{r['threads']} threads. Random init: Adam, best lr of {r['config']['random_lrs']} at each step.", ""]
    out += _table(["method", *steps], [[k, *(f"{v:.2f}" for v in ys)] for k, ys in r["psnr"].items()])
    ref = r["reference_step"]
    out += ["", f"`speedup_at_2` = **{r['speedup_at_2']}** (steps random init needs to match MAML after 2 steps, / 2).",
            "", *_table(["method", "s / outer step", "MFU"],
                        [[k, f"{s:.3f}", f"{r['mfu'][k]:.3f}"] for k, s in r["seconds_per_outer_step"].items()]),
            "", f"Reference step (second-order MAML, K=4, SIREN 5×256, 64² RGB, meta-batch 4, 2 threads, fresh process): "
            f"**{ref['seconds']:.2f} s** (first step {ref['first_step_seconds']:.2f} s) and **{ref['peak_rss_mb']:.0f} MB** "
            f"peak RSS, vs 3.39 s / 2857 MB for the published GradNCP code's MAML step "
            f"({ref['ratio_seconds']:.2f}× / {ref['ratio_peak_rss']:.2f}×)."]
    w = r["rwf"]
    out += ["", f"**Random weight factorization** ({w['images']} images of {w['resolution']}², SIREN {w['depth']}×{w['width']}, "
            f"Adam from random init, best lr each):", "",
            *_table(["steps", *w["steps"]], [["plain", *(f"{v:.2f}" for v in w["plain"])],
                                             ["rwf", *(f"{v:.2f}" for v in w["rwf"])]])]
    return out


def transinr(r: dict) -> list[str]:
    steps = r["steps"]
    out = [f"**TransINR vs MAML vs random init** — held-out PSNR (dB) vs test-time steps, {r['threads']} thread(s).", ""]
    out += _table(["method", *steps], [[k, *(f"{v:.2f}" for v in ys)] for k, ys in r["psnr"].items()])
    out += ["", f"Encode (one hypernetwork pass) {r['encode_seconds'] * 1e3:.1f} ms vs MAML's "
            f"{r['maml_inner_steps']}-step adaptation {r['maml_adapt_seconds'] * 1e3:.1f} ms "
            f"({r['encode_speedup']:.1f}×); training seconds {r['train_seconds']}."]
    return out


def sparse(r: dict) -> list[str]:
    rows = sorted(r["rows"], key=lambda x: (-x["density"], x["method"]))
    out = [f"**Meta-SparseINR** — held-out PSNR (dB) at equal parameter count, {r['threads']} thread(s); "
           "2 SGD steps lr 1e-2 / 100 Adam steps lr 1e-4.", ""]
    out += _table(["method", "density", "params", "2 SGD", "100 Adam", "bytes/signal"],
                  [[x["method"], f"{x['density']:.3f}", x["params"], f"{x['psnr_2sgd']:.2f}", f"{x['psnr_100adam']:.2f}",
                    x["bytes_per_signal"]] for x in rows])
    return out


def gradncp(r: dict) -> list[str]:
    c = r["config"]
    out = []
    if "memory" in r:
        names = list(next(iter(r["memory"].values())))
        out += [f"**Memory (MB) and seconds of ONE outer step** — SIREN {c['step_field']['depth']}×"
                f"{c['step_field']['width']}, meta-batch {c['meta_batch']}, {c['memory_threads']} threads, fresh "
                "process, ru_maxrss after the step minus before it, `MALLOC_MMAP_THRESHOLD_=65536`; "
                "— = over the safety cap or time limit.", ""]
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        out += _table(["side", *(f"{n} MB" for n in names), *(f"{n} s" for n in names)],
                      [[res, *(fmt(m[n], ".0f") for n in names),
                        *(fmt(r["seconds_per_outer_step"][res][n], ".2f") for n in names)]
                       for res, m in r["memory"].items()])
    if "max_resolution_under_budget" in r:
        best = r["max_resolution_under_budget"]
        out += ["", f"Largest side trainable under a {c['budget_gib']} GiB RSS cap: "
                + ", ".join(f"{k} **{v}**" for k, v in best.items()) + "."]
    if "quality" in r:
        q, qc = r["quality"], c["quality"]
        steps = q["record_steps"]
        out += ["", f"**Held-out PSNR (dB) vs test steps** — {qc['resolution']}² crops, SIREN {qc['field']['depth']}×"
                f"{qc['field']['width']}, {qc['cpu_seconds'] / 60:.1f} CPU-minutes of meta-training each (1 thread), "
                f"seeds {qc['seeds']}, outer lr picked on validation from {qc['outer_lrs']}.", ""]
        rows = []
        for method in ("maml_k4", "gradncp_k16", "gradncp_k16_random"):
            e = q.get(method)
            if not e:
                continue
            for key, curve in e.items():
                if key.startswith("equal_"):
                    budget, rule = key.split("/")
                    rows.append([method, rule, budget.replace("_", " "), e["outer_lr"], *(f"{v:.2f}" for v in curve)])
        out += _table(["method", "test steps", "budget", "outer lr", *steps], rows)
        out += ["", "GradNCP K=16 (rescaled) minus MAML K=4 after 16 steps: "
                f"{q.get('equal_time/gain_at_16_db')} dB at equal CPU time, "
                f"{q.get('equal_steps/gain_at_16_db')} dB at equal outer steps ({qc['equal_steps']})."]
    return out


def ct(r: dict) -> list[str]:
    views = r["views"]
    cell = {(x["views"], x["method"]): x for x in r["rows"]}
    methods = [m for m in ("meta", "random", "fbp", "sart") if any((v, m) in cell for v in views)]
    m = r["meta_training"]
    out = [f"**CT, held-out {r['size']}² phantoms** — PSNR (dB) / SSIM inside the reconstruction circle; "
           f"prior meta-trained {m['outer_steps']} outer steps on {m['train_size']}² phantoms "
           f"({m['train_cpu_seconds'] / 60:.0f} CPU-minutes); every budget picked on validation phantoms.", ""]
    out += _table(["views", *methods], [[v, *(f"{cell[v, k]['psnr']:.2f} / {cell[v, k]['ssim']:.3f}"
                                             if (v, k) in cell else "—" for k in methods)] for v in views])
    c = r.get("choices", {})
    if all(m in c for m in ("meta", "random", "fbp", "sart")):
        def picked(m: str, v: int) -> str:
            x = c[m].get(str(v))
            if not x:
                return "—"
            if m == "meta":
                return f"{'own rule' if x['rule'] == 'learned' else x['rule']} × {x['steps']}"
            if m == "random":
                return f"Adam {x['lr']:g} × {x['steps']}"
            return x["filter"] if m == "fbp" else f"{x['iterations']} it, clip {x['clip']}"
        out += ["", "Budgets picked on the validation phantoms:", ""]
        out += _table(["views", "meta (rule × steps)", "random", "fbp filter", "sart"],
                      [[v, *(picked(m, v) for m in ("meta", "random", "fbp", "sart"))] for v in views])
    return out


def core(r: dict) -> list[str]:
    """The before / after comparison of benchmarks/core.py."""
    def num(v, spec: str = ".2f") -> str:
        if isinstance(v, dict) and "error" in v:
            return f"error: {v['error']}"
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"

    b, a, q, c = r["before"], r["after"], r["ratios"], r["config"]
    rb, ra = b.get("reference_step", {}), a.get("reference_step", {})
    rs = c["reference_step"]
    out = [f"**Core before / after** — same machine, one run, {c['threads']} threads, every number from a fresh "
           f"process; before: `{b['tree'].get('commit') or b['tree']['path']}`, after: "
           f"`{a['tree'].get('commit') or a['tree']['path']}`"
           + (" (with uncommitted changes)" if a["tree"].get("uncommitted_changes") else "") + ".", ""]
    out += _table(["measure", "before", "after", "after / before"], [
        [f"reference step: s (median of {rs['repeats']} after {rs['warmup']} warm-up)",
         num(rb.get("seconds") if "error" not in rb else rb), num(ra.get("seconds") if "error" not in ra else ra),
         num(q["reference_step_seconds"], ".3f")],
        ["reference step: peak RSS (MB)", num(rb.get("peak_rss_mb"), ".0f"), num(ra.get("peak_rss_mb"), ".0f"),
         num(q["reference_step_peak_rss_mb"], ".3f")],
        [f"fit: {c['fit']['signals']} × {c['fit']['resolution']}², {c['fit']['steps']} Adam steps (s)",
         num(b.get("fit_seconds")), num(a.get("fit_seconds")), num(q["fit_seconds"], ".3f")],
        ["reference step: process CPU s", num(rb.get("cpu_seconds")), num(ra.get("cpu_seconds")),
         num(q.get("reference_step_cpu_seconds"), ".3f")],
        ["fit: process CPU s", num(b.get("fit", {}).get("cpu_seconds")), num(a.get("fit", {}).get("cpu_seconds")),
         num(q.get("fit_cpu_seconds"), ".3f")]])
    load = r.get("load_average", {})
    if load:
        out += ["", f"Load average (1, 5, 15 min) at the start {load.get('start')}, at the end {load.get('end')}: "
                "on a busy machine trust the CPU-second rows over the wall-second ones."]
    out += ["", f"Reference step: second-order MAML, K={rs['inner_steps']}, SIREN 5×256, "
            f"{rs['resolution']}² RGB, meta-batch {rs['meta_batch']} (the old main measured "
            f"{c['old_main_reference_step']['seconds']} s / {c['old_main_reference_step']['peak_rss_mb']} MB)."]
    tables = (("image_meta", "image_meta --quick: held-out PSNR (dB) vs test steps", "method", "step"),
              ("ct", "ct --quick: test PSNR (dB) by view count", "views", "method"))
    for key, title, row, col in tables:
        d = r["psnr_diff"].get(key, {})
        if "error" in d:
            out += ["", f"**{title}**: {d['error']}"]
            continue
        out += ["", f"**{title}** — before / after (after − before); max |diff| {d['max_abs_diff']} dB, "
                f"mean {d['mean_diff']} dB.", ""]
        rows = list(dict.fromkeys(x[row] for x in d["cells"]))
        cols = list(dict.fromkeys(x[col] for x in d["cells"]))
        cell = {(x[row], x[col]): x for x in d["cells"]}
        out += _table([row, *cols], [[k, *(f"{cell[k, c]['before']:.2f} / {cell[k, c]['after']:.2f} "
                                          f"({cell[k, c]['diff']:+.2f})" if (k, c) in cell else "—" for c in cols)]
                                     for k in rows])
    g, suite = r.get("gpu", {}), r.get("suite_cuda")
    if g.get("available"):
        out += ["", f"GPU: {g['device_name']}; test suite on CUDA: "
                + (suite.get("summary") or suite.get("error", "—") if suite else "not run") + "."]
    else:
        out += ["", f"No GPU ({r.get('suite_cuda_reason', 'suite not run on CUDA')})."]
    return out


def speed(r: dict) -> list[str]:
    """Seconds, memory and MFU per outer step vs the published GradNCP code (benchmarks/speed.py)."""
    def num(v, spec: str = ".2f") -> str:
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"

    def why(x: dict) -> str:
        return f"error: {x['error']}" if "error" in x else (f"skipped: {x['skipped']}" if "skipped" in x else "—")

    c, peer = r["config"], r.get("peer", {})
    rate = r.get("matmul_gflops", {}).get("used")
    out = [f"**Speed of one outer step** — {c['threads']} threads, every number from a fresh process, median of up "
           f"to {c['repeats']} steps after {c['warmup']} warm-up; MFU against the {num(rate, '.0f')} GFLOP/s matmul "
           "rate measured in the same run" + (" (**smoke run: tiny sizes**)" if c.get("smoke") else "") + ".", ""]
    rows = []
    for key, per in r["steps"].items():
        for learner, x in per.items():
            p = peer.get("configs", {}).get(key, {}).get(learner, {})
            cells = ([x.get("batching_used") or "—", num(x["seconds"], ".3f"), num(x["peak_rss_mb"], ".0f"),
                      num(x.get("gflop"), ".2f"), num(x.get("mfu"))] if "seconds" in x else [why(x), "", "", "", ""])
            rows.append([c["steps"][key]["label"] if learner == next(iter(per)) else "", learner, *cells,
                         num(p.get("seconds"), ".3f") if p else "", num(p.get("peak_rss_mb"), ".0f") if p else "",
                         f"{num(p.get('ratio_seconds'))} / {num(p.get('ratio_peak_rss'))}" if p else ""])
    out += _table(["config", "learner", "batching", "s / step", "peak MB", "GFLOP", "MFU", "peer s", "peer MB",
                   "metainr / peer (s / MB)"], rows)
    if "source" in peer:
        src = peer["source"]
        out += ["", f"Peer: the published GradNCP code, commit `{src.get('commit')}`, its own `train_step` "
                "(MAML: maml.py; GradNCP: maml_boot.py, sample_type gradncp) driven from a temp dir; guards: "
                + "; ".join(peer.get("guards") or ["none"]) + "."]
    elif "skipped" in peer:
        out += ["", f"Peer: {peer['skipped']}."]
    compiled = r.get("compile", {})
    if compiled:
        out += ["", "**torch.compile** (`compile=True`, batching auto; compiled / eager, fresh processes each):", "",
                *_table(["config", "learner", "eager s", "compiled s", "compiled / eager (s / MB)", "compile s"],
                        [[c["steps"][key]["label"] if learner == next(iter(per)) else "", learner,
                          num(x["eager"].get("seconds"), ".3f"), num(x["compiled"].get("seconds"), ".3f")
                          + ("" if x["compiled"].get("compiled") is not False else " (failed: eager)"),
                          f"{num(x.get('ratio_seconds'))} / {num(x.get('ratio_peak_rss'))}",
                          num(x.get("compile_seconds"), ".1f")]
                         for key, per in compiled.items() for learner, x in per.items()])]
    out += ["", "**fit throughput** (Adam from a random init):", "",
            *_table(["size", "field", "signals", "steps", "signal-steps / s", "MFU"],
                    [[f"{x['side']}² ×{x['channels']}", f"{x['depth']}×{x['width']}", x["batch"], x["steps"],
                      num(x.get("signal_steps_per_second"), ".1f") if "error" not in x else why(x), num(x.get("mfu"))]
                     for x in r.get("fit", {}).values()])]
    reach = r.get("reach", {})
    if "skipped" not in reach:
        rc = c["reach"]
        out += ["", f"**Memory reach** (one outer step, SIREN {rc['depth']}×{rc['width']}, B={rc['batch']}, "
                f"K={rc['k']}, under {rc['budget_gib']} GiB peak RSS): " + "; ".join(
                    f"{name}: largest side **{x.get('largest_side')}** ("
                    + ", ".join(f"{t['side']}²: {num(t.get('peak_rss_mb'), '.0f')} MB" for t in x.get("tries", []))
                    + f"; {x.get('stopped')})" for name, x in reach.items() if "tries" in x)]
        if "source" in reach:
            out[-1] += (f" (measured in a separate run at {reach['source']['threads']} thread(s): "
                        f"{reach['source']['file']})")
    demo, suite = r.get("demo", {}), r.get("suite", {})
    out += ["", f"`metainr demo`{' --quick' if demo.get('quick') else ''}: "
            + (f"{num(demo.get('wall_seconds'), '.1f')} s" if "wall_seconds" in demo and "error" not in demo
               else why(demo))
            + (f" (headline {demo['headline']})" if demo.get("headline") else "")
            + "; test suite: " + (f"{suite.get('summary')} in {num(suite.get('wall_seconds'), '.1f')} s"
                                  if "wall_seconds" in suite else why(suite)) + "."]
    out += ["", *_table(["target", "rule", "met"], [[k, t["rule"], t["met"]] for k, t in r.get("targets", {}).items()])]
    return out


def views(r: dict) -> list[str]:
    """Novel-view PSNR / SSIM of held-out objects vs fitting steps, baselines, targets."""
    rows = r["rows"]
    steps = sorted({x["steps"] for x in rows})
    keys = list(dict.fromkeys((x["class"], x["input_views"], x["init"]) for x in rows))
    cell = {(x["class"], x["input_views"], x["init"], x["steps"]): x for x in rows}
    m = r["meta_training"]
    out = [f"**3D views, held-out objects** — novel-view PSNR (dB) / SSIM vs fitting steps, "
           f"{r['config']['resolution']} px, {r['scored_views']}; meta-training "
           + ", ".join(f"{v['learner']['kind']} on {v['class']}: {v['outer_steps']} outer steps "
                       f"({v['wall_seconds'] / 60:.1f} min)" for v in m.values())
           + ".", ""]
    out += _table(["class", "views", "init", *steps],
                  [[c, v, i, *(f"{cell[c, v, i, s]['novel_psnr']:.2f} / {cell[c, v, i, s]['novel_ssim']:.3f}"
                               if (c, v, i, s) in cell else "—" for s in steps)] for c, v, i in keys])
    out += ["", *_table(["class", "all background", "mean training image"],
                        [[c, f"{b['background']['novel_psnr']:.2f} / {b['background']['novel_ssim']:.3f}",
                          f"{b['mean_image']['novel_psnr']:.2f} / {b['mean_image']['novel_ssim']:.3f}"]
                         for c, b in r["baselines"].items()])]
    out += [] if not r["targets"] else ["", *_table(["target", "value", "needs", "met"],
                        [[t["target"], "never" if t["value"] is None else t["value"], t["needs"],
                          "yes" if t["met"] else "**no**"]
                         for t in r["targets"]])]
    return out


def timeseries(r: dict) -> list[str]:
    steps = r["config"]["steps"]
    rows = {(x["task"], x["field"], x["init"] if x["init"] == "random" else x["learner"], x["steps"]): x
            for x in r["rows"]}
    keys = sorted({k[:3] for k in rows}, key=lambda k: (k[0] != "video", k[2] != "random", k))
    out = []
    for task in ("video", "audio"):
        size = next(x["size"] for x in r["rows"] if x["task"] == task)
        out += ["", f"**{task}** ({size}), held-out PSNR (dB) after n test steps"
                + (" (last column: SSIM after 2 / 16 steps)" if task == "video" else "") + ":", ""]
        body = []
        for k in (k for k in keys if k[0] == task):
            cells = [f"{rows[(*k, s)]['psnr']:.2f}" for s in steps]
            if task == "video" and "ssim" in rows[(*k, 2)]:
                cells += [f"{rows[(*k, 2)]['ssim']:.3f} / {rows[(*k, 16)]['ssim']:.3f}"]
            body.append([k[1], k[2], *cells])
        out += _table(["field", "init / learner", *steps, *(["SSIM 2 / 16"] if task == "video" else [])], body)

    def at(task, field, who, step):
        x = rows.get((task, field, who, step))
        return None if x is None else x["psnr"]

    def diff(a, b):
        return "n/a" if a is None or b is None else f"{a - b:+.2f}"

    out += ["", "Targets:", ""]
    for task in ("video", "audio"):
        out.append(f"- {task}: Meta-SGD (the preset) − random after 2 steps: "
                   f"{diff(at(task, 'siren', 'metasgd_k2', 2), at(task, 'siren', 'random', 2))} dB (target ≥ +5)")
    out.append(f"- video: GradNCP K=16 − MAML K=4 after 16 steps: SIREN "
               f"{diff(at('video', 'siren', 'gradncp_k16', 16), at('video', 'siren', 'maml_k4', 16))}, NeRV "
               f"{diff(at('video', 'nerv', 'gradncp_k16', 16), at('video', 'nerv', 'maml_k4', 16))} dB (target ≥ +1)")
    for who in ("maml_k4", "gradncp_k16"):
        out.append(f"- video: NeRV − SIREN, {who}, after 2 / 16 steps: "
                   f"{diff(at('video', 'nerv', who, 2), at('video', 'siren', who, 2))} / "
                   f"{diff(at('video', 'nerv', who, 16), at('video', 'siren', who, 16))} dB (target ≥ 0)")
    out.append(f"- audio: GradNCP K=16 − MAML K=4 after 16 steps: "
               f"{diff(at('audio', 'siren', 'gradncp_k16', 16), at('audio', 'siren', 'maml_k4', 16))} dB (target ≥ +1)")
    out.append(f"- audio: TransINR − MAML K=4 at 0 steps: "
               f"{diff(at('audio', 'pe', 'transinr', 0), at('audio', 'siren', 'maml_k4', 0))} dB (target > 0)")
    if "memory" in r:
        sizes = list(dict.fromkeys(x["size"] for x in r["memory"]))
        mem = {(x["size"], x["learner"]): x for x in r["memory"]}
        learners = list(dict.fromkeys(x["learner"] for x in r["memory"]))
        out += ["", "Peak memory of one outer step (MB above the RSS before it; SIREN 4×128, meta-batch 2, fresh "
                "process; `_loop`: every inner step's graph kept, no recomputation):", ""]
        out += _table(["learner", *sizes], [[who, *(f"{mem[(sz, who)]['peak_mb']:.0f}" if mem[(sz, who)]["peak_mb"]
                                                    is not None else (mem[(sz, who)]["error"] or "-") for sz in sizes)]
                                            for who in learners])
        out += ["", f"Largest clip under {r['config']['memory']['budget_gib']} GiB: "
                + ", ".join(f"{k} {v}" for k, v in r["largest_under_budget"].items())
                + "; MAML K=4 fits GradNCP K=16's largest: "
                + ", ".join(f"{k} {v}" for k, v in r["maml_k4_fits_gradncp_largest"].items()) + "."]
    return out


RENDERERS = {"image_meta": image_meta, "transinr": transinr, "sparse": sparse, "gradncp": gradncp, "ct": ct,
             "core": core, "speed": speed, "views": views, "timeseries": timeseries}


def plots() -> None:
    """PSNR-vs-steps plot of the image_meta run."""
    from metainr.plot import plot_psnr_curves

    path = RESULTS / "image_meta.json"
    if path.is_file():
        r = json.loads(path.read_text())
        plot_psnr_curves(r["steps"], r["psnr"], RESULTS / "image_meta.png",
                         title=f"held-out {r['config']['data']} {r['config']['resolution']}px: PSNR vs test steps")


def main() -> None:
    import sys

    args = sys.argv[1:]
    if "--plots" in args:
        plots()
    files = [Path(a) for a in args if a != "--plots"]
    if files:
        for path in files:
            kind = next((k for k in RENDERERS if path.stem.startswith(k)), None)
            if kind is None:
                sys.exit(f"report.py: cannot tell which benchmark {path} is (name it like {sorted(RENDERERS)})")
            print(f"### {kind}\n")
            print("\n".join(RENDERERS[kind](json.loads(path.read_text()))))
            print()
        return
    for name, render in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if path.is_file():
            print(f"### {name}\n")
            print("\n".join(render(json.loads(path.read_text()))))
            print()


if __name__ == "__main__":
    main()
