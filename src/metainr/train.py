"""The outer loop: optimiser, schedule, checkpoints, validation, logging, resume.

Learners only return gradients (:meth:`Learner.meta_gradient`); this module owns everything
else. A run directory holds ``checkpoint.safetensors`` (latest), ``best.safetensors`` (best
validation PSNR), ``config.json`` and ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .config import Config
from .data import ImageDataset
from .errors import CheckpointMismatch, MetaINRError, TrainingDiverged
from .fields import FieldConfig, build_field
from .fit import fit
from .meta import Learner, LearnerConfig, build_learner
from .metrics import mean_psnr
from .store import atomic_write_bytes, atomic_write_json, load_strict, load_tensors, save_tensors

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainConfig(Config):
    """Settings of meta-training (the outer loop)."""

    steps: int = 1000
    """number of outer steps"""
    batch_size: int = 4
    """signals per meta-batch"""
    outer_lr: float = 1e-4
    """Adam learning rate of the outer loop"""
    schedule: str = "constant"
    """outer lr schedule: constant | cosine"""
    clip: float = 1.0
    """clip the outer gradient to this global norm (0 disables)"""
    seed: int = 0
    """seed of the meta-batch order"""
    checkpoint_every: int = 100
    """write checkpoint.safetensors every this many steps (and at the end)"""
    eval_every: int = 0
    """validate every this many steps (0: never)"""
    eval_steps: int = 2
    """test-time steps used for validation PSNR"""
    patience: int = 0
    """stop after this many validations without improvement (0: never stop early)"""
    log_every: int = 10
    """append a line to metrics.jsonl every this many steps"""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.outer_lr <= 0 or self.clip < 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1, outer_lr > 0 and clip >= 0; got steps={self.steps}, "
                             f"batch_size={self.batch_size}, outer_lr={self.outer_lr}, clip={self.clip}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if min(self.checkpoint_every, self.log_every) < 1 or min(self.eval_every, self.eval_steps, self.patience) < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1; eval_every, eval_steps, patience >= 0")


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """The meta-batch of step ``step``: a pure function of (seed, step), so resume is exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randperm(n, generator=g)[: min(batch_size, n)]

def _lr_at(config: TrainConfig, step: int) -> float:
    if config.schedule == "cosine":
        return config.outer_lr * 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    return config.outer_lr

