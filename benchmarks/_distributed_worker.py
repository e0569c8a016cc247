"""One meta-training run through the library API, for benchmarks/distributed.py: 1 process when
launched plainly, N under torchrun. ``--dtype float64`` shows what the float32 runs' differences are
made of (float summation order, amplified by Adam), since the collectives themselves are exact.

    python benchmarks/_distributed_worker.py LEARNER OUT.safetensors [--dtype float64] [--steps 5]
"""
from __future__ import annotations

import argparse

import torch

from metainr import TrainConfig, build_field, build_learner, meta_train
from metainr.disk import save_tensors
from metainr.fields import FieldConfig
from metainr.tasks import Tokenizable, build_task, require
from metainr.train.distributed import close_world, init_world

LEARNERS = {"maml": dict(inner_steps=3), "reptile": dict(inner_steps=3), "transinr": {}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("learner", choices=sorted(LEARNERS))
    p.add_argument("out")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    world, device = init_world(torch.device("cpu"))
    task = build_task("image", resolution=16)
    data = task.load("faces", "train").to(dtype)
    field = build_field(FieldConfig(kind="siren", in_dim=task.in_dim, out_dim=task.out_dim, width=32, depth=3))
    options = dict(LEARNERS[args.learner])
    if args.learner == "transinr":
        tokens = require(task, Tokenizable).tokens(task.batch(data[:1]))
        options.update(tokens=int(tokens.shape[1]), token_dim=int(tokens.shape[2]))
    torch.manual_seed(0)
    learner = build_learner(field, args.learner, **options).to(dtype)
    meta_train(learner, task, data, TrainConfig(steps=args.steps, batch_size=4, outer_lr=1e-3, eval_every=0),
               progress=False)
    if world.main:
        save_tensors(args.out, {k: v.detach() for k, v in learner.state_dict().items()}, {"dtype": args.dtype})
    close_world()


if __name__ == "__main__":
    main()
