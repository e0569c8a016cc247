"""What the verbs share: the selection parsed first (task, learner, checkpoint, device), user
errors, tasks settled on their data, and where a test-time fit starts (init + rule + steps).

Nothing here knows a task by name: options come from ``metainr.tasks.TASKS`` and each task's
``Config``; defaults from its ``preset`` (see :class:`metainr.tasks.Task`).
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import MetaINRError
from ..fields import FIELDS, FieldConfig, build_field
from ..meta import Learner, TestRule
from ..start import Start, learner_start, random_start, rule_with
from ..tasks import TASKS, Batch, Preset, Task, build_task, field_dims, for_field
from ..limits import Limits
from .options import (add_config_args, checked_config, config_from_args, finite_float, given_options, positive_float,
                      positive_int)

DEFAULT_TASK = "image"
FIELD_OPTIONS = dict(rename={"kind": "field", "seed": "field-seed"},
                     skip=("in_dim", "out_dim", "frame_height", "frame_width"), choices={"kind": sorted(FIELDS)})


@dataclass
class Selection:
    """What the first parse read (the options every other option depends on)."""

    command: str | None = None
    task: str = DEFAULT_TASK
    """registry name of the task (for fit / eval / plot from a checkpoint: the checkpoint's)"""
    learner: str = "maml"
    """meta-train: the learner or preset name (default: the task's preset, else maml)"""
    device: torch.device | None = None
    loaded: tuple[Learner, dict] | None = None
    """fit / eval from a checkpoint: (learner on ``device``, its metadata)"""


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turn the ValueErrors of configs, tasks and data (bad values a user gave) into MetaINRError."""
    try:
        yield
    except (ValueError, NotImplementedError) as exc:
        raise MetaINRError(f"{prefix}{exc}") from None


def preset(task: str | Task) -> Preset:
    """The task's preset (defaults a CLI applies before the user's options)."""
    return (TASKS[task] if isinstance(task, str) else type(task)).preset


def default_data(task: str | Task) -> str:
    """The dataset a verb uses when ``--data`` is not given."""
    return preset(task).data


def add_device(parser: argparse.ArgumentParser, taken: set[str]) -> None:
    """--device, and the limits every verb applies to what its inputs declare."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto, CUDA when "
                        "available)")
    defaults = Limits()
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help=f"largest signal in samples an input may declare (image height x width, sinogram "
                             f"detectors x views; default: {defaults.max_pixels:,})")
    parser.add_argument("--max-params", type=positive_int, default=None, metavar="N",
                        help=f"largest field a checkpoint or the options may declare, in parameters (default: "
                             f"{defaults.max_params:,})")
    parser.add_argument("--max-signals", type=positive_int, default=None, metavar="N",
                        help=f"largest dataset in signals (files of a folder, procedural counts; default: "
                             f"{defaults.max_signals:,})")
    parser.add_argument("--max-metadata-bytes", type=positive_int, default=None, metavar="N",
                        help=f"largest metadata file an input may have, checked before it is parsed (a views "
                             f"file's transforms JSON, an angles list; default: {defaults.max_metadata_bytes:,})")
    taken.update({"device", "max-pixels", "max-params", "max-signals", "max-metadata-bytes"})


def add_task_args(parser: argparse.ArgumentParser, task: str, taken: set[str], base: Any = None) -> None:
    """The chosen task's config fields as options (a name another group took becomes --task-NAME)."""
    cls = TASKS[task]
    add_config_args(parser, cls.Config, "task", base=base, taken=taken, title=f"task '{task}'")


def add_field_args(parser: argparse.ArgumentParser, task: str, taken: set[str], title: str = "field") -> None:
    add_config_args(parser, FieldConfig, "field", base=preset(task).field.to_dict(),
                    taken=taken, title=title, **FIELD_OPTIONS)  # type: ignore[arg-type]


