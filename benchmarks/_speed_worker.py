"""Worker of benchmarks/speed.py: ONE measurement in a fresh process; prints one JSON object as its
last line (every other line it prints is progress or a warning).

    python benchmarks/_speed_worker.py matmul [--threads 2] [--n 2048]
    python benchmarks/_speed_worker.py step --learner maml --side 64 --channels 3 --width 256 --depth 5 \\
        --batch 4 --inner-steps 4 [--warmup 1 --repeats 5 --budget 60] [--as-limit-gib 8] [--compile 1]
    python benchmarks/_speed_worker.py fit --side 64 --channels 3 --width 256 --depth 5 --batch 8 --steps 20
    python benchmarks/_speed_worker.py peer --peer DIR --mode maml|gradncp --side 64 --channels 3 \\
        --width 256 --depth 5 --batch 4 --inner-steps 4 [--warmup/--repeats/--budget]

- matmul: ``_common.matmul_gflops(n)``, the best fp32 rate of an n x n matmul (GFLOP/s).
- step: ``build_learner(field, LEARNER, inner_steps=K, inner_lr=1e-2)`` around a SIREN (w0 30) of
  ``depth`` linear layers, on ``ImageTask(channels=C).batch(torch.rand(B, side, side, C))`` (seed 0);
  one outer step = ``learner.meta_gradient(task, batch)`` (its outer backward included; no optimiser).
  ``--warmup`` untimed steps (a second one only while the warm-up took under budget / 3), then timed
  steps until ``--repeats`` or until the timed ones passed ``--budget`` seconds (at least one);
  ``seconds`` = their median. ``peak_rss_mb`` = ru_maxrss of this process (imports, data and steps);
  ``rss_before_steps_mb`` the same just before the first step. ``learner`` = the learner's config and
  context policy as built; ``batching`` = ``learner.config.batching`` read at run time (None where the
  config has no such field); ``batching_used`` = ``learner.batching_for(task, batch)`` where the
  learner resolves it (e.g. ``auto``), else the setting (reptile: vmap unless its policy prunes).
- fit: ``metainr.fit`` of B random images from the field's random init, Adam lr 1e-3: one untimed
  1-step fit (warm-up), then one timed fit of ``--steps`` steps; ``signal_steps_per_second`` =
  B * steps / seconds.
- peer: the published GradNCP code's own meta-training step (``train.setup(mode, P)`` ->
  ``train_step``: ``train/gradient_based/maml.py`` for ``--mode maml``, ``maml_boot.py`` with
  ``sample_type='gradncp'`` for ``--mode gradncp``; model ``models.model.get_model(P)``: MetaWrapper
  around MetaSiren / MetaSirenPenultimate; Adam lr 1e-5 as ``common.utils.get_optimizer``) on
  ``{'imgs': torch.rand(B, C, side, side)}``, with the same warm-up / timing rule. Its step includes
  the outer Adam step, gradient clipping and its metric logging's ``.item()`` calls. CPU guards (no file
  of the peer is edited): ``torch.cuda.synchronize`` becomes a no-op without CUDA, and when the
  ``tensorboard`` package is missing ``torch.utils.tensorboard`` is a stub (its ``utils.py`` imports
  ``SummaryWriter``, which a train step never uses); both are listed in ``guards``. This mode imports
  nothing of metainr or of benchmarks/.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def limit_address_space(gib: float) -> None:
    """RLIMIT_AS = ``gib`` GiB (a safety net: an allocation past it fails instead of swapping)."""
    if gib > 0:
        cap = int(gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def timed_steps(step, warmup: int, repeats: int, budget: float) -> dict:
    """Run ``step()`` ``warmup`` times untimed (a second one only while the warm-up took under
    budget / 3), then until ``repeats`` timed runs or ``budget`` seconds of timed runs (at least one)."""
    rss_before = peak_rss_mb()
    warm, spent = [], 0.0
    while len(warm) < warmup and (not warm or spent < budget / 3):
        t = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t)
        spent += warm[-1]
    times, cpu, spent = [], [], 0.0
    while len(times) < max(repeats, 1) and (not times or spent < budget):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        spent += times[-1]
    return {"seconds": statistics.median(times), "seconds_all": times, "cpu_seconds": statistics.median(cpu),
            "warmup_seconds": warm, "warmup": len(warm), "timed": len(times), "rss_before_steps_mb": rss_before,
            "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------ metainr
def batching_of(learner, task, batch) -> dict:
    """The learner's batching setting as configured (read at run time) and the one its meta-step on
    ``batch`` runs with: ``learner.batching_for(task, batch)`` where the learner has that resolver."""
    out = {"batching": getattr(learner.config, "batching", None)}
    resolver = getattr(learner, "batching_for", None)
    if callable(resolver):
        out["batching_used"] = resolver(task, batch)
    elif getattr(learner, "name", "") == "reptile":
        # no setting: Reptile vmaps the batch when the context is shared and not pruned
        out["batching_used"] = "loop" if learner.policy.prunes else "vmap"
    else:
        out["batching_used"] = out["batching"]
    return out


def image_setup(args):
    """(task, batch of B random side x side images, SIREN field) of a metainr measurement."""
    import torch

    from metainr import FieldConfig, ImageTask, build_field

    torch.manual_seed(0)
    images = torch.rand(args.batch, args.side, args.side, args.channels)
    task = ImageTask(channels=args.channels)
    field = build_field(FieldConfig(out_dim=args.channels, width=args.width, depth=args.depth, w0=30.0))
    return task, task.batch(images), field


def step_main(args) -> dict:
    import metainr
    from _common import learner_record
    from metainr import build_learner

    task, batch, field = image_setup(args)
    options = {"compile": True} if args.compile else {}
    learner = build_learner(field, args.learner, inner_steps=args.inner_steps, inner_lr=1e-2, **options)
    limit_address_space(args.as_limit_gib)
    losses = []

    def step():
        stats, _ = learner.meta_gradient(task, batch)
        losses.append(float(stats["loss"]))

    out = timed_steps(step, args.warmup, args.repeats, args.budget)
    out.update(batching_of(learner, task, batch), learner=learner_record(args.learner, learner), first_loss=losses[0],
               rows_per_signal=int(batch.values.shape[1]), metainr_file=metainr.__file__)
    if args.compile:  # False once torch.compile failed and the learner fell back to eager
        compiled = getattr(learner, "_compiled", None)
        out["compiled"] = sorted(compiled) if isinstance(compiled, dict) else compiled
    return out


def fit_main(args) -> dict:
    import metainr
    from metainr import fit, mean_psnr
    from metainr.functional import field_params

    task, batch, field = image_setup(args)
    init = field_params(field)
    fit(task, field, init, batch, 1, optimizer="adam", lr=1e-3)  # warm-up
    rss_before = peak_rss_mb()
    t, c = time.perf_counter(), time.process_time()
    result = fit(task, field, init, batch, args.steps, optimizer="adam", lr=1e-3)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": seconds, "cpu_seconds": cpu, "signal_steps_per_second": args.batch * args.steps / seconds,
            "final_mean_psnr": mean_psnr(result.psnr[:, -1]), "rss_before_fit_mb": rss_before,
            "peak_rss_mb": peak_rss_mb(), "metainr_file": metainr.__file__}


def matmul_main(args) -> dict:
    from _common import matmul_gflops

    return {"gflops": matmul_gflops(args.n)}


# ------------------------------------------------------------------------------------------ peer
def guard_peer(torch) -> list[str]:
    """Make the peer's CUDA-only calls harmless on a CPU machine; return what was done."""
    guards = []
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
        guards.append("torch.cuda.synchronize -> no-op (no CUDA)")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")

        class SummaryWriter:  # the peer's Logger builds one; a train step never does
            def __init__(self, *a, **k):
                raise RuntimeError("tensorboard is not installed (stub of the speed benchmark)")

        stub.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub
        guards.append("torch.utils.tensorboard -> stub (tensorboard not installed; unused by train_step)")
    return guards