def _new_optimizer(learner: Learner, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(learner.parameters(), lr=config.outer_lr)

def checkpoint_tensors(learner: Learner, optimizer: torch.optim.Optimizer | None) -> dict[str, Tensor]:
    """Learner state + Adam state as one flat name -> tensor dict."""
    tensors = {f"learner/{k}": v for k, v in learner.state_dict().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in learner.named_parameters()}
        for p, state in optimizer.state.items():
            for key, value in state.items():
                tensors[f"adam/{names[id(p)]}/{key}"] = torch.as_tensor(value)
    return tensors

def save_checkpoint(path: str | Path, learner: Learner, optimizer: torch.optim.Optimizer | None,
                    step: int, train: TrainConfig | None = None, data: dict | None = None,
                    extra: dict | None = None) -> None:
    """Atomically write a checkpoint that rebuilds ``learner`` (and resumes ``optimizer``)."""
    meta = {
        "field": learner.field.config.to_dict(),
        "learner": learner.config.to_dict(),
        "train": train.to_dict() if train else None,
        "data": data,
        "step": step,
        **(extra or {}),
    }
    save_tensors(path, checkpoint_tensors(learner, optimizer), meta)

def load_learner(path: str | Path) -> tuple[Learner, dict[str, Any]]:
    """Rebuild the learner stored in a checkpoint (its own config decides the architecture)."""
    tensors, meta = load_tensors(path)
    try:
        field = build_field(FieldConfig.from_dict(meta["field"]))
        learner = build_learner(field, LearnerConfig.from_dict(meta["learner"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointMismatch(f"{path}: unusable config in checkpoint ({exc})") from None
    _restore(learner, None, tensors, str(path))
    return learner, meta

def _restore(learner: Learner, optimizer: torch.optim.Optimizer | None, tensors: dict[str, Tensor],
             what: str) -> None:
    state = {k[len("learner/"):]: v for k, v in tensors.items() if k.startswith("learner/")}
    load_strict(learner.state_dict(keep_vars=True), state, f"checkpoint {what}")
    if optimizer is None:
        return
    for name, p in learner.named_parameters():
        prefix = f"adam/{name}/"
        st = {k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
        if st:
            optimizer.state[p] = st

def validate(learner: Learner, dataset: ImageDataset, steps: int) -> float:
    """Mean held-out PSNR after ``steps`` test-time steps from the learner's current init.

    A dataset with its own ``validate(learner, steps)`` (a signal type whose observations are not
    its values, e.g. CT sinograms) decides for itself.
    """
    if hasattr(dataset, "validate"):
        return float(dataset.validate(learner, steps))
    rule = learner.test_rule()
    with torch.no_grad():
        init = learner.signal_init(dataset.coords, dataset.values)
    result = fit(learner.field, init, dataset.coords, dataset.values, steps, optimizer=rule.optimizer, lr=rule.lrs,
                 rescale=rule.rescale)
    return mean_psnr(result.psnr[:, -1])

def meta_train(
    learner: Learner,
    dataset: ImageDataset,
    config: TrainConfig = TrainConfig(),
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    val: ImageDataset | None = None,
    data: dict | None = None,
    progress: bool | None = None,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Tensor]:
    """Meta-train ``learner`` on ``dataset``; returns the learned init (name -> tensor).

    With ``run_dir`` it writes checkpoints, ``config.json`` and ``metrics.jsonl`` there;
    ``resume=True`` continues from its checkpoint with the same optimiser state and data order,
    ending with the same params as an uninterrupted run. A non-finite loss stops training with
    :class:`TrainingDiverged` and leaves the last good checkpoint in place. ``max_seconds`` ends
    training early (with a checkpoint) once that much time has passed on ``clock`` (wall time by
    default; ``time.process_time`` gives a CPU-time budget). With validation
    (``val`` and ``eval_every``) the best init is kept and returned.
    """
    optimizer = _new_optimizer(learner, config)
    run = Path(run_dir) if run_dir is not None else None
    ckpt = run / "checkpoint.safetensors" if run else None
    start = 0
    best = (-math.inf, 0)
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise MetaINRError(f"nothing to resume: no checkpoint in {run}")
        tensors, meta = load_tensors(ckpt)
        _check_same_setup(meta, learner, config, ckpt)
        _restore(learner, optimizer, tensors, str(ckpt))
        start = int(meta["step"])
        best = (meta.get("best_psnr", -math.inf), meta.get("best_step", 0))
        _truncate_log(run / "metrics.jsonl", start)
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", {
            "field": learner.field.config.to_dict(), "learner": learner.config.to_dict(),
            "train": config.to_dict(), "data": data,
        })
    coords, values = (None, None) if hasattr(dataset, "meta_batch") else (dataset.coords, dataset.values)
    params = list(learner.parameters())
    best_state = None
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=not show, desc=f"meta-train {learner.config.kind}",
               dynamic_ncols=True)
    t0 = clock()
    evals_without_gain = 0
    step = start
    try:
        for step in range(start, config.steps):
            idx = batch_indices(len(dataset), config.batch_size, config.seed, step)
            tic = time.perf_counter()
            if hasattr(dataset, "meta_batch"):  # a signal type that draws its own observations per task
                stats, grads = learner.meta_gradient(*dataset.meta_batch(idx, step))
            else:
                stats, grads = learner.meta_gradient(coords, values[idx])
            for p, (name, _) in zip(params, learner.named_parameters()):
                p.grad = grads[name]
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip if config.clip > 0 else math.inf))
            if not (math.isfinite(stats["loss"]) and math.isfinite(norm)):
                good = f"{ckpt} (step {_ckpt_step(ckpt)})" if ckpt is not None and ckpt.is_file() else "none written"
                raise TrainingDiverged(
                    f"training diverged at outer step {step + 1}: outer loss {stats['loss']}, gradient norm {norm}; "
                    f"last good checkpoint: {good}"
                )
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            record = {"step": done, "loss": stats["loss"], "grad_norm": norm, "lr": _lr_at(config, step),
                      "seconds": time.perf_counter() - tic}
            if val is not None and config.eval_every and done % config.eval_every == 0:
                record["val_psnr"] = validate(learner, val, config.eval_steps)
                if record["val_psnr"] > best[0]:
                    best, evals_without_gain = (record["val_psnr"], done), 0
                    best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
                    if run is not None:
                        save_checkpoint(run / "best.safetensors", learner, None, done, config, data,
                                        {"best_psnr": best[0], "best_step": done})
                else:
                    evals_without_gain += 1
                log.info("step %d/%d: loss %.3e, validation PSNR %.2f dB (best %.2f at step %d)", done,
                         config.steps, stats["loss"], record["val_psnr"], best[0], best[1])
            if run is not None and (done % config.log_every == 0 or "val_psnr" in record or done == config.steps):
                _append_jsonl(run / "metrics.jsonl", record)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.2e}", **({"val": f"{record['val_psnr']:.2f}dB"} if "val_psnr" in record else {}))
            out_of_time = max_seconds is not None and clock() - t0 > max_seconds
            patience_over = config.patience and evals_without_gain >= config.patience
            if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps or out_of_time
                                     or patience_over):
                save_checkpoint(ckpt, learner, optimizer, done, config, data,
                                {"best_psnr": best[0], "best_step": best[1]})
            if out_of_time or patience_over:
                log.info("stopping at step %d (%s)", done, "time budget" if out_of_time else "no validation gain")
                break
    finally:
        bar.close()
    if best_state is not None:
        learner.load_state_dict(best_state)
    return {n: p.detach().clone() for n, p in learner.init_params().items()}

def _ckpt_step(path: Path) -> int:
    return int(load_tensors(path)[1]["step"])

def _check_same_setup(meta: dict, learner: Learner, config: TrainConfig, path: Path) -> None:
    for key, mine in (("field", learner.field.config.to_dict()), ("learner", learner.config.to_dict())):
        theirs = meta.get(key) or {}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise CheckpointMismatch(
                f"cannot resume {path}: its {key} has {k}={theirs.get(k)!r} but this run has {k}={mine.get(k)!r}"
            )
    theirs = meta.get("train") or {}
    for k in ("batch_size", "seed", "outer_lr", "schedule", "clip"):
        if theirs.get(k) != getattr(config, k):
            raise CheckpointMismatch(
                f"cannot resume {path}: it was trained with {k}={theirs.get(k)!r}, this run has {getattr(config, k)!r}"
            )

def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")

def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

