"""Benchmark: speed and memory of meta-training at every size, against the published GradNCP code (issue #13).

    python benchmarks/speed.py --peer DIR [--out benchmarks/results/speed.json]   # the full run
    python benchmarks/speed.py --smoke [--peer DIR]     # tiny sizes, no warm-up, 1 timed step, no suite
    python benchmarks/speed.py --skip-demo --skip-suite --skip-reach             # steps, fit, peer only
    python benchmarks/speed.py --only-reach --threads 1 --out R.json; python benchmarks/speed.py --reach-from R.json

``--peer DIR``: a checkout or plain export of https://github.com/jihoontack/GradNCP, or its bare git
directory (e.g. the lead's mirror ``/work/.mirror/jihoontack+GradNCP/repo``), whose HEAD is then
exported (``git archive``) into a temp dir removed at the end. The peer's code is only ever read
from there: nothing of it is copied into this repository. Its one dependency missing from our venv,
``einops``, is installed with pip into a temp dir for the peer's processes when absent.

Every measurement runs in a FRESH process (``benchmarks/_speed_worker.py``; ``PYTHONPATH=src``,
cwd a temp dir, ``--threads`` torch threads), one after another; a measurement that fails is recorded
as ``{"error": <last stderr line>}`` and the rest go on. Each record also keeps ``wall_seconds`` (the
whole process) and ``load_1min`` (the 1-minute load average when it started: other processes on
the machine slow small steps most, since 2 OpenMP threads spin-wait for a core).

JSON keys:

- ``config``: every size and setting of the run: ``steps`` (config key -> ``label``, ``side``,
  ``channels``, ``width``, ``depth`` (linear layers, output included; SIREN w0 30), ``batch`` B,
  ``k`` (inner steps of maml, metasgd, reptile), ``k_gradncp``), ``learners``, ``peer_configs``,
  ``warmup`` / ``repeats`` / ``budget_s`` (timing rule, see the worker), ``e_memory_cap_mb`` and
  ``e_as_limit_gib``, ``fit`` (key -> side, channels, width, depth, batch, steps), ``reach``,
  ``matmul_n``, ``threads``, ``smoke``, ``timeouts_s``.
- ``machine``: python, torch, cpu, threads (torch threads of the workers), ``cpu_count``, ``env``
  (OMP / MKL / MALLOC variables the workers inherit: ``OMP_WAIT_POLICY=PASSIVE`` spares small steps
  the spin-waiting that makes them several times slower on a busy machine).
- ``load_average``: 1/5/15-min at the start and the end.
- ``matmul_gflops``: ``start`` and ``end`` (fresh processes, ``_common.matmul_gflops(matmul_n)``,
  best fp32 n x n matmul rate at ``threads``) and ``used`` = the larger, the rate MFU is against.
- ``steps``: config key -> learner (maml, metasgd, reptile, gradncp) -> one outer step of
  ``learner.meta_gradient(task, batch)`` (outer backward included, no optimiser step) on random
  images: ``seconds`` (median of the timed steps), ``seconds_all``, ``cpu_seconds``, ``warmup``,
  ``timed``, ``peak_rss_mb`` (ru_maxrss of the process: imports + data + steps),
  ``rss_before_steps_mb``, ``batching`` (``learner.config.batching`` read at run time),
  ``batching_used`` (``learner.batching_for(task, batch)`` where it exists, e.g. for ``auto``; reptile:
  vmap unless its context policy prunes), ``learner`` (its config +
  context as built), ``gflop`` (analytic, below), ``mfu`` = gflop / seconds / matmul_gflops.used;
  or ``{"skipped": reason}`` (config e when the peak RSS estimated from c and d passes
  ``e_memory_cap_mb``); ``e_memory_estimate``: learner -> estimated peak RSS (MB) of config e,
  linear in pixels through c and d.
- ``peer``: ``source`` (path, commit, how it was obtained, einops), ``guards`` (what the worker
  changed at run time for a CPU: ``torch.cuda.synchronize`` a no-op; a ``torch.utils.tensorboard``
  stub when tensorboard is missing), ``configs``: config key -> ``maml`` / ``gradncp`` -> the
  peer's own ``train_step`` (maml.py; maml_boot.py with sample_type gradncp, data_ratio 0.25, 5
  bootstrap steps at lr 5e-2, lambda 100) timed like ours (its step also does Adam, clipping and
  ``.item()`` logging), + ``ratio_seconds`` / ``ratio_peak_rss`` = metainr / peer for the same
  learner and config; or ``{"skipped": reason}``.
- ``compile``: config key (a, b, c) -> maml (second order) / fomaml (first order) (+ gradncp at a, b,
  where it vmaps) -> ``eager`` and
  ``compiled`` (the step record above, the learner built with ``compile=True``: batching auto, so the
  vmapped meta-batch at 25², each signal's inner loop at 64²; ``compiled`` names what was compiled, or
  False when compiling failed), ``ratio_seconds`` / ``ratio_peak_rss`` = compiled / eager and
  ``compile_seconds`` (the first warm-up step minus an eager step: the one-off compile).
- ``fit``: key (25, 64, 178) -> ``metainr.fit`` of B random images from a random SIREN init, Adam
  lr 1e-3: ``seconds``, ``signal_steps_per_second`` (B x steps / seconds), ``gflop``, ``mfu``,
  ``peak_rss_mb``, ``final_mean_psnr``. 64² uses the 5x256 field of configs c-e (the CelebA field),
  so that fitting and meta-training are measured on the same network.
- ``reach``: ``gradncp_k4`` / ``maml_k4`` -> ``tries`` (side, seconds, peak_rss_mb, ok or error;
  ONE outer step each, no warm-up, fresh process with RLIMIT_AS = ``as_limit_gib``), ``largest_side``
  (the largest side whose step stayed under ``budget_gib`` GiB peak RSS; None: not even the first),
  ``stopped`` (why the sweep ended). SIREN 5x256, B=4, RGB, K=4, batching auto (``recompute`` past
  its memory budget, so memory stays flat; MAML's sweep stops at 512² for time: a second-order step
  on every row of a 1024² signal would take ~15 min here).
- ``demo``: ``python -m metainr.cli --threads N demo --out TMP`` (``--quick`` with ``--smoke``) in a
  fresh process: ``wall_seconds``, ``quick``, ``headline`` and ``meta_train_seconds`` from its
  summary.json (``make demo`` adds only the venv check and ``--verbose``).
- ``suite``: ``python -m pytest -p no:cacheprovider`` (``-q`` from pyproject) in the repository (fresh process):
  ``wall_seconds``, passed / failed / skipped / errors / xfailed / xpassed, ``summary``.
- ``targets``: the issue's targets, each ``rule``, its numbers (``cells`` or ``value``) and ``met``
  (True / False; None where not measured): ``peer_half_time_no_more_memory`` (maml and gradncp at the
  peer's configs: ratio_seconds <= 0.5 and ratio_peak_rss <= 1), ``mfu_cpu_50pct_64_and_above``
  (every learner at configs c, d, e: 64² and above), ``demo_under_180_s`` (full demo only),
  ``suite_under_180_s``, ``gradncp_reach_1024`` (the aim of the memory reach). A cell list is met
  when every cell is measured and met, not met when a measured one fails, else None.
  With ``--smoke`` the sizes are not the issue's: the flags only exercise the code.
- ``met``: target -> its ``met`` flag. ``total_seconds``, ``logs`` (every worker's output).

Analytic FLOPs (matmul only, ``2 * rows * in * out`` per linear layer per forward pass F(rows); a
backward pass 2F, so a forward + backward pass is 3F; N = side² rows per signal, times B signals):
- maml, metasgd (second order): per inner step 3F(N) (forward + backward with create_graph) + 6F(N)
  (the outer pass back through that step's forward and backward, counted as twice its cost); the
  outer loss at theta_K: 3F(N). Per signal: 9K F(N) + 3F(N). (First order: 3K F(N) + 3F(N).)
- gradncp (maml + gradnorm context + bootstrap): per inner step F(N) (the closed-form score: one
  forward of every row, no backward) + 9F(n) on the n = ceil(0.25 N) kept rows; outer 3F(N); the
  bootstrap's L = 5 first-order full passes reuse the outer gradient for the first: (L-1) 3F(N).
- reptile: K first-order steps, 3K F(N) (its outer "gradient" is a parameter difference).
- fit: steps x 3F(N) + 2F(N) (the last step's loss and PSNR forwards).
These are the algorithm's FLOPs: work a batching mode redoes (``recompute``'s second pass over the
inner steps) is not counted, so MFU measures useful work.

Wall time of the full run on 2 quiet cores, estimated from the issue's table (effective ~80 GFLOP/s
on the large steps) and the warm-up / budget rule: outer steps of configs a-e about 15 min (a, b:
under a minute; c ~1.5 min; d ~5.5 min; e ~7 min: 178² MAML ~28 s and GradNCP K=16 ~47 s a step),
the peer about 7.5 min (its 128² steps take ~55 s, 3 each), fit ~1 min, the demo ~5 min, the suite
~2 min, the memory reach ~20 min (one step per side: GradNCP K=4 ~0.2, 0.7, 3, 11 min at
128, 256, 512, 1024; MAML ~0.1, 1, 4 min at 128, 256, 512): about 50-60 min in all,
30 min with ``--skip-reach``. ``--smoke``: ~37 fresh processes (~1.5 s of imports each) and a
~40 s ``demo --quick``, about 2 min quiet; other processes on the machine stretch every part (the
smoke took 5-7 min at a load average of 5-7 on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from core import last_line, pytest_counts, run_logged  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_speed_worker.py"
LEARNERS = ["maml", "metasgd", "reptile", "gradncp"]
MFU_CONFIGS = ("c", "d", "e")
"""the configs at 64² and above (smoke: their tiny stand-ins), where the MFU target applies"""


def _step(label, side, channels, width, depth, batch, k, k_gradncp) -> dict:
    return dict(label=label, side=side, channels=channels, width=width, depth=depth, batch=batch, k=k,
                k_gradncp=k_gradncp)


def settings(smoke: bool, threads: int) -> dict:
    """Everything that defines a run (stored as ``config``)."""
    if smoke:
        steps = {"a": _step("12² grey, SIREN 4×16, B=4, K=2", 12, 1, 16, 4, 4, 2, 2),
                 "b": _step("12² grey, SIREN 4×16, B=8, K=2", 12, 1, 16, 4, 8, 2, 2),
                 "c": _step("16² RGB, SIREN 5×32, B=2, K=2 (GradNCP K=3)", 16, 3, 32, 5, 2, 2, 3),
                 "d": _step("24² RGB, SIREN 5×32, B=2, K=2 (GradNCP K=3)", 24, 3, 32, 5, 2, 2, 3),
                 "e": _step("32² RGB, SIREN 5×32, B=2, K=2 (GradNCP K=3)", 32, 3, 32, 5, 2, 2, 3)}
        fits = {"25": dict(side=12, channels=1, width=16, depth=4, batch=8, steps=5),
                "64": dict(side=16, channels=3, width=32, depth=5, batch=4, steps=3),
                "178": dict(side=32, channels=3, width=32, depth=5, batch=2, steps=3)}
        reach = dict(sides=dict(gradncp=[16, 32], maml=[16, 32]), channels=3, width=32, depth=5, batch=4, k=4, budget_gib=4, as_limit_gib=8)
        timing = dict(warmup=0, repeats=1, budget_s=5.0)
        timeouts = dict(step=300, peer=300, fit=300, reach=300, demo=600, suite=0, matmul=120)
        matmul_n = 1024
    else:
        steps = {"a": _step("25² grey, SIREN 4×32, B=8, K=3 (the demo's)", 25, 1, 32, 4, 8, 3, 3),
                 "b": _step("25² grey, SIREN 4×32, B=32, K=3", 25, 1, 32, 4, 32, 3, 3),
                 "c": _step("64² RGB, SIREN 5×256, B=4, K=4 (GradNCP K=16)", 64, 3, 256, 5, 4, 4, 16),
                 "d": _step("128² RGB, SIREN 5×256, B=4, K=4 (GradNCP K=16)", 128, 3, 256, 5, 4, 4, 16),
                 "e": _step("178² RGB (CelebA), SIREN 5×256, B=4, K=4 (GradNCP K=16)", 178, 3, 256, 5, 4, 4, 16)}
        fits = {"25": dict(side=25, channels=1, width=32, depth=4, batch=32, steps=300),
                "64": dict(side=64, channels=3, width=256, depth=5, batch=8, steps=20),
                "178": dict(side=178, channels=3, width=256, depth=5, batch=2, steps=10)}
        reach = dict(sides=dict(gradncp=[128, 256, 512, 1024], maml=[128, 256, 512]), channels=3, width=256, depth=5, batch=4, k=4,
                     budget_gib=4, as_limit_gib=8)
        timing = dict(warmup=2, repeats=5, budget_s=60.0)
        timeouts = dict(step=1800, peer=1800, fit=1800, reach=3600, demo=1800, suite=1800, matmul=300)
        matmul_n = 2048
    # (config, learner) pairs measured eager and compiled; GradNCP compiles only where it vmaps (small signals)
    compile_cfg = [(k, learner) for k in (["a", "c"] if smoke else ["a", "b", "c"]) for learner in ("maml", "fomaml")]
    compile_cfg += [(k, "gradncp") for k in (["a"] if smoke else ["a", "b"])]
    return dict(steps=steps, learners=LEARNERS, peer_configs=["a", "c", "d"], compile=compile_cfg, **timing,
                e_memory_cap_mb=8000, e_as_limit_gib=12, fit=fits, reach=reach, matmul_n=matmul_n, threads=threads,
                smoke=smoke, timeouts_s=timeouts)


# ------------------------------------------------------------------------------------------ FLOPs
def forward_flops(rows: int, channels: int, width: int, depth: int, in_dim: int = 2) -> int:
    """Matmul FLOPs of one forward pass of a ``depth``-layer MLP on ``rows`` coordinates."""
    dims = [in_dim] + [width] * (depth - 1) + [channels]
    return sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:]))


def kept_rows(n: int, keep_ratio: float) -> int:
    """ceil(gamma * n), at least 1 (as ``metainr.meta.kept_count``)."""
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


def step_flops(shape: dict, learner: dict) -> int:
    """Analytic FLOPs of one outer step (module docstring) from the learner's settings as built."""
    n = shape["side"] ** 2
    f = lambda rows: forward_flops(rows, shape["channels"], shape["width"], shape["depth"])  # noqa: E731
    k = learner["inner_steps"]
    if learner["kind"] == "reptile":
        per = 3 * k * f(n)
    else:
        prunes = learner.get("policy", "all") != "all"
        inner = kept_rows(n, learner["keep_ratio"]) if prunes else n
        per_step = 3 * f(inner) + (0 if learner.get("first_order") else 6 * f(inner))
        per_step += f(n) if learner.get("policy") == "gradnorm" else 0
        per = k * per_step + 3 * f(n)
        if learner.get("boot_steps") and learner.get("boot_weight"):
            per += 3 * (learner["boot_steps"] - 1) * f(n)
    return shape["batch"] * per


