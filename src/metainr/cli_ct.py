"""The CT subcommands of ``metainr``: ``meta-train-ct`` and ``fit-ct``.

``fit-ct`` reconstructs an image from a sinogram (``.npy``, ``(n_detectors, n_views)`` as
``skimage.transform.radon(circle=True)`` makes it) by fitting a field from a CT checkpoint (or
any 1-channel image checkpoint) or from a random init; ``meta-train-ct`` meta-learns that
checkpoint on procedural phantoms or a folder of slices. Registered by :mod:`metainr.cli`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ._argparse_dc import add_config_args, config_from_args, given_options
from .errors import MetaINRError
from .fields import FieldConfig

# the CT field and learner unless told otherwise (those of benchmarks/ct.py). A SIREN with a low
# frequency (w0 = 10): from a few views a w0 = 30 SIREN fills the directions no view constrains with
# fine streaks, and a w0 = 10 one reconstructs 1-9 dB better at 64^2 from 4-8 views, from a random
# or a learned init. Reptile with 12 plain SGD steps (learnit's CT recipe) gave a better prior than
# MAML or Meta-SGD with 3 steps in equal-length trials (see the README's CT section).
CT_FIELD = FieldConfig(kind="siren", out_dim=1, width=64, depth=4, w0=10.0, w0_first=10.0, output_offset=0.1)
CT_LEARNER = {"kind": "reptile", "inner_steps": 12, "inner_lr": 3e-2, "chunk_coords": 1 << 20}
CT_LEARNERS = ("maml", "fomaml", "metasgd", "reptile")  # the learners that take an inner-loop context
# optimizer, lr, steps of a random init (benchmarks/ct.py picked lr 1e-3 and 300-1000 steps on validation)
RANDOM_RULE = ("adam", 1e-3, 500)


def _angles(text: str) -> np.ndarray:
    """``START:STOP:COUNT`` (COUNT angles evenly over [START, STOP)), a comma-separated list of
    degrees, or a .npy/.txt file of degrees."""
    if text.endswith((".npy", ".txt")):
        path = Path(text)
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"angles file not found: {path}")
        try:
            values = np.load(path, allow_pickle=False) if text.endswith(".npy") else np.loadtxt(path)
        except (ValueError, OSError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read angles from {path}: {exc}") from None
        values = np.asarray(values, dtype=np.float64).reshape(-1)
    else:
        try:
            if ":" in text:
                start, stop, count = text.split(":")
                if int(count) < 1:
                    raise ValueError
                values = float(start) + np.arange(int(count)) * (float(stop) - float(start)) / int(count)
            else:
                values = np.array([float(v) for v in text.split(",") if v.strip()])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"angles must be START:STOP:COUNT, a comma-separated list of degrees or a .npy/.txt file, got {text!r}"
            ) from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"angles must be finite numbers, got {text!r}")
    return values


def _pair(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got {text!r}") from None
    return lo, hi


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parsers(sub: argparse._SubParsersAction, field_opts: dict, positive_int) -> None:
    """Add ``meta-train-ct`` and ``fit-ct`` to the ``metainr`` subcommands."""
    from .meta import LearnerConfig
    from .train import TrainConfig

    p = sub.add_parser("meta-train-ct", help="meta-learn a CT prior: inner loops on a few views of each sinogram")
    p.add_argument("--data", default="ct-phantoms", help="ct-phantoms | a folder of slices (PNG/NPY/DICOM); the "
                   f"field is a SIREN of width {CT_FIELD.width} and depth {CT_FIELD.depth} unless the field options "
                   "say otherwise")
    p.add_argument("--resolution", type=positive_int, default=64, help="image side = detectors (default: 64)")
    p.add_argument("--count", type=positive_int, default=1000, help="training phantoms (default: 1000)")
    p.add_argument("--val-count", type=positive_int, default=8,
                   help="validation phantoms (default: 8; a folder holds back its last 10%%)")
    p.add_argument("--views", type=_pair, default=(1, 32), help="MIN,MAX views an inner loop sees (default: 1,32)")
    p.add_argument("--val-views", type=_int_list, default=(2, 8), help="views of the validation fits (default: 2,8)")
    p.add_argument("--score-image", action=argparse.BooleanOptionalAction, default=True,
                   help="score tasks on the image as well as the dense sinogram (default: on)")
    p.add_argument("--sampling", choices=["pixels", "field"], default="pixels",
                   help="forward model: render on the pixel grid, or sample the field along each ray")
    p.add_argument("--run", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    add_config_args(p, FieldConfig, "field", **field_opts)
    add_config_args(p, LearnerConfig, "learner", rename={"kind": "learner"},
                    choices={"kind": list(CT_LEARNERS), "batching": ["loop", "vmap"],
                             "inner_optimizer": ["sgd", "adam"]})
    add_config_args(p, TrainConfig, "train", choices={"schedule": ["constant", "cosine"]})

    p = sub.add_parser("fit-ct", help="reconstruct an image from a sinogram (.npy) from a learned or a random init")
    p.add_argument("sinogram", help=".npy array (n_detectors, n_views), as skimage.transform.radon(circle=True) makes")
    p.add_argument("--angles", type=_angles, default=None,
                   help="view angles in degrees: START:STOP:COUNT, a list 0,22.5,... or a .npy/.txt file "
                        "(default: n_views angles evenly over [0, 180))")
    p.add_argument("--init", required=True, help="a checkpoint (.safetensors) or 'random' (a SIREN of width "
                   f"{CT_FIELD.width} and depth {CT_FIELD.depth} unless the field options below say otherwise)")
    p.add_argument("--steps", type=int, default=None, help="fitting steps (default: the checkpoint's validation "
                   f"steps; {RANDOM_RULE[2]} for random)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="default: the learner's test rule for a checkpoint, adam for random")
    p.add_argument("--lr", type=float, default=None, help="step size (default: the learned one / "
                   f"{RANDOM_RULE[1]} for random)")
    p.add_argument("--sampling", choices=["pixels", "field"], default=None,
                   help="forward model (default: the checkpoint's, else pixels)")
    p.add_argument("--reference", default=None, help="the true image (.npy or PNG) to report PSNR/SSIM against")
    p.add_argument("--out", default=None, help="reconstruction PNG; a .npy of the same name is written too "
                   "(default: SINOGRAM.recon.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_config_args(p, FieldConfig, "field", **field_opts)


def _ct_field(args: argparse.Namespace) -> FieldConfig:
    return config_from_args(args, FieldConfig, "field", CT_FIELD)


def cmd_meta_train_ct(args: argparse.Namespace) -> int:
    from .data.ct import CTDataset, load_ct_images
    from .fields import build_field
    from .meta import LearnerConfig, build_learner
    from .signals.ct import RayIntegral
    from .train import TrainConfig, meta_train

    size = args.resolution
    if size < 8:
        raise MetaINRError(f"--resolution must be at least 8, got {size}")
    images = load_ct_images(args.data, "train", size, args.count)
    if args.data == "ct-phantoms":
        val_images = load_ct_images(args.data, "val", size, args.val_count)
    elif len(images) >= 10:
        n_val = len(images) // 10
        images, val_images = images[:-n_val], images[-n_val:]
    else:
        val_images = None
    try:
        field_cfg = dataclasses.replace(_ct_field(args), in_dim=2, out_dim=1)
        learner_cfg = config_from_args(args, LearnerConfig, "learner", LearnerConfig(**CT_LEARNER))
        train_cfg = config_from_args(args, TrainConfig, "train",
                                     TrainConfig(outer_lr=1e-3, schedule="cosine", eval_steps=50))
        if val_images is not None and given_options(args, TrainConfig, "train").get("eval_every") is None:
            train_cfg = dataclasses.replace(train_cfg, eval_every=max(train_cfg.steps // 10, 1))
        train_set = CTDataset(images, views=args.views, score_image=args.score_image, seed=train_cfg.seed,
                              name=args.data)
        val_set = CTDataset(val_images, val_views=args.val_views, name=f"{args.data}-val") if val_images is not None \
            else None
        obs = RayIntegral(build_field(field_cfg), size, sampling=args.sampling)
        learner = build_learner(obs, learner_cfg)
    except ValueError as exc:
        raise MetaINRError(str(exc)) from None
    data = {"signal": "ct", "source": args.data, "resolution": size, "channels": 1, "views": list(args.views),
            "val_views": list(args.val_views), "score_image": args.score_image, "sampling": args.sampling,
            "negative_slope": 0.01}
    meta_train(learner, train_set, train_cfg, run_dir=args.run, resume=args.resume, val=val_set, data=data,
               max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    print(f"meta-training done: {Path(args.run) / 'checkpoint.safetensors'}", file=sys.stderr)
    return 0


def _load_sinogram(path: str) -> torch.Tensor:
    file = Path(path)
    if not file.is_file():
        raise MetaINRError(f"sinogram file not found: {file}")
    if file.suffix.lower() != ".npy":
        raise MetaINRError(f"the sinogram must be a .npy array (n_detectors, n_views), got {file.name}")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MetaINRError(f"cannot read sinogram {file}: {exc}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 8 or not np.issubdtype(array.dtype, np.number):
        raise MetaINRError(f"the sinogram must be a numeric (n_detectors >= 8, n_views) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise MetaINRError(f"sinogram {file} holds NaN or infinite values")
    return torch.from_numpy(array.astype(np.float32))


def _load_reference(path: str, size: int) -> torch.Tensor:
    from .data.ct import _read_slice

    file = Path(path)
    if not file.is_file():
        raise MetaINRError(f"reference image not found: {file}")
    if file.suffix.lower() == ".npy":
        try:
            array = np.load(file, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as exc:
            raise MetaINRError(f"cannot read reference {file}: {exc}") from None
    else:
        array = _read_slice(file).astype(np.float32)
    if array.shape != (size, size):
        raise MetaINRError(f"the reference must be {size}x{size} (the detector count), got shape {array.shape}")
    return torch.from_numpy(array)


def cmd_fit_ct(args: argparse.Namespace) -> int:
    from .fields import build_field
    from .reconstruct import circle_psnr, circle_ssim, field_recon
    from .signals.ct import RayIntegral
    from .train import load_learner

    sinogram = _load_sinogram(args.sinogram)
    size, n_views = sinogram.shape
    angles = args.angles if args.angles is not None else np.arange(n_views) * 180.0 / n_views
    if len(angles) != n_views:
        raise MetaINRError(f"{len(angles)} angles given for a sinogram of {n_views} views (its columns)")
    if args.steps is not None and args.steps < 0:
        raise MetaINRError(f"--steps must be >= 0, got {args.steps}")
    if args.lr is not None and args.lr <= 0:
        raise MetaINRError(f"--lr must be positive, got {args.lr}")
    reference = _load_reference(args.reference, size) if args.reference else None
    if args.init == "random":
        try:
            field = build_field(dataclasses.replace(_ct_field(args), in_dim=2, out_dim=1))
        except ValueError as exc:
            raise MetaINRError(str(exc)) from None
        init = {n: p.detach() for n, p in field.named_parameters()}
        optimizer, lr, steps = RANDOM_RULE
        sampling, slope = "pixels", 0.01
    else:
        if given_options(args, FieldConfig, "field"):
            raise MetaINRError("field options only apply to --init random; a checkpoint carries its own architecture")
        learner, meta = load_learner(args.init)
        field = learner.field
        if field.config.in_dim != 2 or field.config.out_dim != 1:
            raise MetaINRError(f"{args.init} holds a field with {field.config.in_dim}-d inputs and "
                               f"{field.config.out_dim} channels; CT needs a 2-d, 1-channel field")
        init = {n: p.detach() for n, p in learner.init_params().items()}
        rule = learner.test_rule()
        optimizer, lr = rule.optimizer, rule.lrs
        steps = int((meta.get("train") or {}).get("eval_steps") or max(learner.config.inner_steps, 2))
        data = meta.get("data") or {}
        sampling, slope = data.get("sampling", "pixels"), float(data.get("negative_slope", 0.01))
    if args.optimizer and args.optimizer != optimizer:
        optimizer, lr = args.optimizer, 1e-3 if args.optimizer == "adam" else 1e-2
    lr = args.lr if args.lr is not None else lr
    steps = args.steps if args.steps is not None else steps
    obs = RayIntegral(field, size, sampling=args.sampling or sampling, negative_slope=slope)
    image = field_recon(obs, init, sinogram[None], torch.as_tensor(angles), steps, optimizer=optimizer, lr=lr)[steps][0]
    out = Path(args.out) if args.out else Path(args.sinogram).with_suffix(".recon.png")
    _write_outputs(out, image)
    report = {"sinogram": str(args.sinogram), "init": args.init, "detectors": size, "views": n_views,
              "steps": steps, "optimizer": optimizer, "output": str(out), "output_npy": str(out.with_suffix(".npy"))}
    if reference is not None:
        report["psnr"] = float(circle_psnr(image[None], reference[None])[0])
        report["ssim"] = float(circle_ssim(image[None], reference[None])[0]) if size >= 11 else None
    if args.json:
        print(json.dumps(report))
    else:
        quality = f" -> PSNR {report['psnr']:.2f} dB inside the circle" if reference is not None else ""
        print(f"{args.sinogram}: {n_views} views, {steps} steps{quality}; wrote {out} and {report['output_npy']}")
    return 0


def _write_outputs(png: Path, image: torch.Tensor) -> None:
    """The reconstruction (n, n) as an 8-bit grey PNG (clamped to [0, 1]) and as a float32 .npy beside it."""
    import io

    from PIL import Image

    from .store import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray((image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(png, buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, image.numpy().astype(np.float32), allow_pickle=False)
    atomic_write_bytes(png.with_suffix(".npy"), buf.getvalue())


COMMANDS = {"meta-train-ct": cmd_meta_train_ct, "fit-ct": cmd_fit_ct}
