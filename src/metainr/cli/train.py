"""``metainr meta-train``: meta-learn an init for any task with any learner and context policy,
optionally with iterative pruning (Meta-SparseINR)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import MetaINRError
from ..fields import FieldConfig, build_field, narrow_width
from ..meta import POLICIES, ContextConfig, Learner, build_learner, learner_names, resolve
from ..tasks import TASKS, Task, Tokenizable, build_task, require
from ..train import PruneConfig, TrainConfig, iterative_pruning, meta_train
from ..train.board import TensorBoardLog
from ..train.distributed import World, close_world, init_world
from ..train.rundir import BOARD_DIR
from .common import (Selection, add_device, add_field_args, add_task_args, default_data, field_config, fielded,
                     first_batch, given_task_options, preset, settle, user_errors)
from .options import add_config_args, checked_config, config_from_args, given_options, positive_float, positive_int
from .stopping import GracefulStop

CONTEXT_OPTIONS = dict(rename={"policy": "context", "seed": "context-seed"}, choices={"policy": list(POLICIES)})
PRUNE_OPTIONS = dict(rename={n: f"prune-{n}" for n in ("rounds", "fraction", "steps", "method", "seed")})
DERIVED = ("tokens", "token_dim")
"""learner config fields the CLI sets from the task (the shape of its hypernetwork tokens)"""


def learner_defaults(sel: Selection) -> tuple[type, dict[str, Any], ContextConfig]:
    """(learner class, its config defaults, its context) for ``sel.learner`` on ``sel.task``: the
    registry's, then the task preset's ``learner_options`` when the preset names this learner."""
    cls, defaults, context = resolve(sel.learner)
    task_preset = preset(sel.task)
    if task_preset.learner == sel.learner:
        own = {f.name for f in dataclasses.fields(cls.Config)}
        ctx = {f.name for f in dataclasses.fields(ContextConfig)}
        options = dict(task_preset.learner_options)
        defaults = {**defaults, **{k: v for k, v in options.items() if k in own}}
        context = dataclasses.replace(context, **{k: v for k, v in options.items() if k in ctx and k not in own})
    return cls, defaults, context


def add_parser(sub: argparse._SubParsersAction, sel: Selection) -> None:
    cls, defaults, context = learner_defaults(sel)
    task_preset = preset(sel.task)
    p = sub.add_parser("meta-train", help="meta-learn an initialisation for a class of signals (any --task)",
                       description=f"Meta-train on task '{sel.task}' with learner '{sel.learner}'; the options "
                       "below depend on --task and --learner (see 'metainr meta-train --task T --learner L --help').")
    taken = {"task", "learner", "data", "val-data", "run", "run-dir", "resume", "overwrite", "tensorboard", "max-minutes", "target-params"}
    p.add_argument("--task", choices=sorted(TASKS), default=sel.task, help="signal type (default: image)")
    p.add_argument("--learner", choices=learner_names(), default=sel.learner,
                   help=f"learner or preset (default: the task's, else maml; now: {sel.learner})")
    p.add_argument("--data", default=None, help="a dataset name or a folder; the task loads it (default: "
                   f"{default_data(sel.task)})")
    p.add_argument("--val-data", default=None, help="validation signals (default: the dataset's validation split "
                   "where it has one, else the last 10%% of the training signals, held back from training)")
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run directory for checkpoints and logs (under torchrun write --run-dir: torchrun's own "
                   "parser takes --run for its --run-path)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a --run that holds a previous run "
                   "(deletes that run's checkpoints and logs; nothing else)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars and validation "
                   "reconstructions to RUN/tensorboard (needs metainr[tensorboard])")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="stop (with a checkpoint) after this long")
    p.add_argument("--target-params", type=positive_int, default=None,
                   help="dense-narrow baseline: solve the hidden width so the field has about this many parameters")
    add_device(p, taken)
    add_config_args(p, TrainConfig, "train", base={**TrainConfig().to_dict(), **task_preset.train},
                    taken=taken, title="training")
    add_field_args(p, sel.task, taken)
    add_config_args(p, cls.Config, "learner", skip=DERIVED, base={**_config_defaults(cls.Config), **defaults},
                    taken=taken, title=f"learner '{sel.learner}'")
    add_config_args(p, ContextConfig, "context", base=context, taken=taken, title="context policy",
                    **CONTEXT_OPTIONS)  # type: ignore[arg-type]
    add_config_args(p, PruneConfig, "prune", taken=taken, title="pruning (Meta-SparseINR)",
                    **PRUNE_OPTIONS)  # type: ignore[arg-type]
    add_task_args(p, sel.task, taken)


def _config_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def load_split(task: Task, source: str, splits: tuple[str, ...]) -> Any:
    """The first of ``splits`` that ``source`` has (the last one's error if none)."""
    error: Exception | None = None
    for split in splits:
        try:
            with user_errors():
                return task.load(source, split)
        except MetaINRError as exc:
            error = error or exc
    raise error  # type: ignore[misc]


def validation(task: Task, source: str, val_source: str | None, data: Any) -> tuple[Any, Any, str | None]:
    """(training signals, validation signals or None, where they come from): ``--val-data``; else
    the dataset's own validation split (a named dataset may have one; a folder is one split); else
    the last 10% of the training signals, held back from training."""
    if val_source:
        return data, load_split(task, val_source, ("val", "test")), val_source
    if not Path(source).exists():
        try:
            with user_errors():
                return data, task.load(source, "val"), f"{source}:val"
        except MetaINRError:
            pass
    if len(data) >= 10:
        n_val = len(data) // 10
        return data[:-n_val], data[-n_val:], f"the last {n_val} of {source}:train"
    return data, None, None


def _learner(args: argparse.Namespace, sel: Selection, task: Task, data: Any, field_cfg: FieldConfig) -> Learner:
    """The learner around a new field: registry defaults, the task's preset, the options given;
    a hypernetwork's token shape from the task's tokenizer."""
    cls, defaults, context = learner_defaults(sel)
    given = given_options(args, cls.Config, "learner")
    own = {f.name for f in dataclasses.fields(cls.Config)}
    if set(DERIVED) <= own:
        with user_errors():
            tokens = require(task, Tokenizable).tokens(first_batch(task, data))
        defaults = {**defaults, DERIVED[0]: int(tokens.shape[1]), DERIVED[1]: int(tokens.shape[2])}
    config = checked_config(cls.Config, "learner", defaults, given)
    context = checked_config(ContextConfig, "context", {f.name: getattr(context, f.name)
                                                        for f in dataclasses.fields(ContextConfig)},
                             given_options(args, ContextConfig, "context"))
    return build_learner(build_field(field_cfg), sel.learner, config=config, context=context)


def run(args: argparse.Namespace, sel: Selection) -> int:
    world, device = init_world(sel.device or torch.device("cpu"))  # under torchrun: join its process group
    try:
        return _run(args, dataclasses.replace(sel, device=device), world)
    finally:
        close_world()


def _run(args: argparse.Namespace, sel: Selection, world: World) -> int:
    with user_errors():
        task = build_task(sel.task, **given_task_options(args, sel))
    task = fielded(args, task)
    source = args.data or default_data(task)
    with user_errors():
        data = task.load(source, "train")
    task = settle(task, first_batch(task, data))
    data, val, how = validation(task, source, args.val_data, data)
    task_preset = preset(task)
    with user_errors():
        train_given = given_options(args, TrainConfig, "train")
        train_cfg = checked_config(TrainConfig, "train", task_preset.train, train_given)
        if val is not None and "eval_every" not in train_given and "eval_every" not in task_preset.train:
            train_cfg = dataclasses.replace(train_cfg, eval_every=max(train_cfg.steps // 10, 1))
        prune_cfg = config_from_args(args, PruneConfig, "prune")
        field_cfg = field_config(args, task, **({"sparse": True} if prune_cfg.rounds else {}))
        if args.target_params:
            field_cfg = dataclasses.replace(field_cfg, width=narrow_width(field_cfg, args.target_params))
        torch.manual_seed(train_cfg.seed)  # a hypernetwork's init draws from torch's global generator
        learner = _learner(args, sel, task, data, field_cfg)
    info = {"source": source, "validation": how,
            "signals": len(data), "val_signals": len(val) if val is not None else 0}
    if args.resume and args.overwrite:
        raise MetaINRError("--resume continues a run and --overwrite starts it again: give one of them")
    stop = GracefulStop()
    board = TensorBoardLog(Path(args.run) / BOARD_DIR, val) if args.tensorboard and world.main else None
    callbacks = [stop, *([board] if board else [])]
    try:
        final = _train(args, task, learner, data, val, info, train_cfg, prune_cfg, callbacks, sel, world)
    finally:
        if board is not None:
            board.close()
    if not world.main:
        return 130 if stop.signal else 0
    if stop.signal:
        print(f"metainr: stopped by {stop.signal}; checkpoint written: {final} (continue with --resume)",
              file=sys.stderr)
        return 130
    print(f"meta-training done: {final}", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace, task: Task, learner: Learner, data: Any, val: Any, info: dict,
           train_cfg: TrainConfig, prune_cfg: PruneConfig, callbacks: list, sel: Selection, world: World) -> Path:
    """Run the training the options ask for; returns the final checkpoint's path."""
    stop = callbacks[0]
    if prune_cfg.rounds:
        if args.resume:
            raise MetaINRError("--resume is not supported with --prune-rounds; each round's checkpoint is kept instead")
        if args.max_minutes:
            raise MetaINRError("--max-minutes is not supported with --prune-rounds; use --steps and --prune-steps")
        with stop:
            records = iterative_pruning(learner, task, data, train_cfg, prune_cfg, run_dir=args.run, val=val,
                                        info=info, device=sel.device, overwrite=args.overwrite, callbacks=callbacks)
        for rec in records if world.main else []:
            print(f"round {rec['round']}: density {rec['density']:.3f}, {rec['params']} parameters", file=sys.stderr)
        final = (Path(args.run) / f"round_{records[-1]['round']:02d}_density_{records[-1]['density']:.3f}.safetensors"
                 if records else Path(args.run) / "checkpoint.safetensors")
    else:
        with stop:
            meta_train(learner, task, data, train_cfg, run_dir=args.run, resume=args.resume, overwrite=args.overwrite,
                       val=val, info=info, device=sel.device, callbacks=callbacks,
                       max_seconds=args.max_minutes * 60 if args.max_minutes else None)
        final = Path(args.run) / "checkpoint.safetensors"
    return final

