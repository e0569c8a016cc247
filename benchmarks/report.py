"""Render the committed benchmark JSON files as the markdown tables (and plots) of the README.

    python benchmarks/report.py [--plots]   # markdown for every results/*.json present;
                                            # --plots also writes results/image_meta.png
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

    if "--plots" in sys.argv[1:]:
        plots()
    for name, render in (("image_meta", image_meta), ("transinr", transinr), ("sparse", sparse)):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            print(f"### {name}\n")
            print("\n".join(render(json.loads(path.read_text()))))
            print()


if __name__ == "__main__":
    main()