def given_task_options(args: argparse.Namespace, sel: Selection | str,
                       spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The task options given on the command line, checked on top of the task config they change
    (``spec``: a checkpoint's task spec; with a selection, its checkpoint's): a bad value is a
    :class:`BadOption` (exit code 2) naming the option, never blamed on the checkpoint."""
    task = sel if isinstance(sel, str) else sel.task
    if spec is None and isinstance(sel, Selection) and sel.loaded is not None:
        spec = sel.loaded[1].get("task")
    given = given_options(args, TASKS[task].Config, "task")
    if given:
        base = {k: v for k, v in dict(spec or {}).items() if k != "name"}
        cls = TASKS[task].Config
        with contextlib.suppress(ValueError):  # a checkpoint's own bad config is reported where it is read
            checked_config(cls, "task", base, given, make=cls.from_dict)
    return given


def settle(task: Task, batch: Batch) -> Task:
    """The task with what its config leaves to the data fixed from a batch of its signals
    (:meth:`Task.settled`), so a checkpoint records what it was trained on."""
    with user_errors():
        return task.settled(batch)


def first_batch(task: Task, signals: Any) -> Batch:
    """The batch of the first signal of ``signals`` (what settles a task and sizes tokens)."""
    with user_errors():
        return task.batch(signals[:1])


def field_config(args: argparse.Namespace, task: Task, **fixed: Any) -> FieldConfig:
    """The field: the task's preset, then the options given; in/out dims from the task."""
    with user_errors():
        return config_from_args(args, FieldConfig, "field", preset(task).field.to_dict(),
                                **{**field_dims(task), **fixed})


def fielded(args: argparse.Namespace, task: Task) -> Task:
    """The task as the chosen field kind sees it (whole frames as rows for NeRV; see :func:`for_field`)."""
    kind = given_options(args, FieldConfig, "field").get("kind", preset(task).field.kind)
    with user_errors():
        return for_field(task, kind)


def chosen_task(args: argparse.Namespace, sel: Selection) -> Task:
    """The task of a fit: the checkpoint's (``--init CKPT``) or ``--task``'s (random), with the
    task options given on top."""
    given = given_task_options(args, sel)
    if sel.loaded is None:
        with user_errors():
            return fielded(args, build_task(sel.task, **given))
    _, meta = sel.loaded
    with user_errors(f"{args.init}: "):
        return build_task(meta["task"], **given)


def refuse_field_options_with_checkpoint(args: argparse.Namespace, sel: Selection) -> None:
    """A checkpoint carries its own architecture: field options given with one are a one-line error."""
    if sel.loaded is not None and given_options(args, FieldConfig, "field"):
        raise MetaINRError("field options only apply to --init random; a checkpoint carries its own architecture")


def start_of(args: argparse.Namespace, sel: Selection, task: Task) -> Start:
    """The field, init, default rule and steps that ``--init`` names (a checkpoint was read once)."""
    refuse_field_options_with_checkpoint(args, sel)
    if sel.loaded is None:
        with user_errors():
            return random_start(task, build_field(field_config(args, task)).to(sel.device))
    with user_errors(f"{args.init}: "):
        return learner_start(*sel.loaded, task)


def check_rule_options(args: argparse.Namespace) -> None:
    """--lr and --rescale in range, in one line naming the option."""
    if args.rescale is not None and not 0 <= args.rescale <= 1:
        raise MetaINRError(f"--rescale must be a keep ratio in [0, 1], got {args.rescale}")
    if args.lr is not None and not args.lr > 0:
        raise MetaINRError(f"--lr must be positive, got {args.lr}")


def test_rule(args: argparse.Namespace, default: TestRule) -> TestRule:
    """The default rule with --optimizer / --lr / --rescale applied."""
    check_rule_options(args)
    return rule_with(default, args.optimizer, args.lr, args.rescale)


def add_rule_args(parser: argparse.ArgumentParser, taken: set[str]) -> None:
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                        help="default: the learner's test rule for a checkpoint, the task's (adam) for random")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="step size (default: the learned one; the task's, 1e-3, for adam from random)")
    parser.add_argument("--rescale", type=finite_float, default=None, metavar="GAMMA",
                        help="GradNCP test-time gradient rescaling with keep ratio GAMMA, 0 = plain steps "
                             "(default: the learner's rule)")
    taken.update({"optimizer", "lr", "rescale"})


def run_checkpoint(run: str | Path) -> Path:
    """best.safetensors, else checkpoint.safetensors, of a run directory."""
    for name in ("best.safetensors", "checkpoint.safetensors"):
        if (Path(run) / name).is_file():
            return Path(run) / name
    raise MetaINRError(f"no best.safetensors or checkpoint.safetensors in {run}")
