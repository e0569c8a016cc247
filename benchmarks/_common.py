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
    from metainr.store import atomic_write_json

    atomic_write_json(path, obj)
