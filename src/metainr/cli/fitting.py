"""``metainr fit`` (one file) and ``metainr eval`` (a dataset split): test-time fitting from a
checkpoint (whose metadata names its task) or from a random init of ``--task``'s field."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ..errors import MetaINRError
from ..fit import fit
from ..functional import field_function
from ..metrics import mean_psnr
from ..fields import FieldConfig
from ..start import prepare_fit
from ..disk import atomic_group, check_outputs
from ..tasks import TASKS
from .common import (Selection, add_device, add_field_args, add_rule_args, add_task_args, check_rule_options,
                     chosen_task, default_data, first_batch, given_task_options, preset,
                     refuse_field_options_with_checkpoint, settle, start_of, test_rule, user_errors)
from .options import config_from_args, finite_float, step_list

INIT_HELP = ("a checkpoint (.safetensors; its task comes with it), zoo:NAME (a packaged init: see 'metainr zoo') "
             "or 'random' (a field of --task's preset)")


def _common(p: argparse.ArgumentParser, sel: Selection, taken: set[str]) -> None:
    p.add_argument("--init", required=True, help=INIT_HELP)
    p.add_argument("--task", choices=sorted(TASKS), default=None,
                   help="signal type of a random init (default: image; a checkpoint's own otherwise)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    taken.update({"init", "task", "json"})
    add_rule_args(p, taken)
    add_device(p, taken)
    add_field_args(p, sel.task, taken, title="field (--init random only)")
    add_task_args(p, sel.task, taken)


def add_parsers(sub: argparse._SubParsersAction, sel: Selection) -> None:
    p = sub.add_parser("fit", help="fit one signal's file from a learned or a random init",
                       description=f"Fit one file of task '{sel.task}' (the options below depend on --init / --task).")
    p.add_argument("file", help="the signal's file, as the task reads it (an image; a sinogram .npy for ct; a "
                   "transforms.json for views; a lat-lon .npy/.nc for sphere; a mask PNG for sdf2d; a mesh for sdf3d)")
    p.add_argument("--reference", default=None,
                   help="a file of the true signal for the metrics, where the observations are not the signal")
    p.add_argument("--steps", type=int, default=None, help="fitting steps (default: the checkpoint's inner or "
                   "validation steps, whichever is longer; the task's for random, 500)")
    p.add_argument("--out", default=None, help="reconstruction (default: FILE.recon.png beside it)")
    p.add_argument("--save-field", default=None, help="also save the fitted field (.safetensors)")
    p.add_argument("--compact", action="store_true",
                   help="save a sparse field as alive weights + packed mask (with --save-field)")
    taken = {"reference", "steps", "out", "save-field", "compact"}
    add_trust_args(p, taken, guard=True)
    _common(p, sel, taken)

    p = sub.add_parser("eval", help="held-out metrics after fitting a dataset split",
                       description=f"Fit every signal of a split (task '{sel.task}') and report mean metrics.")
    p.add_argument("--data", default=None, help=f"a dataset name or a folder (default: {default_data(sel.task)})")
    p.add_argument("--split", default="test", help="split of a named dataset (default: test)")
    p.add_argument("--steps", type=step_list, default=[0, 1, 2, 5, 10], help="comma-separated step counts "
                   "(default: 0,1,2,5,10)")
    taken = {"data", "split", "steps"}
    add_trust_args(p, taken, guard=False)
    _common(p, sel, taken)


def run_fit(args: argparse.Namespace, sel: Selection) -> int:

    if args.steps is not None and args.steps < 0:
        raise MetaINRError(f"--steps must be >= 0, got {args.steps}")
    check_rule_options(args)
    refuse_field_options_with_checkpoint(args, sel)
    field_cfg = None
    if sel.loaded is None:
        with user_errors():
            field_cfg = config_from_args(args, FieldConfig, "field", preset(sel.task).field.to_dict())
    with user_errors():
        plan = prepare_fit(sel.loaded or "random", args.file, task=sel.task, reference=args.reference,
                           optimizer=args.optimizer, lr=args.lr, rescale=args.rescale, field=field_cfg,
                           device=sel.device, holdout=args.holdout, holdout_seed=args.holdout_seed,
                           guard=not args.no_guard, probe_steps=args.probe_steps, **given_task_options(args, sel))
    task, field, rule, batch = plan.task, plan.start.field, plan.rule, plan.batch
    if args.compact and not (args.save_field and field.config.sparse):
        raise MetaINRError("--compact needs --save-field PATH and a sparse field (a checkpoint from --prune-rounds)")
    plan.start.source = str(args.init)
    steps = plan.start.steps(args.steps)  # a checkpoint's own count is bounded (--steps is the user's)
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".recon.png")
    # before any work: no output may replace an input (or a device, a directory, one another), every
    # output's name fits its filesystem and its folder is writable; a killed run's temp files go
    check_outputs([*task.output_paths(out), args.save_field],
                  [args.file, args.reference, None if args.init == "random" else args.init])
    report = {"file": str(args.file), "task": task.name, "init": args.init, "optimizer": rule.optimizer}
    try:
        with user_errors():
            fitted = plan.run(steps, record=sorted({*(args.record or []), steps}))
        result, field = fitted.result, fitted.field.field  # the guard's winner: the prior's field or a fresh one
    except KeyboardInterrupt:
        if args.json:  # --json prints its one object whatever happens
            print(json.dumps({**report, "steps": [], "psnr": [], "final_psnr": None, "final_ssim": None,
                              "diverged": False, "interrupted": True, "outputs": []}, allow_nan=False))
        raise
    psnr = result.metrics.get("psnr")  # none where the task has nothing to compare with (no --reference)
    report.update(steps=result.steps, psnr=[] if psnr is None else [_number(v) for v in psnr[0]],
                  final_psnr=_final(result.final("psnr")), **trust_report(plan, fitted))
    if diverged(result):
        report.update(final_ssim=None, diverged=True, outputs=[])
        if args.json:
            print(json.dumps(report, allow_nan=False))
        raise MetaINRError(f"the fit diverged (non-finite loss or parameters within {steps} steps of {rule.optimizer});"
                           " nothing was written: try a smaller --lr")
    with torch.no_grad():
        recon = task.reconstruct(field_function(field), result.params, batch)
        final_ssim = _final_ssim(task, field, result.params, batch)
    with user_errors(), atomic_group():  # the reconstruction's files and the field: all or nothing
        written = [str(p) for p in task.write(out, recon[0].cpu())] or [str(out)]
        if args.save_field:
            from ..field_files import save_field

            saved = save_field(args.save_field, field, {n: p[0] for n, p in result.params.items()}, task,
                               compact=args.compact, file=str(args.file), steps=steps)
            report.update(field_file=args.save_field, field_bytes=saved,
                          bits_per_value=8 * saved / batch.values[0].numel())
    report.update(final_ssim=final_ssim, diverged=False, interrupted=False, output=written[0], outputs=written)
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        final_psnr, ssim = report["final_psnr"], report["final_ssim"]
        chosen, guard = report["chosen_step"], report["guard"]
        print(f"{args.file}: {steps} steps" + (f" (kept step {chosen}: lowest held-out loss)" if chosen is not None
                                               else "")
              + (f" -> PSNR {final_psnr:.2f} dB" if final_psnr is not None else "")
              + (f", SSIM {ssim:.4f}" if ssim is not None else "") + f"; wrote {', '.join(written)}"
              + (f"; the {guard['winner']} start won the guard" if guard else ""))
    return 0


def add_trust_args(p: argparse.ArgumentParser, taken: set[str], guard: bool) -> None:
    """Held-out stopping (fit and eval), the recorded steps and the out-of-class guard (fit)."""
    p.add_argument("--holdout", type=fraction, default=None if guard else 0.0, metavar="F",
                   help="hold out a fraction F of the observations and keep the step of lowest held-out loss; 0: "
                   "off " + ("(default: the task's, 0.1 for ct and views, else 0)" if guard else "(default)"))
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the held-out observations (default: 0)")
    taken.update({"holdout", "holdout-seed"})
    if not guard:
        return
    p.add_argument("--record", type=step_list, default=None, metavar="STEPS", help="comma-separated steps whose "
                   "metrics the report lists besides the last (and the chosen one with --holdout)")
    p.add_argument("--no-guard", action="store_true", help="from a checkpoint, skip the out-of-class guard (by "
                   "default a random init of its field is fitted too and the start with the lower loss on the "
                   "observations wins, held-out ones with --holdout: a second fit)")
    p.add_argument("--probe-steps", type=int, default=None, metavar="N", help="the guard's probes take N steps, "
                   "then the winner is fitted (default: the probes are the fit)")
    taken.update({"record", "no-guard", "probe-steps"})


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def trust_report(plan, fitted) -> dict:
    """The JSON report's held-out stopping and guard entries of a fit of one signal."""
    result = fitted.result
    out = {"holdout": plan.holdout, "chosen_step": None if result.chosen_step is None else int(result.chosen_step[0]),
           "holdout_loss": None if result.holdout_loss is None else [_number(v, 8) for v in result.holdout_loss[0]]}
    return {**out, "guard": None if fitted.guard is None else fitted.guard.to_dict()}