def peer_main(args) -> dict:
    peer = str(Path(args.peer).resolve())
    sys.path[:] = [peer] + [p for p in sys.path if p and Path(p).resolve() != HERE]
    import torch

    torch.set_num_threads(args.threads)
    guards = guard_peer(torch)
    import einops
    from models.model import get_model
    from train import setup
    from utils import MetricLogger

    gradncp = args.mode == "gradncp"
    P = types.SimpleNamespace(
        mode="maml_bootstrap_param" if gradncp else "maml", sample_type="gradncp" if gradncp else "none",
        data_type="img", data_size=(args.channels, args.side, args.side), decoder="siren", dim_in=2,
        dim_out=args.channels, dim_hidden=args.width, num_layers=args.depth, w0=30.0, inner_steps=args.inner_steps,
        inner_lr=1e-2, lr=1e-5, batch_size=args.batch, dataset="speed", data_ratio=0.25, inner_steps_boot=5,
        inner_lr_boot=5e-2, lam=100.0, seed=0, suffix=None, no_date=True, print_step=10**9)
    torch.manual_seed(0)
    model = get_model(P)
    optimizer = torch.optim.Adam(model.parameters(), lr=P.lr)  # common.utils.get_optimizer
    train_step, _, _ = setup(P.mode, P)
    metric_logger = MetricLogger(delimiter="  ")
    data = {"imgs": torch.rand(args.batch, args.channels, args.side, args.side)}
    count = [0]

    def step():
        count[0] += 1
        train_step(P, count[0], model, optimizer, data, metric_logger, None)

    out = timed_steps(step, args.warmup, args.repeats, args.budget)
    out.update(guards=guards, train_step=f"{train_step.__module__}.train_step", mode=P.mode,
               sample_type=P.sample_type, model=type(model.decoder).__name__, einops=einops.__version__,
               params=sum(p.numel() for p in model.parameters()),
               settings={k: getattr(P, k) for k in ("inner_steps", "inner_lr", "data_ratio", "inner_steps_boot",
                                                   "inner_lr_boot", "lam", "lr", "num_layers", "dim_hidden", "w0")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["matmul", "step", "fit", "peer"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2048, help="matmul: matrix side")
    ap.add_argument("--learner", default="maml")
    ap.add_argument("--mode", choices=["maml", "gradncp"], default="maml", help="peer: which train step")
    ap.add_argument("--peer", help="peer: a checkout / export of the GradNCP repository")
    ap.add_argument("--side", type=int, default=25)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--inner-steps", type=int, default=3)
    ap.add_argument("--compile", type=int, default=0, help="step: 1 = build the learner with compile=True")
    ap.add_argument("--steps", type=int, default=20, help="fit: Adam steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of timed steps (at least one runs)")
    ap.add_argument("--as-limit-gib", type=float, default=0.0, help="RLIMIT_AS in GiB (0: none)")
    args = ap.parse_args()
    if args.what == "peer":
        out = peer_main(args)
    else:
        import torch

        torch.set_num_threads(args.threads)
        out = {"matmul": matmul_main, "step": step_main, "fit": fit_main}[args.what](args)
    import torch

    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
