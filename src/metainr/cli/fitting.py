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
from ..disk import check_outputs
from ..tasks import TASKS
from .common import (Selection, add_device, add_field_args, add_rule_args, add_task_args, check_rule_options,
                     chosen_task, default_data, first_batch, given_task_options, preset,
                     refuse_field_options_with_checkpoint, settle, start_of, test_rule, user_errors)
from .options import config_from_args, step_list

INIT_HELP = "a checkpoint (.safetensors; its task comes with it) or 'random' (a field of --task's preset)"


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
    _common(p, sel, taken)

    p = sub.add_parser("eval", help="held-out metrics after fitting a dataset split",
                       description=f"Fit every signal of a split (task '{sel.task}') and report mean metrics.")
    p.add_argument("--data", default=None, help=f"a dataset name or a folder (default: {default_data(sel.task)})")
    p.add_argument("--split", default="test", help="split of a named dataset (default: test)")
    p.add_argument("--steps", type=step_list, default=[0, 1, 2, 5, 10], help="comma-separated step counts "
                   "(default: 0,1,2,5,10)")
    _common(p, sel, {"data", "split", "steps"})


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
                           device=sel.device, **given_task_options(args, sel.task))
    task, field, rule, batch = plan.task, plan.start.field, plan.rule, plan.batch
    if args.compact and not (args.save_field and field.config.sparse):
        raise MetaINRError("--compact needs --save-field PATH and a sparse field (a checkpoint from --prune-rounds)")
    steps = plan.start.default_steps if args.steps is None else args.steps
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".recon.png")
    # before any work: no output may replace an input (or a device, a directory, one another)
    check_outputs([*task.output_paths(out), args.save_field],
                  [args.file, args.reference, None if args.init == "random" else args.init])
    with user_errors():
        result = plan.run(steps, record=recorded_steps(steps)).result
    psnr = result.metrics.get("psnr")  # none where the task has nothing to compare with (no --reference)
    report = {"file": str(args.file), "task": task.name, "init": args.init, "optimizer": rule.optimizer,
              "steps": result.steps, "psnr": [] if psnr is None else [_number(v) for v in psnr[0]],
              "final_psnr": _final(psnr)}
    if diverged(result):
        report.update(final_ssim=None, diverged=True, outputs=[])
        if args.json:
            print(json.dumps(report, allow_nan=False))
        raise MetaINRError(f"the fit diverged (non-finite loss or parameters within {steps} steps of {rule.optimizer});"
                           " nothing was written: try a smaller --lr")
    with torch.no_grad():
        recon = task.reconstruct(field_function(field), result.params, batch)
        final_ssim = _final_ssim(task, field, result.params, batch)
    with user_errors():
        written = [str(p) for p in task.write(out, recon[0].cpu())] or [str(out)]
    report.update(final_ssim=final_ssim, diverged=False, output=written[0], outputs=written)
    if args.save_field:
        from ..field_files import save_field

        saved = save_field(args.save_field, field, {n: p[0] for n, p in result.params.items()}, task,
                           compact=args.compact, file=str(args.file), steps=steps)
        report.update(field_file=args.save_field, field_bytes=saved,
                      bits_per_value=8 * saved / batch.values[0].numel())
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        final_psnr, ssim = report["final_psnr"], report["final_ssim"]
        print(f"{args.file}: {steps} steps" + (f" -> PSNR {final_psnr:.2f} dB" if final_psnr is not None else "")
              + (f", SSIM {ssim:.4f}" if ssim is not None else "") + f"; wrote {', '.join(written)}")
    return 0


def recorded_steps(steps: int, most: int = 1000) -> list[int]:
    """The steps whose metrics ``fit`` reports: every one up to ``most``, else ``most`` evenly spread
    (and the last), so a huge --steps never sizes a list."""
    if steps <= most:
        return list(range(steps + 1))
    return sorted({round(i * steps / most) for i in range(most + 1)})


def _number(value: float | torch.Tensor, digits: int = 4) -> float | None:
    """A metric for a JSON report: rounded, or None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def diverged(result) -> bool:
    """True when a fit ended with a non-finite loss or non-finite parameters."""
    return not (bool(torch.isfinite(result.final_loss).all())
                and all(bool(torch.isfinite(p).all()) for p in result.params.values()))


def _final(curve: torch.Tensor | None) -> float | None:
    """The mean over signals of a (B, len(steps)) metric at the last step (None when not recorded
    or not finite)."""
    return None if curve is None else _number(curve[:, -1].mean(), 6)


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
    psnr, ssim, bad = [], [], False
    for batch in batches:
        batch = batch.to(sel.device)
        with user_errors():
            init = start.init(batch)
        result = fit(task, start.field, init, batch, max(args.steps), record=args.steps,
                     **rule.fit_options(task, start.field))
        psnr.append([mean_psnr(result.psnr[:, i]) for i in range(len(result.steps))])
        bad = bad or diverged(result)
        with torch.no_grad():
            ssim.append(None if bad else _final_ssim(task, start.field, result.params, batch))
    report = {"init": args.init, "task": task.spec(), "data": source, "split": args.split, "signals": len(signals),
              "fits_per_signal": len(batches), "optimizer": rule.optimizer, "steps": args.steps,
              "psnr": [_number(sum(col) / len(col)) for col in zip(*psnr)],
              "final_ssim": None if None in ssim else _number(sum(ssim) / len(ssim), 6), "diverged": bad}
    if args.json:
        print(json.dumps(report, allow_nan=False))
    if bad:
        raise MetaINRError("a fit diverged (non-finite loss or parameters): try a smaller --lr")
    if not args.json:
        print(f"{len(signals)} {source}/{args.split} signals ({task.name}, {len(batches)} fit(s) each), "
              f"{rule.optimizer}:")
        for s, v in zip(report["steps"], report["psnr"]):
            print(f"  step {s:>5}: PSNR {v:6.2f} dB" if v is not None else f"  step {s:>5}: PSNR inf (exact)")
        if report["final_ssim"] is not None:
            print(f"  final SSIM {report['final_ssim']:.4f}")
    return 0