def _number(value: float | torch.Tensor, digits: int = 4) -> float | None:
    """A metric for a JSON report: rounded, or None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def diverged(result) -> bool:
    """True when a fit ended with a non-finite loss or non-finite parameters."""
    return not (bool(torch.isfinite(result.final_loss).all())
                and all(bool(torch.isfinite(p).all()) for p in result.params.values()))


def _final(values: torch.Tensor | None) -> float | None:
    """The mean over signals of a (B,) metric of the returned params (None when not recorded or not
    finite)."""
    return None if values is None else _number(values.mean(), 6)


def _final_ssim(task, field, params, batch) -> float | None:
    """Mean SSIM of the fitted signals, computed once after the fit (None where the task has none)."""
    ssim = task.metrics(field_function(field), params, batch, ("ssim",)).get("ssim")
    return None if ssim is None else _number(ssim.mean(), 6)


def run_eval(args: argparse.Namespace, sel: Selection) -> int:
    task = chosen_task(args, sel)
    source = args.data or default_data(task)
    with user_errors():
        signals = task.load(source, args.split)
    if sel.loaded is None:
        task = settle(task, first_batch(task, signals))
    start = start_of(args, sel, task)
    rule = test_rule(args, start.rule)
    with user_errors():
        batches = task.validation_batches(signals)  # what validation fits: e.g. CT scans of a few views
    psnr, ssim, chosen, bad = [], [], [], False
    for batch in batches:
        batch = batch.to(sel.device)
        with user_errors():
            init = start.init(batch)
        result = fit(task, start.field, init, batch, max(args.steps), record=args.steps, holdout=args.holdout,
                     holdout_seed=args.holdout_seed, **rule.fit_options(task, start.field))
        psnr.append([mean_psnr(result.psnr[:, i]) for i in range(len(result.steps))])
        if result.chosen_step is not None:
            chosen.append((mean_psnr(result.final("psnr")), float(result.chosen_step.float().mean())))
        bad = bad or diverged(result)
        with torch.no_grad():
            ssim.append(None if bad else _final_ssim(task, start.field, result.params, batch))
    report = {"init": args.init, "task": task.spec(), "data": source, "split": args.split, "signals": len(signals),
              "fits_per_signal": len(batches), "optimizer": rule.optimizer, "steps": args.steps,
              "psnr": [_number(sum(col) / len(col)) for col in zip(*psnr)],
              "final_ssim": None if None in ssim else _number(sum(ssim) / len(ssim), 6), "diverged": bad,
              "holdout": args.holdout, "chosen_psnr": _number(sum(c[0] for c in chosen) / len(chosen)) if chosen else None,
              "mean_chosen_step": round(sum(c[1] for c in chosen) / len(chosen), 2) if chosen else None}
    if args.json:
        print(json.dumps(report, allow_nan=False))
    if bad:
        raise MetaINRError("a fit diverged (non-finite loss or parameters): try a smaller --lr")
    if not args.json:
        print(f"{len(signals)} {source}/{args.split} signals ({task.name}, {len(batches)} fit(s) each), "
              f"{rule.optimizer}:")
        for s, v in zip(report["steps"], report["psnr"]):
            print(f"  step {s:>5}: PSNR {v:6.2f} dB" if v is not None else f"  step {s:>5}: PSNR inf (exact)")
        if report["chosen_psnr"] is not None:
            print(f"  held-out stopping (--holdout {args.holdout}): PSNR {report['chosen_psnr']:.2f} dB at step "
                  f"{report['mean_chosen_step']} on average")
        if report["final_ssim"] is not None:
            print(f"  final SSIM {report['final_ssim']:.4f}")
    return 0
