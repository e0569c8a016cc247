"""The ``metainr`` command: meta-train, fit, eval, plot, render, demo, for every task.

Options depend on what is chosen first, so the command line is parsed twice: a first parse reads
only the verb, ``--task``, ``--learner``, ``--init`` and ``--device`` (a checkpoint given to
``--init`` names its own task), then the full parser is built for that task (its ``Config``'s
fields, its preset as defaults) and learner (its config, the context policy, pruning) and parses
everything. The CLI never branches on a task's name.

User mistakes and OS errors end with one line on stderr (``metainr: error: ...``) and exit code 1
(2 for bad options); an interrupt with exit code 130; never a traceback. Every size an input or a
checkpoint declares is checked against ``--max-pixels`` / ``--max-params`` / ``--max-signals`` (see
:mod:`metainr.limits`) before anything of that size is allocated.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Callable

import torch

from .. import __version__
from ..device import resolve_device
from ..errors import BadOption, MetaINRError
from ..limits import Limits, use_limits
from ..meta import learner_names
from ..tasks import TASKS, build_task
from . import fitting, plots, render, store, train, zoo
from .common import DEFAULT_TASK, Selection, preset
from .console import interrupted_message, setup_logging, warnings_as_notes
from .options import Parser, positive_int

log = logging.getLogger("metainr")

COMMANDS: dict[str, Callable[[argparse.Namespace, Selection], int]] = {
    "meta-train": train.run, "fit": fitting.run_fit, "eval": fitting.run_eval, "plot": plots.run_plot,
    "demo": plots.run_demo, "render": render.run_render,
    "encode": store.run_encode, "decode": store.run_decode, "store": store.run_store, "zoo": zoo.run_zoo,
}
"""verb -> command(args, selection) -> exit code"""


MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """argparse type of --threads: 1..MAX_THREADS (torch would try to start any number)."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {value}")
    return value


def _top(parser: argparse.ArgumentParser, threads_type: Callable[[str], object]) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--threads", type=threads_type, default=None, help="torch CPU threads")


def _first_parser() -> Parser:
    """The first parse: the verb and the options every other option depends on; nothing else is
    checked here (the full parser reports unknown options and --help)."""
    parser = Parser(prog="metainr", add_help=False)
    _top(parser, str)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for verb in COMMANDS:
        p = sub.add_parser(verb, add_help=False)
        p.add_argument("--device", default="auto")
        p.add_argument("--max-pixels", default=None)
        p.add_argument("--max-params", default=None)
        p.add_argument("--max-signals", default=None)
        p.add_argument("--max-metadata-bytes", default=None)
        p.add_argument("--task", choices=sorted(TASKS), default=None)
        if verb == "meta-train":
            p.add_argument("--learner", choices=learner_names(), default=None)
        if verb in ("fit", "eval", "encode"):
            p.add_argument("--init", default=None)
        if verb == "plot":
            p.add_argument("run", nargs="?", default=None)
    return parser


def limits_of(argv: list[str]) -> Limits:
    """The limits ``--max-pixels`` / ``--max-params`` ask for (defaults where not given, or not a
    positive integer: the full parse reports those)."""
    first, _ = _first_parser().parse_known_args(argv)
    given = {}
    for name in ("max_pixels", "max_params", "max_signals", "max_metadata_bytes"):
        try:
            value = int(getattr(first, name, None) or 0)
        except ValueError:
            continue
        if value > 0:
            given[name] = value
    return Limits(**given)


def select(argv: list[str]) -> Selection:
    """The first parse of ``argv`` (see the module docstring); a checkpoint is loaded here, once."""
    from ..train import load_learner

    first, _ = _first_parser().parse_known_args(argv)
    sel = Selection(command=first.command)
    if first.command is None:
        return sel
    sel.device = resolve_device(first.device)
    sel.task = first.task or DEFAULT_TASK
    if first.command == "meta-train":
        sel.learner = first.learner or preset(sel.task).learner
    elif first.command in ("fit", "eval", "encode") and first.init not in (None, "random"):
        sel.loaded = load_learner(first.init, device=sel.device)
        spec = sel.loaded[1].get("task")
        if not spec or spec.get("name") not in TASKS:
            raise MetaINRError(f"{first.init} names no known task (a checkpoint of an older metainr?)")
        try:
            build_task(spec)  # a tampered task config is the checkpoint's fault: named here
        except ValueError as exc:
            raise MetaINRError(f"{first.init}: unusable task config in checkpoint ({exc})") from None
        if first.task and first.task != spec["name"]:
            raise MetaINRError(f"{first.init} was trained on task '{spec['name']}'; --task only applies to --init "
                               "random")
        sel.task = spec["name"]
    elif first.command == "plot" and first.run:
        sel.task = plots.run_task(first.run) or sel.task
    return sel


def build_parser(sel: Selection | None = None) -> Parser:
    """The full parser of the ``metainr`` command, with options generated for the selection."""
    sel = sel or Selection()
    parser = Parser(prog="metainr", description="Meta-learned neural fields: one command line for every task "
                    f"(--task {'|'.join(sorted(TASKS))}).")
    parser.add_argument("--version", action="version", version=f"metainr {__version__}")
    _top(parser, thread_count)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(sub, sel)
    fitting.add_parsers(sub, sel)
    plots.add_parsers(sub, sel)
    render.add_parser(sub, sel)
    store.add_parsers(sub, sel)
    zoo.add_parser(sub, sel)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metainr`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = None
    try:
        with use_limits(limits_of(argv)), warnings_as_notes():
            sel = select(argv)
            verb = sel.command
            args = build_parser(sel).parse_args(argv)
            setup_logging(args.verbose)
            if args.threads:
                torch.set_num_threads(args.threads)
            return COMMANDS[args.command](args, sel)
    except MetaINRError as exc:
        return _error(str(exc), 2 if isinstance(exc, BadOption) else 1)
    except RecursionError:  # a reader that let a deeply nested file through
        return _error("an input is nested too deeply to read (RecursionError)")
    except OSError as exc:  # a file we were asked to read or write (permissions, full disk, ...)
        where = f": {exc.filename}" if exc.filename else f" (during {verb or 'start-up'})"
        return _error(f"{exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)}{where}"
                      if exc.strerror or exc.errno else f"{type(exc).__name__}: {exc}")
    except (MemoryError, torch.OutOfMemoryError) as exc:
        return _error(f"out of memory ({' '.join(str(exc).split())[:160] or 'MemoryError'}); use smaller inputs or "
                      "sizes (e.g. --batch-size, --width)")
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            raise
        return _error(f"out of memory ({' '.join(str(exc).split())[:160]}); use smaller inputs or sizes")
    except KeyboardInterrupt:
        print(interrupted_message(verb), file=sys.stderr)
        return 130


def _error(message: str, code: int = 1) -> int:
    print(f"metainr: error: {' '.join(message.split())}", file=sys.stderr)
    return code


__all__ = ["COMMANDS", "build_parser", "main", "select"]
