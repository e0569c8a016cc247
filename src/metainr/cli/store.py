"""``metainr encode`` (a dataset into a field store), ``metainr decode`` (one stored signal back
to its task's files) and ``metainr store info`` (a store's summary): thin wrappers of
:mod:`metainr.store`; the library does the work."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..disk import check_outputs
from ..errors import MetaINRError
from ..store import INDEX_NAME, decode, encode, store_info
from ..train.distributed import close_world, init_world
from .common import (Selection, add_device, add_rule_args, add_task_args, check_rule_options, given_task_options,
                     user_errors)
from .options import Parser, positive_int


def add_parsers(sub: argparse._SubParsersAction, sel: Selection) -> None:
    p = sub.add_parser("encode", help="fit every signal of a dataset into a field store (resumable, torchrun-parallel)",
                       description="Fit every signal of a dataset split from a checkpoint's learned init with its "
                                   "test rule and store the fitted fields: sharded safetensors files indexed in "
                                   "SQLite (STORE/index.sqlite). Re-running the same command continues a killed run; "
                                   "under torchrun each process fits its part. Task options default to the "
                                   "checkpoint's task.")
    p.add_argument("data", help="what the checkpoint's task loads: a dataset name (e.g. faces) or a folder")
    p.add_argument("--init", required=True, help="a checkpoint (.safetensors); 'random' is not supported: the signals "
                   "of a store share one learned init")
    p.add_argument("--store", required=True, help="the store directory (created if missing; an existing one must "
                   "have been encoded from the same checkpoint, task, field, rule and steps)")
    p.add_argument("--split", default="test", help="split of a named dataset (default: test); ids are SPLIT-NNNNNN")
    p.add_argument("--steps", type=int, default=None, help="fitting steps (default: the checkpoint's inner or "
                   "validation steps, whichever is longer)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="signals fitted at once and stored per shard: blocks of consecutive signals, the same "
                        "whether a run is resumed or parallel (keep it when resuming; default: 16)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    taken = {"data", "init", "store", "split", "steps", "batch-size", "json"}
    add_rule_args(p, taken)
    add_device(p, taken)
    add_task_args(p, sel.task, taken)

    p = sub.add_parser("decode", help="write one stored signal in its task's form, at any resolution",
                       description="Write the signal ID of a field store back as its task writes signals (an image "
                                   "PNG; a clip's strip and GIF; a sound's WAV and plot; a mesh; ...).")
    p.add_argument("store", help="a field store directory (metainr encode)")
    p.add_argument("id", help="a signal id (see 'metainr store info'; e.g. test-000003)")
    p.add_argument("--out", default=None, help="the output (default: ID.png in the working directory, characters "
                   "other than letters, digits, '-', '_', '.' replaced by '_'; the task adds its companion files, "
                   "e.g. .wav, .gif, .npy, or writes .ply for a mesh)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="pixels a side for grid tasks (image, sdf2d, video, ct; default: the store's); refused in "
                        "one line by a task that cannot")
    p.add_argument("--views", type=positive_int, default=8,
                   help="turntable renders of a task whose signals need their cameras (views; default: 8)")
    add_device(p, {"store", "id", "out", "resolution", "views"})

    p = sub.add_parser("store", help="inspect a field store", description="Inspect a field store.")
    verbs = p.add_subparsers(dest="store_command", required=True, parser_class=Parser)
    q = verbs.add_parser("info", help="signals, mean metrics, bytes, task, learner, steps",
                         description="Summarise a field store: signals, the mean of each metric, bytes (shards and "
                                     "index), task, learner, steps.")
    q.add_argument("store", help="a field store directory")
    q.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run_encode(args: argparse.Namespace, sel: Selection) -> int:
    if sel.loaded is None:
        raise MetaINRError("encode needs a checkpoint (--init CKPT): --init random is not supported, the signals of a "
                           "store share one learned init")
    if args.steps is not None and args.steps < 0:
        raise MetaINRError(f"--steps must be >= 0, got {args.steps}")
    check_rule_options(args)
    check_outputs([Path(args.store) / INDEX_NAME], [args.data, args.init])
    world, device = init_world(sel.device)  # under torchrun: join its process group
    try:
        with user_errors():
            summary = encode(args.data, args.init, args.store, steps=args.steps, split=args.split,
                             batch_size=args.batch_size, device=device, optimizer=args.optimizer, lr=args.lr,
                             rescale=args.rescale, loaded=sel.loaded, **given_task_options(args, sel))
    finally:
        close_world()
    if not world.main:
        return 0
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        psnr = summary["metrics"].get("psnr")
        print(f"encoded {summary['encoded']} of {summary['signals']} {summary['source']}/{summary['split']} signals "
              f"into {summary['store']} ({summary['already_stored']} already stored; {summary['store_signals']} in the "
              f"store), {summary['steps']} steps" + (f", mean PSNR {psnr:.2f} dB" if psnr is not None else "")
              + (f", {summary['bytes_per_signal']:,.0f} bytes a signal" if summary["bytes_per_signal"] else "")
              + f" ({summary['seconds']:.1f} s, {summary['processes']} process(es))")
    if summary["missing"]:
        raise MetaINRError(f"{summary['missing']} signals were not stored: their fits diverged (non-finite loss or "
                           "parameters); try a smaller --lr (re-running retries only them)")
    return 0


def run_decode(args: argparse.Namespace, sel: Selection) -> int:
    with user_errors():
        written = decode(args.store, args.id, args.out, resolution=args.resolution, views=args.views,
                         device=sel.device or "cpu")
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def run_store(args: argparse.Namespace, sel: Selection) -> int:
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, allow_nan=False))
        return 0
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in info["metrics"].items() if v is not None) or "none"
    splits = ", ".join(f"{name} ({v.get('count')} of {v.get('source')})" for name, v in info["splits"].items())
    print(f"{info['store']}: {info['signals']} signals of task '{info['task']}' (splits: {splits or 'none'})\n"
          f"  learner {info['learner']}, {info['steps']} steps of {(info['rule'] or {}).get('optimizer')} from "
          f"{(info['init'] or {}).get('path')}\n"
          f"  mean metrics: {metrics}\n"
          f"  bytes: {info['shard_bytes']:,} in {info['shards']} shards"
          + (f" ({info['bytes_per_signal']:,.0f} a signal)" if info["bytes_per_signal"] else "")
          + f", index {info['index_bytes']:,}")
    return 0
