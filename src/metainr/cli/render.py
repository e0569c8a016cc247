"""``metainr render``: a field as a strip of frames (a PNG) and a GIF: views from cameras turning
around it (views, sdf3d) or a clip's frames at evenly spread times (video, any count).

The source is a checkpoint (its learned init: what a fit starts from) or a fitted field (``fit
--save-field``, compact or not); both name their task, which says what its frames are
(:class:`metainr.tasks.Renderable`; tasks with nothing to render refuse in one line).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import MetaINRError
from ..functional import field_function
from ..disk import atomic_group, atomic_write_bytes, check_outputs, load_meta
from ..tasks import Renderable, build_task, require
from ..zoo import PREFIX, resolve_checkpoint
from .common import Selection, add_device, user_errors
from .options import positive_int


def add_parser(sub: argparse._SubParsersAction, sel: Selection) -> None:
    p = sub.add_parser("render", help="render a field as frames: a turntable (views, sdf3d) or a clip in time (video)",
                       description="Render a checkpoint's learned init or a fitted field (fit --save-field) as N "
                                   "frames, from cameras on a turntable or at times evenly over a clip: a PNG strip "
                                   "and an animated GIF.")
    p.add_argument("source", help="a checkpoint or a fitted field (.safetensors), or zoo:NAME; its task comes with "
                   "it")
    p.add_argument("--views", type=positive_int, default=8,
                   help="frames: cameras around the object, or times over a clip (default: 8)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="pixels a side (default: the task's)")
    p.add_argument("--out", default=None, help="PNG strip (default: SOURCE.turntable.png); the GIF goes beside it")
    p.add_argument("--frame-ms", type=positive_int, default=120, help="GIF frame duration (default: 120)")
    add_device(p, {"source", "views", "resolution", "out", "frame-ms"})


def _field_and_params(path: str | Path,
                      device: torch.device) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """(field, params of one signal, metadata with the task's spec) of a checkpoint or a fitted-field file."""
    from ..field_files import load_field
    from ..train import load_learner

    if load_meta(path).get("learner"):
        learner, meta = load_learner(path, device=device)
        return learner.field, {n: p.detach() for n, p in learner.init_params().items()}, meta
    fitted = load_field(path, device)
    return fitted.field, fitted.params, {"task": fitted.task.spec() if fitted.task is not None else None}


def run_render(args: argparse.Namespace, sel: Selection) -> int:
    from PIL import Image

    source = resolve_checkpoint(args.source)  # zoo:NAME -> the packaged file; its outputs go to NAME.turntable.png
    out = Path(args.out) if args.out else (Path(source.name) if str(args.source).startswith(PREFIX) else
                                           source).with_suffix(".turntable.png")
    gif = out.with_suffix(".gif")
    check_outputs([out, gif], [source])
    field, params, meta = _field_and_params(source, sel.device or torch.device("cpu"))
    if not meta.get("task"):
        raise MetaINRError(f"{args.source} names no task: render needs one with frames (views, sdf3d, video)")
    with user_errors(f"{args.source}: "):
        task = build_task(meta["task"], **({"resolution": args.resolution} if args.resolution else {}))
        with torch.no_grad():
            views = require(task, Renderable).render(field_function(field), params, args.views)
    frames = (views.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)  # (V, H, W, 3)
    strip, animation = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.concatenate(list(frames), axis=1)).save(strip, format="PNG")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(animation, format="GIF", save_all=True, append_images=images[1:], duration=args.frame_ms, loop=0)
    with atomic_group():  # the strip and the GIF: both or neither (never a new strip beside an old GIF)
        atomic_write_bytes(out, strip.getvalue())
        atomic_write_bytes(gif, animation.getvalue())
    print(f"wrote {out} and {gif} ({args.views} views, task '{task.name}')", file=sys.stderr)
    return 0