def fit_flops(shape: dict) -> int:
    f = forward_flops(shape["side"] ** 2, shape["channels"], shape["width"], shape["depth"])
    return shape["batch"] * (shape["steps"] * 3 * f + 2 * f)


# ------------------------------------------------------------------------------------------ running
class Runner:
    """Fresh worker processes: cwd a temp dir, logs kept, every failure one line."""

    def __init__(self, args, work: Path, logs: Path):
        self.args, self.work, self.logs, self.count = args, work, logs, 0

    def env(self, pythonpath: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, "PYTHONPATH": pythonpath}

    def run(self, name: str, argv: list[str], timeout: float, pythonpath: str | None = None,
            cwd: Path | None = None) -> dict:
        """Run a command; its last stdout line as JSON + wall_seconds, load_1min; or {"error": ...}."""
        self.count += 1
        load = round(os.getloadavg()[0], 2)
        cmd = [sys.executable, *argv]
        err, wall, stdout = run_logged(cmd, cwd=cwd or self.work, env=self.env(pythonpath or str(REPO / "src")),
                                       timeout=timeout, log=self.logs / f"{self.count:03d}_{name}.log")
        if err:
            return {**err, "wall_seconds": wall, "load_1min": load}
        try:
            out = json.loads(last_line(stdout))
        except ValueError:
            return {"error": "the worker printed no JSON", "wall_seconds": wall, "load_1min": load}
        return {**out, "wall_seconds": wall, "load_1min": load}

    def worker(self, name: str, what: str, options: dict, timeout: float, pythonpath: str | None = None) -> dict:
        argv = [str(WORKER), what, "--threads", str(self.args.threads)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return self.run(name, argv, timeout, pythonpath)


def shape_options(shape: dict) -> dict:
    return {k: shape[k] for k in ("side", "channels", "width", "depth", "batch")}


def fmt(v, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def describe(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    return (f"{fmt(r.get('seconds'))} s, {fmt(r.get('peak_rss_mb'), '.0f')} MB"
            + (f", batching {r['batching_used']}" if r.get("batching_used") else "")
            + f" ({r.get('timed')} timed, load {r.get('load_1min')})")


# ------------------------------------------------------------------------------------------ peer
def git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def prepare_peer(path: Path, work: Path, logs: Path) -> tuple[dict, Path | None, str]:
    """(source record, peer tree or None, PYTHONPATH of its processes)."""
    source: dict = {"given": str(path)}
    if (path / "models" / "model.py").is_file():
        tree = path
        source["how"] = "used in place (a checkout / export)"
        if (path / ".git").exists():
            head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
            source["commit"] = head.stdout.strip() or None
    elif git_dir(path):
        tree = work / "peer"
        tree.mkdir()
        archive = subprocess.run(["git", f"--git-dir={path}", "archive", "--format=tar", "HEAD"], capture_output=True)
        if archive.returncode != 0:
            return {**source, "error": f"git archive failed: {last_line(archive.stderr.decode())}"}, None, ""
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        head = subprocess.run(["git", f"--git-dir={path}", "rev-parse", "HEAD"], capture_output=True, text=True)
        source.update(how="HEAD exported with git archive into a temp dir", commit=head.stdout.strip() or None)
    else:
        return {**source, "error": "neither a GradNCP checkout (models/model.py) nor a git directory"}, None, ""
    source["path"] = str(tree)
    pythonpath = str(tree)
    probe = subprocess.run([sys.executable, "-c", "import einops"], capture_output=True, cwd=work)
    if probe.returncode != 0:
        deps = work / "peer_deps"
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(deps), "einops"],
                             capture_output=True, text=True)
        (logs / "peer_pip.log").write_text(pip.stdout + pip.stderr)
        if pip.returncode != 0:
            return {**source, "error": f"einops could not be installed: {last_line(pip.stderr)}"}, None, ""
        source["deps"] = "einops installed with pip into a temp dir (missing from the venv)"
        pythonpath += os.pathsep + str(deps)
    return source, tree, pythonpath


# ------------------------------------------------------------------------------------------ targets
def cells_met(cells: list[dict]) -> bool | None:
    """True: every cell measured and met; False: a measured cell fails; None otherwise."""
    flags = [c.get("met") for c in cells]
    if any(f is False for f in flags):
        return False
    return True if flags and all(f is True for f in flags) else None


def targets(result: dict, cfg: dict) -> dict:
    peer_cells = []
    for key in cfg["peer_configs"]:
        for learner in ("maml", "gradncp"):
            p = result.get("peer", {}).get("configs", {}).get(key, {}).get(learner, {})
            rs, rm = p.get("ratio_seconds"), p.get("ratio_peak_rss")
            met = None if rs is None or rm is None else (rs <= 0.5 and rm <= 1.0)
            peer_cells.append({"config": key, "learner": learner, "ratio_seconds": rs, "ratio_peak_rss": rm,
                               "met": met})
    mfu_cells = []
    for key in MFU_CONFIGS:
        for learner in cfg["learners"]:
            m = result["steps"].get(key, {}).get(learner, {}).get("mfu")
            mfu_cells.append({"config": key, "learner": learner, "mfu": m, "met": None if m is None else m >= 0.5})
    demo, suite = result.get("demo", {}), result.get("suite", {})
    demo_s = demo.get("wall_seconds") if not demo.get("quick") and "error" not in demo else None
    suite_s = suite.get("wall_seconds") if "summary" in suite and not suite.get("failed") else None
    reach = result.get("reach", {}).get("gradncp_k4", {})
    largest = reach.get("largest_side") if "tries" in reach else None
    out = {
        "peer_half_time_no_more_memory": {
            "rule": "metainr seconds <= 0.5 x the peer's and peak RSS <= the peer's (maml, gradncp; configs "
                    + ", ".join(cfg["peer_configs"]) + ")", "cells": peer_cells, "met": cells_met(peer_cells)},
        "mfu_cpu_50pct_64_and_above": {
            "rule": "MFU >= 0.5 on CPU at 64² and above (configs c, d, e; every learner)", "cells": mfu_cells,
            "met": cells_met(mfu_cells)},
        "demo_under_180_s": {"rule": "metainr demo (full) wall <= 180 s", "value": demo_s,
                             "met": None if demo_s is None else demo_s <= 180},
        "suite_under_180_s": {"rule": "test suite wall <= 180 s, all passing", "value": suite_s,
                              "met": None if suite_s is None else suite_s <= 180},
        "gradncp_reach_1024": {"rule": "one GradNCP K=4 outer step (5x256, B=4, RGB) at 1024² under 4 GiB peak RSS",
                               "value": largest, "met": None if "tries" not in reach else (largest or 0) >= 1024},
    }
    if cfg["smoke"]:
        for t in out.values():
            t["note"] = "smoke run: sizes are not the issue's"
    return out


# ------------------------------------------------------------------------------------------ parts
def estimate_e(steps: dict, cfg: dict, learner: str) -> float | None:
    """Peak RSS (MB) of config e, linear in pixels through configs c and d (None: not measurable)."""
    c, d = steps.get("c", {}).get(learner, {}), steps.get("d", {}).get(learner, {})
    if "peak_rss_mb" not in c or "peak_rss_mb" not in d:
        return None
    nc, nd, ne = (cfg["steps"][k]["side"] ** 2 for k in ("c", "d", "e"))
    slope = (d["peak_rss_mb"] - c["peak_rss_mb"]) / (nd - nc)
    return round(d["peak_rss_mb"] + slope * (ne - nd), 1)


def run_steps(runner: Runner, cfg: dict, result: dict, peer: dict, peer_path: str) -> None:
    steps, timing = result["steps"], {k: cfg[k] for k in ("warmup", "repeats")}
    timing["budget"] = cfg["budget_s"]
    estimates = result.setdefault("e_memory_estimate", {})
    for key, shape in cfg["steps"].items():
        steps[key] = {}
        for learner in cfg["learners"]:
            k = shape["k_gradncp"] if learner == "gradncp" else shape["k"]
            options = {**shape_options(shape), "learner": learner, "inner_steps": k, **timing}
            if key == "e":
                est = estimates[learner] = estimate_e(steps, cfg, learner)
                if est is not None and est > cfg["e_memory_cap_mb"]:
                    steps[key][learner] = {"skipped": f"estimated peak RSS {est:.0f} MB > {cfg['e_memory_cap_mb']} "
                                                      "MB (linear in pixels through configs c and d)"}
                    print(f"step {key}/{learner}: {describe(steps[key][learner])}", flush=True)
                    continue
                options["as_limit_gib"] = cfg["e_as_limit_gib"]
            r = runner.worker(f"step_{key}_{learner}", "step", options, cfg["timeouts_s"]["step"])
            steps[key][learner] = r
            print(f"step {key}/{learner} (K={k}): {describe(r)}", flush=True)
        if peer_path and key in cfg["peer_configs"]:
            peer["configs"][key] = {}
            for mode in ("maml", "gradncp"):
                k = shape["k_gradncp"] if mode == "gradncp" else shape["k"]
                options = {**shape_options(shape), "mode": mode, "inner_steps": k, **timing,
                           "peer": peer["source"]["path"]}
                r = runner.worker(f"peer_{key}_{mode}", "peer", options, cfg["timeouts_s"]["peer"], peer_path)
                ours = steps[key].get(mode, {})
                if "seconds" in r and "seconds" in ours:
                    r["ratio_seconds"] = round(ours["seconds"] / r["seconds"], 3)
                    r["ratio_peak_rss"] = round(ours["peak_rss_mb"] / r["peak_rss_mb"], 3)
                peer["guards"] = r.get("guards", peer.get("guards"))
                peer["configs"][key][mode] = r
                print(f"peer {key}/{mode} (K={k}): {describe(r)}"
                      + (f"; metainr/peer {r['ratio_seconds']} s, {r['ratio_peak_rss']} RSS"
                         if "ratio_seconds" in r else ""), flush=True)


def run_compile(runner: Runner, cfg: dict) -> dict:
    """Eager vs ``compile=True`` for second-order (maml) and first-order (fomaml) steps, each in a
    fresh process, paired config by config: ``ratio_seconds`` = compiled / eager."""
    timing = {k: cfg[k] for k in ("warmup", "repeats")}
    timing["budget"] = cfg["budget_s"]
    out: dict = {}
    for key, learner in cfg["compile"]:
        shape = cfg["steps"][key]
        out.setdefault(key, {})
        pair = {}
        for compiled in (0, 1):
            k = shape["k_gradncp"] if learner == "gradncp" else shape["k"]
            options = {**shape_options(shape), "learner": learner, "inner_steps": k, **timing, "compile": compiled}
            r = runner.worker(f"compile_{key}_{learner}_{compiled}", "step", options, cfg["timeouts_s"]["step"])
            pair["compiled" if compiled else "eager"] = r
            print(f"compile {key}/{learner} {'compiled' if compiled else 'eager'}: {describe(r)}"
                  + (f", compiled {r.get('compiled')}" if compiled else ""), flush=True)
        e, c = pair["eager"], pair["compiled"]
        if "seconds" in e and "seconds" in c:
            pair["ratio_seconds"] = round(c["seconds"] / e["seconds"], 3)
            pair["ratio_peak_rss"] = round(c["peak_rss_mb"] / e["peak_rss_mb"], 3)
            first = c.get("warmup_seconds") or [None]  # no warm-up (smoke): the compile is in the timed step
            pair["compile_seconds"] = None if first[0] is None else round(first[0] - e["seconds"], 1)
        out[key][learner] = pair
    return out


def run_fit(runner: Runner, cfg: dict) -> dict:
    out = {}
    for key, shape in cfg["fit"].items():
        r = runner.worker(f"fit_{key}", "fit", {**shape_options(shape), "steps": shape["steps"]},
                          cfg["timeouts_s"]["fit"])
        out[key] = {**shape, **r}
        print(f"fit {key}: " + (f"error: {r['error']}" if "error" in r else
                                f"{fmt(r['seconds'])} s, {fmt(r['signal_steps_per_second'], '.1f')} signal-steps/s, "
                                f"{fmt(r['peak_rss_mb'], '.0f')} MB"), flush=True)
    return out


def run_reach(runner: Runner, cfg: dict) -> dict:
    rc = cfg["reach"]
    out = {}
    for name, learner in (("gradncp_k4", "gradncp"), ("maml_k4", "maml")):
        tries, largest, stopped = [], None, "every side fitted"
        for side in rc["sides"][learner]:
            options = {"side": side, "channels": rc["channels"], "width": rc["width"], "depth": rc["depth"],
                       "batch": rc["batch"], "learner": learner, "inner_steps": rc["k"], "warmup": 0, "repeats": 1,
                       "budget": 0, "as_limit_gib": rc["as_limit_gib"]}
            r = runner.worker(f"reach_{name}_{side}", "step", options, cfg["timeouts_s"]["reach"])
            t = {"side": side, **{k: r[k] for k in ("seconds", "peak_rss_mb", "rss_before_steps_mb", "error",
                                                    "wall_seconds", "load_1min") if k in r}}
            t["ok"] = "error" not in r and r["peak_rss_mb"] <= rc["budget_gib"] * 1024
            tries.append(t)
            print(f"reach {name} {side}²: " + (f"error: {r['error']}" if "error" in r else
                                                f"{fmt(r['seconds'], '.1f')} s, {fmt(r['peak_rss_mb'], '.0f')} MB"
                                                + ("" if t["ok"] else " (over budget)")), flush=True)
            if not t["ok"]:
                stopped = f"{side}²: " + (r["error"] if "error" in r else
                                          f"peak RSS {r['peak_rss_mb']:.0f} MB > {rc['budget_gib']} GiB")
                break
            largest = side
        out[name] = {"learner": learner, "tries": tries, "largest_side": largest, "stopped": stopped}
    return out


def run_demo(runner: Runner, cfg: dict) -> dict:
    out_dir = runner.work / "demo"
    argv = ["-m", "metainr.cli", "--threads", str(cfg["threads"]), "demo", "--out", str(out_dir)]
    quick = cfg["smoke"]
    argv += ["--quick"] if quick else []
    runner.count += 1
    load = round(os.getloadavg()[0], 2)
    err, wall, _ = run_logged([sys.executable, *argv], cwd=runner.work, env=runner.env(str(REPO / "src")),
                              timeout=cfg["timeouts_s"]["demo"], log=runner.logs / f"{runner.count:03d}_demo.log")
    command = f"python -m metainr.cli --threads {cfg['threads']} demo --out TMP" + (" --quick" if quick else "")
    out = {"command": command, "wall_seconds": wall, "quick": quick, "load_1min": load}
    if err:
        return {**out, **err}
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        out.update(headline=summary.get("headline"), meta_train_seconds=summary.get("meta_train_seconds"),
                   total_seconds=summary.get("total_seconds"))
    except (OSError, ValueError) as exc:
        out["error"] = f"no summary.json: {exc}"
    return out


def run_suite(runner: Runner, cfg: dict) -> dict:
    runner.count += 1
    log = runner.logs / f"{runner.count:03d}_pytest.log"
    load = round(os.getloadavg()[0], 2)
    err, wall, _ = run_logged([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=REPO,
                              env=runner.env(str(REPO / "src")), timeout=cfg["timeouts_s"]["suite"], log=log)
    out = {**pytest_counts(log.read_text()), "wall_seconds": wall, "load_1min": load}
    if err and not out["summary"]:
        out["error"] = err["error"]
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 timed step, demo --quick, no suite")
    ap.add_argument("--peer", type=Path, default=None, help="GradNCP checkout / export / bare git dir")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/speed.json (smoke: runs/speed_smoke.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-suite", action="store_true")
    ap.add_argument("--skip-reach", action="store_true")
    ap.add_argument("--only-reach", action="store_true", help="measure the memory reach alone (e.g. at --threads 1 "
                    "beside another job: it measures memory, and its step times are recorded as such)")
    ap.add_argument("--reach-from", type=Path, default=None,
                    help="take ``reach`` from an --only-reach run's JSON instead of measuring it (recorded)")
    ap.add_argument("--logs", type=Path, default=None, help="keep every worker's output here (default: a temp dir)")
    args = ap.parse_args()
    out_path = args.out or str(REPO / ("runs/speed_smoke.json" if args.smoke else "benchmarks/results/speed.json"))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = settings(args.smoke, args.threads)
    logs = (args.logs or Path(tempfile.mkdtemp(prefix="speed_logs_"))).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="speed_work_"))
    runner = Runner(args, work, logs)
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "MALLOC_", "KMP_"))}
    result: dict = {"config": cfg, "machine": {**machine(), "cpu_count": os.cpu_count(), "env": env},
                    "load_average": {"start": [round(x, 2) for x in os.getloadavg()]}, "steps": {}}
    try:
        mm = runner.worker("matmul_start", "matmul", {"n": cfg["matmul_n"]}, cfg["timeouts_s"]["matmul"])
        result["matmul_gflops"] = {"start": mm.get("gflops", mm)}
        print(f"matmul: {fmt(mm.get('gflops'), '.1f')} GFLOP/s at {args.threads} threads", flush=True)

        peer: dict = {}
        peer_path = ""
        if args.peer is None:
            peer = {"skipped": "no --peer given"}
        else:
            source, tree, peer_path = prepare_peer(args.peer.resolve(), work, logs)
            peer = {"source": source, "configs": {}}
            if tree is None:
                peer = {"source": source, "skipped": source["error"]}
            print(f"peer: {source}", flush=True)
        result["peer"] = peer
        if not args.only_reach:
            run_steps(runner, cfg, result, peer, peer_path if "configs" in peer else "")
            result["compile"] = run_compile(runner, cfg)
            result["fit"] = run_fit(runner, cfg)
        if args.reach_from:
            earlier = json.loads(args.reach_from.read_text())
            result["reach"] = {**earlier["reach"], "source": {
                "file": str(args.reach_from), "threads": earlier["config"]["threads"],
                "load_average": earlier["load_average"], "total_seconds": earlier.get("total_seconds")}}
        else:
            result["reach"] = {"skipped": "--skip-reach"} if args.skip_reach else run_reach(runner, cfg)
        if args.skip_demo or args.only_reach:
            result["demo"] = {"skipped": "--skip-demo"}
        else:
            print("demo ...", flush=True)
            result["demo"] = run_demo(runner, cfg)
            print(f"demo: {fmt(result['demo'].get('wall_seconds'), '.1f')} s"
                  + (f" error: {result['demo']['error']}" if "error" in result["demo"] else ""), flush=True)
        if args.skip_suite or args.smoke or args.only_reach:
            result["suite"] = {"skipped": "--skip-suite" if args.skip_suite else "--smoke"}
        else:
            print("test suite ...", flush=True)
            result["suite"] = run_suite(runner, cfg)
            print(f"suite: {result['suite'].get('summary')} in {result['suite'].get('wall_seconds')} s", flush=True)
        mm = runner.worker("matmul_end", "matmul", {"n": cfg["matmul_n"]}, cfg["timeouts_s"]["matmul"])
        result["matmul_gflops"]["end"] = mm.get("gflops", mm)
        rates = [v for v in result["matmul_gflops"].values() if isinstance(v, float)]
        rate = result["matmul_gflops"]["used"] = max(rates) if rates else None
        for key, per in result["steps"].items():
            for r in per.values():
                if "seconds" in r and "learner" in r:
                    r["gflop"] = round(step_flops(cfg["steps"][key], r["learner"]) / 1e9, 4)
                    r["mfu"] = round(r["gflop"] / r["seconds"] / rate, 4) if rate else None
        for r in result.get("fit", {}).values():
            if "seconds" in r:
                r["gflop"] = round(fit_flops(r) / 1e9, 4)
                r["mfu"] = round(r["gflop"] / r["seconds"] / rate, 4) if rate else None
        result["targets"] = targets(result, cfg)
        result["met"] = {k: t["met"] for k, t in result["targets"].items()}
        result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
        result["total_seconds"] = round(time.perf_counter() - t_start, 1)
        result["logs"] = str(logs)
        write_json(out_path, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    print(f"wrote {out_path}; worker logs in {logs}")


def print_table(r: dict) -> None:
    peer = r.get("peer", {}).get("configs", {})
    print(f"\n{'config':<7}{'learner':<9}{'s/step':>9}{'MB':>7}{'GFLOP':>9}{'MFU':>7}  {'peer s':>8}{'peer MB':>8}"
          f"{'ratio s':>8}{'ratio MB':>9}")
    for key, per in r["steps"].items():
        for learner, x in per.items():
            p = peer.get(key, {}).get(learner, {})
            print(f"{key:<7}{learner:<9}{fmt(x.get('seconds')):>9}{fmt(x.get('peak_rss_mb'), '.0f'):>7}"
                  f"{fmt(x.get('gflop'), '.2f'):>9}{fmt(x.get('mfu'), '.2f'):>7}  {fmt(p.get('seconds')):>8}"
                  f"{fmt(p.get('peak_rss_mb'), '.0f'):>8}{fmt(p.get('ratio_seconds'), '.2f'):>8}"
                  f"{fmt(p.get('ratio_peak_rss'), '.2f'):>9}" + ("  " + describe(x) if "seconds" not in x else ""))
    for key, per in r.get("compile", {}).items():
        for learner, x in per.items():
            print(f"compile {key}/{learner}: eager {fmt(x['eager'].get('seconds'))} s, compiled "
                  f"{fmt(x['compiled'].get('seconds'))} s, ratio {fmt(x.get('ratio_seconds'), '.2f')}")
    for key, x in r.get("fit", {}).items():
        print(f"fit {key}: {fmt(x.get('signal_steps_per_second'), '.1f')} signal-steps/s, "
              f"MFU {fmt(x.get('mfu'), '.2f')}"
              + (f" error: {x['error']}" if "error" in x else ""))
    for name, x in r.get("reach", {}).items():
        if isinstance(x, dict) and "tries" in x:
            print(f"reach {name}: largest side {x.get('largest_side')} ({x.get('stopped')})")
    print(f"met: {r.get('met')}")


if __name__ == "__main__":
    main()
