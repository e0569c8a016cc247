"""The ``metainr`` command: meta-train, fit, eval, demo, plot.

User mistakes end with one line on stderr (``metainr: error: ...``) and exit code 1 (2 for
bad options); never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from ._argparse_dc import add_config_args, config_from_args, given_options
from .cli_ct import COMMANDS as CT_COMMANDS
from .cli_ct import add_parsers as add_ct_parsers
from .errors import MetaINRError
from .fields import FieldConfig

log = logging.getLogger("metainr")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"metainr: error: {message} (see '{self.prog} --help')\n")


def _parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"steps must be non-negative integers, got {text!r}")
    return steps


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metainr`` command (options generated from the configs)."""
    from .fields import FIELDS
    from .meta import LEARNERS, LearnerConfig
    from .prune import PruneConfig
    from .train import TrainConfig

    field_opts = dict(rename={"kind": "field", "seed": "field-seed"}, skip=("in_dim", "out_dim"),
                      choices={"kind": sorted(FIELDS)})

    parser = _Parser(prog="metainr", description="Meta-learned neural fields.")
    parser.add_argument("--version", action="version", version=f"metainr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("meta-train", help="meta-learn an initialisation for a class of images")
    p.add_argument("--data", default="faces", help="faces | patches | a folder of images (default: faces)")
    p.add_argument("--val-data", default=None, help="validation images: faces | patches | folder "
                   "(default: the last 10%% of the training images, held back from training)")
    p.add_argument("--resolution", type=_positive_int, default=None, help="image side in pixels (default: 25 faces, 32 else)")
    p.add_argument("--run", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    add_config_args(p, FieldConfig, "field", **field_opts)
    add_config_args(p, LearnerConfig, "learner", rename={"kind": "learner"},
                    choices={"kind": sorted(LEARNERS), "batching": ["loop", "vmap"], "inner_optimizer": ["sgd", "adam"],
                             "prune": ["gradnorm", "random"]})
    add_config_args(p, TrainConfig, "train", choices={"schedule": ["constant", "cosine"]})
    add_config_args(p, PruneConfig, "prune", rename={n: f"prune-{n}" for n in ("rounds", "fraction", "steps", "method",
                                                                             "seed")},
                    choices={"method": ["magnitude", "random"]})
    p.add_argument("--target-params", type=_positive_int, default=None,
                   help="dense-narrow baseline: solve the hidden width so the field has about this many parameters")

    p = sub.add_parser("fit", help="fit one image from a learned or a random init")
    p.add_argument("image", help="PNG/JPEG file")
    p.add_argument("--init", required=True, help="a checkpoint (.safetensors) or 'random'")
    p.add_argument("--steps", type=int, default=None, help="fitting steps (default: 2 learned, 500 random)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="default: the learner's inner rule for a checkpoint, adam for random")
    p.add_argument("--lr", type=float, default=None, help="step size (default: learned lrs / 1e-3 for adam)")
    p.add_argument("--rescale", type=float, default=None, metavar="GAMMA",
                   help="GradNCP test-time gradient rescaling with keep ratio GAMMA, 0 = plain steps "
                        "(default: the learner's rule)")
    p.add_argument("--resolution", type=_positive_int, default=None, help="resize + centre-crop to this side first")
    p.add_argument("--out", default=None, help="reconstruction PNG (default: IMAGE.recon.png beside it)")
    p.add_argument("--save-field", default=None, help="also save the fitted field (.safetensors)")
    p.add_argument("--compact", action="store_true",
                   help="save a sparse field as alive weights + packed mask (with --save-field)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_config_args(p, FieldConfig, "field", **field_opts)

    p = sub.add_parser("eval", help="held-out PSNR/SSIM after fitting a dataset's images")
    p.add_argument("--init", required=True, help="a checkpoint (.safetensors) or 'random'")
    p.add_argument("--data", default="faces", help="faces | patches | a folder of images")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of an embedded dataset")
    p.add_argument("--resolution", type=_positive_int, default=None, help="image side (default: the checkpoint's)")
    p.add_argument("--steps", type=_parse_steps, default=[0, 1, 2, 5, 10], help="comma-separated step counts")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--rescale", type=float, default=None, metavar="GAMMA",
                   help="GradNCP test-time gradient rescaling with keep ratio GAMMA, 0 = plain steps "
                        "(default: the learner's rule)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_config_args(p, FieldConfig, "field", **field_opts)

    p = sub.add_parser("demo", help="meta-learn on faces, fit held-out faces, write a report")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")

    p = sub.add_parser("plot", help="plot a run's training curve (metrics.jsonl), or what GradNCP selects")
    p.add_argument("run", help="run directory with metrics.jsonl (and best/checkpoint.safetensors)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/training.png or RUN/selected.png)")
    p.add_argument("--selected", default=None, metavar="IMAGE",
                   help="instead: the coordinates a gradncp run's inner loop keeps at steps 0, K/2 and K on "
                        "IMAGE (a file, or 'faces'/'patches' for the first held-out image)")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="--selected: image side (default: the run's training resolution)")
    add_ct_parsers(sub, field_opts, _positive_int)
    return parser



def _default_resolution(data: str) -> int:
    return 25 if data == "faces" else 32


def cmd_meta_train(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .fields import build_field
    from .meta import LEARNER_PRESETS, LearnerConfig, build_learner
    from .prune import PruneConfig, iterative_pruning, narrow_width
    from .train import TrainConfig, meta_train

    resolution = args.resolution or _default_resolution(args.data)
    train_set = load_dataset(args.data, "train", resolution)
    if args.val_data:
        val_set = load_dataset(args.val_data, "test", resolution)
    elif len(train_set) >= 10:
        n_val = len(train_set) // 10
        val_set, train_set = train_set.subset(slice(-n_val, None)), train_set.subset(slice(0, -n_val))
    else:
        val_set = None
    try:
        field_cfg = config_from_args(args, FieldConfig, "field", FieldConfig(out_dim=train_set.shape[-1]))
        kind = given_options(args, LearnerConfig, "learner").get("kind", "maml")
        preset = LearnerConfig(**LEARNER_PRESETS.get(kind, {}))
        if kind == "transinr":
            preset = dataclasses.replace(preset, image_size=resolution)
        learner_cfg = config_from_args(args, LearnerConfig, "learner", preset)
        train_cfg = config_from_args(args, TrainConfig, "train")
        if val_set is not None and given_options(args, TrainConfig, "train").get("eval_every") is None:
            train_cfg = dataclasses.replace(train_cfg, eval_every=max(train_cfg.steps // 10, 1))
        prune_cfg = config_from_args(args, PruneConfig, "prune")
        if prune_cfg.rounds:
            field_cfg = dataclasses.replace(field_cfg, sparse=True)
        if args.target_params:
            field_cfg = dataclasses.replace(field_cfg, width=narrow_width(field_cfg, args.target_params))
        learner = build_learner(build_field(field_cfg), learner_cfg)
    except ValueError as exc:
        raise MetaINRError(str(exc)) from None
    data = {"source": args.data, "resolution": resolution, "channels": train_set.shape[-1]}
    if prune_cfg.rounds:
        if args.resume:
            raise MetaINRError("--resume is not supported with --prune-rounds; each round's checkpoint is kept instead")
        records = iterative_pruning(learner, train_set, train_cfg, prune_cfg, run_dir=args.run, val=val_set, data=data)
        for rec in records:
            print(f"round {rec['round']}: density {rec['density']:.3f}, {rec['params']} parameters", file=sys.stderr)
        final = Path(args.run) / f"round_{records[-1]['round']:02d}_density_{records[-1]['density']:.3f}.safetensors"
    else:
        meta_train(learner, train_set, train_cfg, run_dir=args.run, resume=args.resume, val=val_set, data=data,
                   max_seconds=args.max_minutes * 60 if args.max_minutes else None)
        final = Path(args.run) / "checkpoint.safetensors"
    print(f"meta-training done: {final}", file=sys.stderr)
    return 0


@dataclasses.dataclass
class _Start:
    """Where fitting starts: a checkpoint's learner, or a random init of a field."""

    field: torch.nn.Module
    rule: object
    resolution: int | None
    default_steps: int
    learner: object | None = None

    def init(self, coords: torch.Tensor, values: torch.Tensor) -> dict:
        """Initial params for the signals ``values`` (B, N, C)."""
        if self.learner is None:
            return {n: p.detach() for n, p in self.field.named_parameters()}
        with torch.no_grad():
            return self.learner.signal_init(coords, values)


def _load_start(args: argparse.Namespace, random_channels: Callable[[], int]) -> _Start:
    """The field, init and default test rule that --init names (a checkpoint is read once;
    ``random_channels`` gives the output channels of a random-init field)."""
    from .fields import build_field
    from .meta import TestRule
    from .train import load_learner

    if args.init == "random":
        try:
            field = build_field(config_from_args(args, FieldConfig, "field", FieldConfig(out_dim=random_channels())))
        except ValueError as exc:
            raise MetaINRError(str(exc)) from None
        return _Start(field, TestRule("adam", 1e-3), None, 500)
    if given_options(args, FieldConfig, "field"):
        raise MetaINRError("field options only apply to --init random; a checkpoint carries its own architecture")
    learner, meta = load_learner(args.init)
    resolution = (meta.get("data") or {}).get("resolution")
    return _Start(learner.field, learner.test_rule(), resolution, max(learner.config.inner_steps, 2), learner)


def _rule(args: argparse.Namespace, default):
    from .meta import TestRule

    optimizer = args.optimizer or default.optimizer
    rescale = default.rescale if args.rescale is None else args.rescale
    if not 0 <= rescale <= 1:
        raise MetaINRError(f"--rescale must be a keep ratio in [0, 1], got {rescale}")
    if args.lr is not None:
        if args.lr <= 0:
            raise MetaINRError(f"--lr must be positive, got {args.lr}")
        return TestRule(optimizer, args.lr, rescale)
    if optimizer != default.optimizer:
        return TestRule(optimizer, 1e-3 if optimizer == "adam" else 1e-2, rescale)
    return TestRule(default.optimizer, default.lrs, rescale)


def cmd_fit(args: argparse.Namespace) -> int:
    from .compact import export_compact
    from .data.images import load_image, resize_center_crop
    from .fit import batched_predict, fit
    from .metrics import ssim
    from .signals import grid_coords, values_to_image
    from .store import save_tensors

    if args.steps is not None and args.steps < 0:
        raise MetaINRError(f"--steps must be >= 0, got {args.steps}")
    start = _load_start(args, lambda: load_image(args.image).shape[-1])
    field = start.field
    if args.compact and not (args.save_field and field.config.sparse):
        raise MetaINRError("--compact needs --save-field PATH and a sparse field (a checkpoint from --prune-rounds)")
    image = load_image(args.image, channels=field.config.out_dim)
    resolution = args.resolution or start.resolution
    if resolution:
        image = resize_center_crop(image, resolution)
    rule = _rule(args, start.rule)
    steps = start.default_steps if args.steps is None else args.steps
    h, w, c = image.shape
    coords, values = grid_coords(h, w), image.reshape(1, -1, c)
    result = fit(field, start.init(coords, values), coords, values, steps, optimizer=rule.optimizer, lr=rule.lrs,
                 record=list(range(steps + 1)), rescale=rule.rescale)
    with torch.no_grad():
        recon = values_to_image(batched_predict(field, result.params, coords), h, w).clamp(0, 1)
    out = Path(args.out) if args.out else Path(args.image).with_suffix(".recon.png")
    _write_png(out, recon[0])
    saved_bytes = None
    if args.save_field:
        one = {n: p[0] for n, p in result.params.items()}
        if args.compact:
            saved_bytes = export_compact(args.save_field, field, one)
        else:
            save_tensors(args.save_field, one, {"field": field.config.to_dict(), "image": str(args.image),
                                                "steps": steps})
            saved_bytes = Path(args.save_field).stat().st_size
    final_ssim = float(ssim(recon, image[None])[0]) if min(h, w) >= 11 else None
    report = {"image": str(args.image), "init": args.init, "optimizer": rule.optimizer,
              "steps": result.steps, "psnr": [round(float(v), 4) for v in result.psnr[0]],
              "final_psnr": float(result.psnr[0, -1]), "final_ssim": final_ssim, "output": str(out)}
    if saved_bytes is not None:
        report.update(field_file=args.save_field, field_bytes=saved_bytes, bits_per_value=8 * saved_bytes / (h * w * c))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.image}: {steps} steps -> PSNR {report['final_psnr']:.2f} dB"
              + (f", SSIM {final_ssim:.4f}" if final_ssim is not None else "") + f"; wrote {out}")
    return 0


def _write_png(path: Path, image: torch.Tensor) -> None:
    import io

    from PIL import Image

    from .store import atomic_write_bytes

    array = (image.numpy() * 255 + 0.5).astype("uint8")
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .fit import batched_predict, fit
    from .metrics import mean_psnr, ssim
    from .signals import values_to_image

    start = _load_start(args, lambda: 1 if args.data == "faces" else 3)
    field = start.field
    resolution = args.resolution or start.resolution or _default_resolution(args.data)
    dataset = load_dataset(args.data, args.split, resolution)
    if dataset.shape[-1] != field.config.out_dim:
        raise MetaINRError(f"data has {dataset.shape[-1]} channels but the field outputs {field.config.out_dim}")
    rule = _rule(args, start.rule)
    coords, values = dataset.coords, dataset.values
    result = fit(field, start.init(coords, values), coords, values, max(args.steps), optimizer=rule.optimizer,
                 lr=rule.lrs, record=args.steps, rescale=rule.rescale)
    h, w, c = dataset.shape
    with torch.no_grad():
        recon = values_to_image(batched_predict(field, result.params, dataset.coords), h, w)
    final_ssim = float(ssim(recon, dataset.images).mean()) if min(h, w) >= 11 else None
    report = {"init": args.init, "data": args.data, "split": args.split, "resolution": resolution,
              "signals": len(dataset), "optimizer": rule.optimizer, "steps": result.steps,
              "psnr": [round(mean_psnr(result.psnr[:, i]), 4) for i in range(len(result.steps))],
              "final_ssim": final_ssim}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(dataset)} {args.data}/{args.split} signals at {resolution}px, {rule.optimizer}:")
        for s, v in zip(report["steps"], report["psnr"]):
            print(f"  step {s:>5}: PSNR {v:6.2f} dB")
        if final_ssim is not None:
            print(f"  final SSIM {final_ssim:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, quick=args.quick)
    print(json.dumps(summary["headline"], indent=2))
    print(f"report written to {args.out}/", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_training
    from .train import read_metrics

    if args.selected:
        return _plot_selected(args)
    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise MetaINRError(f"no metrics.jsonl in {args.run}")
    records = read_metrics(path)
    if not records:
        raise MetaINRError(f"{path} is empty")
    out = args.out or str(Path(args.run) / "training.png")
    plot_training(records, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _plot_selected(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .data.images import load_image, resize_center_crop
    from .plot import plot_selected
    from .signals import grid_coords
    from .train import load_learner

    ckpt = next((Path(args.run) / n for n in ("best.safetensors", "checkpoint.safetensors")
                 if (Path(args.run) / n).is_file()), None)
    if ckpt is None:
        raise MetaINRError(f"no best.safetensors or checkpoint.safetensors in {args.run}")
    learner, meta = load_learner(ckpt)
    if learner.config.kind != "gradncp":
        raise MetaINRError(f"--selected needs a gradncp run; {ckpt} is a {learner.config.kind} learner")
    resolution = args.resolution or (meta.get("data") or {}).get("resolution") or 32
    channels = learner.field.config.out_dim
    if args.selected in ("faces", "patches"):
        image = load_dataset(args.selected, "test", resolution).images[0]
    else:
        image = resize_center_crop(load_image(args.selected, channels=channels), resolution)
    if image.shape[-1] != channels:
        raise MetaINRError(f"{args.selected} has {image.shape[-1]} channels but the field outputs {channels}")
    h, w, c = image.shape
    trace: list[torch.Tensor] = []
    learner.adapt(grid_coords(h, w), image.reshape(-1, c), trace=trace)
    k = len(trace) - 1
    masks = {}
    for step in sorted({0, k // 2, k}):
        mask = torch.zeros(h * w, dtype=torch.bool)
        mask[trace[step]] = True
        masks[f"inner step {step}"] = mask.view(h, w)
    out = args.out or str(Path(args.run) / "selected.png")
    plot_selected(image, masks, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


COMMANDS = {"meta-train": cmd_meta_train, "fit": cmd_fit, "eval": cmd_eval, "demo": cmd_demo, "plot": cmd_plot,
            **CT_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metainr`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except MetaINRError as exc:
        print(f"metainr: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("metainr: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
