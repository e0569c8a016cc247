"""Benchmark: many processes (issue: scale out) — torchrun with gloo on this machine's CPUs.

    python benchmarks/distributed.py [--quick] [--part all|equivalence|speed|encode] --out benchmarks/results/distributed.json

- equivalence: for every learner (maml, fomaml, metasgd, reptile, gradncp, transinr, and one
  Meta-SparseINR pruning round) the learner's tensors after 5 outer steps of ``metainr meta-train``
  in 1 process and in 2 processes (torchrun, gloo) with the same global meta-batch;
  ``equivalence_max_abs_diff`` is the largest elementwise difference. A meta-batch of 1 on 2
  processes (one process holds no signal) is one more row. A control per learner: the same run in
  one process with 1 and with 2 threads (only the float summation order differs).
- speed: seconds per outer step (the trainer's own per-step times from ``metrics.jsonl``, first
  two steps dropped) at a size where compute dominates: 1 process with 1 thread, 1 process with 2
  threads (what one process gets from this machine) and 2 processes with 1 thread each.
  ``scaling_efficiency = t(1 process, 1 thread) / (2 * t(2 processes))``.
- encode: ``metainr encode`` throughput (signals per second, whole command) with 1 and 2
  processes, and a kill-and-resume record: an encode killed (SIGKILL) after its first committed
  shard, run again, and the store checked for every signal exactly once.
``--part`` runs one section and merges it into an existing ``--out`` file. The 1-minute load
average before and after each timed section is recorded: other work on the machine shows there.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from metainr.disk import load_tensors  # noqa: E402

BASE = ["--task", "image", "--data", "faces", "--resolution", "16", "--width", "32", "--depth", "3",
        "--eval-every", "0", "--checkpoint-every", "100", "--outer-lr", "1e-3"]
LEARNERS = {  # row -> extra meta-train options (global meta-batch 4 unless given)
    "maml": ["--learner", "maml", "--inner-steps", "3"],
    "fomaml": ["--learner", "fomaml", "--inner-steps", "3"],
    "metasgd": ["--learner", "metasgd", "--inner-steps", "3"],
    "reptile": ["--learner", "reptile", "--inner-steps", "3"],
    "gradncp": ["--learner", "gradncp", "--inner-steps", "4"],
    "transinr": ["--learner", "transinr"],
    "maml_prune_round": ["--learner", "maml", "--inner-steps", "2", "--prune-rounds", "1", "--prune-steps", "2"],
    "maml_batch1_on_2": ["--learner", "maml", "--inner-steps", "3", "--batch-size", "1"],
}


def metainr(args: list[str], procs: int, threads: int, cwd: Path, timeout: float = 900) -> float:
    """Run ``metainr ARGS`` in ``procs`` processes (torchrun when more than one); seconds taken."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
              if procs > 1 else [sys.executable])
    t0 = time.perf_counter()
    proc = subprocess.run([*launch, "-m", "metainr", "--threads", str(threads), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"metainr {' '.join(args[:3])} failed: {proc.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


def final_checkpoint(run: Path) -> Path:
    rounds = sorted(run.glob("round_*.safetensors"))
    return rounds[-1] if rounds else run / "checkpoint.safetensors"


def learner_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(path)
    return {k: v.double() for k, v in tensors.items() if k.startswith("learner/")}


def equivalence(tmp: Path, steps: int) -> list[dict]:
    rows = []
    for name, extra in LEARNERS.items():
        batch = [] if "--batch-size" in extra else ["--batch-size", "4"]
        args = ["meta-train", *BASE, *batch, *extra, "--steps", str(steps)]
        runs = {}
        for key, procs, threads in (("one", 1, 1), ("two", 2, 1), ("control", 1, 2)):
            run = tmp / f"eq_{name}_{key}"
            metainr([*args, "--run-dir", str(run)], procs, threads, tmp)
            runs[key] = learner_tensors(final_checkpoint(run))
        one, two, control = runs["one"], runs["two"], runs["control"]
        diff = max(float((one[k] - two[k]).abs().max()) for k in one)
        noise = max(float((one[k] - control[k]).abs().max()) for k in one)
        rows.append({"learner": name, "outer_steps": steps, "global_batch": int((batch or extra)[-1]),
                     "compared": final_checkpoint(tmp / f"eq_{name}_one").name, "equivalence_max_abs_diff": diff,
                     "control_one_process_1_vs_2_threads_max_abs_diff": noise,
                     "max_abs_param": max(float(t.abs().max()) for t in one.values())})
        print(f"equivalence {name}: max |diff| {diff:.3g} (1 vs 2 threads: {noise:.3g})", file=sys.stderr)
    return rows


def equivalence_float64(tmp: Path, steps: int) -> list[dict]:
    """The same comparison through the library API (``_distributed_worker.py``) in float64 and
    float32: what is left in float64 is the summation order's rounding, amplified by training."""
    worker = str(Path(__file__).resolve().parent / "_distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for name in ("maml", "reptile", "transinr"):
        for dtype in ("float32", "float64"):
            outs = {}
            for procs in (1, 2):
                out = tmp / f"w_{name}_{dtype}_{procs}.safetensors"
                launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                          if procs > 1 else [sys.executable])
                proc = subprocess.run([*launch, worker, name, str(out), "--dtype", dtype, "--steps", str(steps)],
                                      capture_output=True, text=True, env=env, timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(f"worker {name} {dtype} failed: {proc.stderr.strip()[-800:]}")
                outs[procs] = load_tensors(out)[0]
            diff = max(float((outs[1][k].double() - outs[2][k].double()).abs().max()) for k in outs[1])
            rows.append({"learner": name, "dtype": dtype, "outer_steps": steps, "global_batch": 4,
                         "equivalence_max_abs_diff": diff})
            print(f"equivalence ({dtype}, library API) {name}: {diff:.3g}", file=sys.stderr)
    return rows


def step_seconds(run: Path) -> float:
    times = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = times[2:] if len(times) > 4 else times
    return sum(times) / len(times)


def speed(tmp: Path, quick: bool) -> dict:
    size = dict(resolution=32 if quick else 64, width=64 if quick else 128, depth=4, batch=8, inner_steps=3,
                steps=6 if quick else 12)
    args = ["meta-train", "--task", "image", "--data", "faces", "--resolution", str(size["resolution"]), "--width",
            str(size["width"]), "--depth", str(size["depth"]), "--batch-size", str(size["batch"]), "--learner", "maml",
            "--inner-steps", str(size["inner_steps"]), "--eval-every", "0", "--log-every", "1", "--steps",
            str(size["steps"])]
    out = {"size": size}
    for key, procs, threads in (("one_process_1_thread", 1, 1), ("one_process_2_threads", 1, 2),
                                ("two_processes_1_thread_each", 2, 1)):
        run = tmp / f"speed_{key}"
        wall = metainr([*args, "--run-dir", str(run)], procs, threads, tmp)
        out[key] = {"seconds_per_outer_step": step_seconds(run), "command_seconds": wall}
        print(f"speed {key}: {out[key]['seconds_per_outer_step']:.3f} s/step", file=sys.stderr)
    t1 = out["one_process_1_thread"]["seconds_per_outer_step"]
    t2 = out["two_processes_1_thread_each"]["seconds_per_outer_step"]
    out["scaling_efficiency"] = t1 / (2 * t2)
    out["speedup_over_one_process_2_threads"] = out["one_process_2_threads"]["seconds_per_outer_step"] / t2
    return out


def stored_ids(store: Path) -> list[str]:
    """Every signal id the store's index holds (duplicates included, if any)."""
    db = sqlite3.connect(f"file:{store / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT id FROM signals")]
    finally:
        db.close()


def encode(tmp: Path, quick: bool) -> dict:
    init = tmp / "init"
    base = [a if a != "faces" else "patches" for a in BASE]
    metainr(["meta-train", *base, "--batch-size", "4", "--learner", "maml", "--steps", "3", "--run-dir", str(init)],
            1, 1, tmp)
    count = 1000  # the patches training split at 16x16
    args = ["encode", "patches", "--split", "train", "--init", str(init / "checkpoint.safetensors"), "--steps", "20",
            "--batch-size", "8"]
    out: dict = {"data": "patches:train 16x16", "field": "siren 32x3", "signals": count, "steps": 20,
                 "batch_size": 8}
    for procs in (1, 2):
        store = tmp / f"store_{procs}"
        wall = metainr([*args, "--store", str(store)], procs, 1, tmp)
        ids = stored_ids(store)
        out[f"processes_{procs}"] = {"seconds": wall, "signals_per_second": len(ids) / wall, "stored": len(ids),
                                     "unique": len(set(ids))}
        print(f"encode {procs} process(es): {len(ids) / wall:.2f} signals/s", file=sys.stderr)
    out["speedup_2_over_1"] = out["processes_2"]["signals_per_second"] / out["processes_1"]["signals_per_second"]
    # kill after the first committed shard, then run the same command again
    store = tmp / "store_killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metainr", "--threads", "1", *args, "--store", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    at_kill = 0
    while proc.poll() is None:
        try:
            at_kill = len(stored_ids(store))
        except sqlite3.Error:
            at_kill = 0
        if at_kill:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    metainr([*args, "--store", str(store)], 1, 1, tmp)
    ids = stored_ids(store)
    out["kill_and_resume"] = {"stored_when_killed": at_kill, "stored_after_resume": len(ids),
                              "unique_after_resume": len(set(ids)), "expected": count,
                              "every_signal_exactly_once": sorted(set(ids)) == sorted(ids) and len(ids) == count}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--part", choices=["all", "equivalence", "speed", "encode"], default="all")
    p.add_argument("--out", default="runs/distributed.json")
    args = p.parse_args()
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if args.part != "all" and out_path.is_file() else {}
    result.update({"machine": {**machine(), "cpus": os.cpu_count()}, "quick": args.quick, "backend": "gloo"})
    with TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.part in ("all", "equivalence"):
            result["equivalence"] = equivalence(tmp_path, 5)
            result["equivalence_by_dtype"] = equivalence_float64(tmp_path, 5)
        if args.part in ("all", "speed"):
            load = os.getloadavg()[0]
            result["speed"] = {**speed(tmp_path, args.quick), "load_average_before": load,
                               "load_average_after": os.getloadavg()[0]}
        if args.part in ("all", "encode"):
            load = os.getloadavg()[0]
            result["encode"] = {**encode(tmp_path, args.quick), "load_average_before": load,
                                "load_average_after": os.getloadavg()[0]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
