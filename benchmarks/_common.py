"""Shared helpers of the benchmark scripts: timing, memory, matmul rate, JSON output."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from metainr.train import Callback


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 rate of a large square ``a @ b`` on this machine, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_worker(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``python script args`` in a fresh process; it prints one JSON object as its last line."""
    import os

    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads()}


def learner_record(name: str, learner) -> dict:
    """A learner's settings as the JSON records them (flat, like the old ``LearnerConfig``):
    the name it was built by, then its config's and its context policy's fields."""
    return {"kind": name, **learner.config.to_dict(), **learner.context.to_dict()}


def write_json(path: str | Path, obj: dict) -> None:
    """Write the benchmark result atomically."""
    from metainr.disk import atomic_write_json

    atomic_write_json(path, obj)


def run_script_capped(script: str, args: list[str], cap_bytes: int, timeout: float, env: dict | None = None) -> dict:
    """Run ``python script args`` in a fresh process that prints one JSON object as its last line;
    kill it (and return ``{"error": why}``) when its RSS passes ``cap_bytes`` or it runs past ``timeout`` s."""
    import os

    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    t0, peak, why = time.perf_counter(), 0, None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            rss = 0
        peak = max(peak, rss)
        if rss > cap_bytes:
            why = f"over the {cap_bytes / 2**30:.1f} GiB RSS cap"
        elif time.perf_counter() - t0 > timeout:
            why = f"over the {timeout:.0f} s time limit"
        if why:
            proc.kill()
            proc.wait()
            return {"error": why, "peak_total_mb_seen": peak / 2**20}
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(out.strip().splitlines()[-1])



class StepCounter(Callback):
    """A trainer callback: ``done`` is the last outer step taken (0 before any)."""

    done = 0

    def on_step(self, state) -> None:
        self.done = state.step
