"""``metainr plot`` (a run's training curve, or what a pruning context policy keeps) and ``metainr demo``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import MetaINRError
from ..disk import check_outputs
from ..json_files import read_json
from ..tasks import build_task
from ..train.rundir import own
from .common import Selection, add_device, add_task_args, given_task_options, run_checkpoint, user_errors


def add_parsers(sub: argparse._SubParsersAction, sel: Selection) -> None:
    p = sub.add_parser("plot", help="plot a run's training curve (metrics.jsonl), or what its context policy keeps")
    p.add_argument("run", help="run directory with metrics.jsonl (and best/checkpoint.safetensors)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/training.png or RUN/selected.png)")
    p.add_argument("--selected", default=None, metavar="SIGNAL",
                   help="instead: the observations the inner loop of a run with a pruning context policy (e.g. "
                        "gradncp) keeps at steps 0, K/2 and K on SIGNAL (a file, or a dataset name for its first "
                        "test signal)")
    taken = {"run", "out", "selected"}
    add_device(p, taken)
    add_task_args(p, sel.task, taken)

    p = sub.add_parser("demo", help="meta-learn on faces, fit held-out faces, write a report")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    add_device(p, set())


def run_task(run: str | Path) -> str | None:
    """The task name a run directory was trained on (its config.json), None when unreadable."""
    try:
        return read_json(Path(run) / "config.json", "run config")["task"]["name"]
    except (MetaINRError, KeyError, TypeError):  # size-checked, never a RecursionError
        return None


def run_plot(args: argparse.Namespace, sel: Selection) -> int:
    from ..plot import plot_training
    from ..train import read_metrics

    if args.selected:
        return _plot_selected(args, sel)
    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise MetaINRError(f"no metrics.jsonl in {args.run}")
    records = read_metrics(path)
    if not records:
        raise MetaINRError(f"{path} holds no readable records")
    out = args.out or str(Path(args.run) / "training.png")
    check_outputs([out], [path, *Path(args.run).glob("*.safetensors"), Path(args.run) / "config.json"])
    if not args.out:
        own(Path(args.run), "training.png")
    plot_training(records, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _plot_selected(args: argparse.Namespace, sel: Selection) -> int:
    from ..meta import MAML
    from ..plot import plot_selected
    from ..train import load_learner

    ckpt = run_checkpoint(args.run)
    learner, meta = load_learner(ckpt, device=sel.device)
    if not learner.policy.prunes:
        raise MetaINRError(f"--selected needs a run with a pruning context policy (e.g. --learner gradncp); {ckpt} "
                           f"is a {learner.name} learner with context policy '{learner.context.policy}'")
    if not isinstance(learner, MAML):
        raise MetaINRError(f"--selected draws the inner loop of a MAML-family learner (maml, fomaml, metasgd, "
                           f"gradncp); {ckpt} is a {learner.name} learner")
    if not meta.get("task"):
        raise MetaINRError(f"{ckpt} names no task")
    with user_errors(f"{ckpt}: "):
        task = build_task(meta["task"], **given_task_options(args, meta["task"]["name"], meta["task"]))
    with user_errors():
        if Path(args.selected).exists() or Path(args.selected).suffix:
            batch = task.read(args.selected)
        else:
            batch = task.batch(task.load(args.selected, "test")[:1])
    batch = batch.to(sel.device)
    n, ref = batch.values.shape[1], batch.reference
    if ref is None or ref.dim() != 4 or ref.shape[1] * ref.shape[2] != n:
        raise MetaINRError(f"--selected draws the kept observations over the signal, one per pixel; task "
                           f"'{task.name}' observes its signal through a forward model")
    if ref.shape[-1] != learner.field.config.out_dim:
        raise MetaINRError(f"{args.selected} has {ref.shape[-1]} channels but the field outputs "
                           f"{learner.field.config.out_dim}")
    h, w = ref.shape[1:3]
    trace: list[torch.Tensor] = []
    learner.adapt(task, batch.query_of(0), batch.values[0], trace=trace)
    k = len(trace) - 1
    masks = {}
    for step in sorted({0, k // 2, k}):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[trace[step].cpu()] = True
        masks[f"inner step {step}"] = mask.view(h, w)
    out = args.out or str(Path(args.run) / "selected.png")
    check_outputs([out], [ckpt, args.selected])
    if not args.out:
        own(Path(args.run), "selected.png")
    plot_selected(ref[0].cpu(), masks, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace, sel: Selection) -> int:
    from ..demo import run_demo as demo

    summary = demo(args.out, quick=args.quick, device=sel.device)
    print(json.dumps(summary["headline"], indent=2))
    print(f"report written to {args.out}/", file=sys.stderr)
    return 0
