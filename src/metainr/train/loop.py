"""The outer loop: optimiser, schedule, devices, checkpoints, validation, logging, resume, callbacks.

Learners only return gradients (:meth:`Learner.meta_gradient`) and tasks only make batches; this
module owns everything else. A run directory holds ``checkpoint.safetensors`` (latest),
``best.safetensors`` (best validation PSNR), ``config.json`` and ``metrics.jsonl``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..device import resolve_device
from ..errors import CheckpointMismatch, MetaINRError, NonFiniteTensors, TrainingDiverged
from ..fit import fit
from ..meta import Learner
from ..metrics import mean_psnr
from ..disk import atomic_write_bytes, atomic_write_json, load_tensors
from ..tasks import Task
from .checkpoint import checkpoint_tensors, restore, save_checkpoint
from .config import TrainConfig
from .distributed import World, all_reduce_mean, any_process, broadcast_floats, broadcast_tensors, current_world, shard
from .rundir import RunDirectory, own

log = logging.getLogger(__name__)
METRICS_CAP = 1 << 30
"""the largest metrics.jsonl read back (a run logs ~150 bytes a step: millions of steps)"""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """The meta-batch of step ``step``: a pure function of (seed, step), so resume is exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randperm(n, generator=g)[: min(batch_size, n)]


def context_generator(seed: int, step: int) -> torch.Generator:
    """The random source of the inner-loop contexts a task draws at ``step`` (exact resume)."""
    return torch.Generator().manual_seed(seed * 7_368_787 + step)


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.schedule == "cosine":
        return config.outer_lr * 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    return config.outer_lr


def validate(learner: Learner, task: Task, signals: Any, steps: int, device: torch.device | None = None) -> float:
    """Mean held-out PSNR (the task's metric) after ``steps`` test-time steps from the learner's
    init, averaged over the task's validation batches."""
    device = device or next(learner.parameters()).device
    rule = learner.test_rule()
    scores = []
    for batch in task.validation_batches(signals):
        batch = batch.to(device)
        init = learner.signal_init(task, batch)
        result = fit(task, learner.field, init, batch, steps, **rule.fit_options(task, learner.field))
        scores.append(mean_psnr(result.psnr[:, -1]))
    return sum(scores) / len(scores)


@dataclass
class RunState:
    """What callbacks see and may change: the learner, its optimiser, the step, the best init."""

    learner: Learner
    task: Task
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    run: Path | None
    info: dict | None
    step: int = 0
    best: tuple[float, int] = (-math.inf, 0)
    best_state: dict[str, Tensor] | None = None
    records: list[dict] = field(default_factory=list)
    world: World = World()
    """this process among the run's processes (rank 0 alone writes ``run``; others see it as None)"""
    stop: str | None = None
    """set by a callback (e.g. on a signal) to end training after this step, with a checkpoint"""

    def restore_best(self) -> None:
        """Load the best validated init seen so far (if any) into the learner."""
        if self.best_state is not None:
            self.learner.load_state_dict(self.best_state)

    def reset_best(self) -> None:
        """Forget the best init (e.g. after the architecture's mask changed)."""
        self.best, self.best_state = (-math.inf, 0), None


class Callback:
    """Hooks into the outer loop; subclasses override what they need (both default to nothing)."""

    def on_start(self, state: RunState) -> None:
        """Before the first step of this call (``state.step`` is 0, or the resumed step)."""

    def on_step(self, state: RunState) -> None:
        """After every outer step (after validation, before the checkpoint is written)."""


def meta_train(
    learner: Learner,
    task: Task,
    data: Any,
    config: TrainConfig = TrainConfig(),
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    val: Any = None,
    info: dict | None = None,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = None,
    progress: bool | None = None,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Tensor]:
    """Meta-train ``learner`` on ``task``'s signals ``data``; returns the learned init (name -> tensor).

    ``data`` (and ``val``) are whatever the task's batches are made from (``len`` and indexing by
    an index tensor), e.g. a tensor with one signal per row. Each step draws a meta-batch
    and the task's inner-loop contexts from (seed, step). With ``run_dir`` it writes checkpoints,
    ``config.json`` and ``metrics.jsonl`` there (holding the directory's lock, see
    :class:`RunDirectory`: a directory with a previous run needs ``resume`` or ``overwrite``);
    ``resume=True`` continues from its checkpoint with the same optimiser state and data order,
    ending with the same params as an uninterrupted run. A fresh run writes its step-0 checkpoint
    first, so it is resumable from the start. A non-finite loss or parameter stops training with
    :class:`TrainingDiverged` and leaves the last finite checkpoint in place. A callback setting
    ``state.stop`` ends training after that step, with a checkpoint. ``max_seconds`` ends training early (with a checkpoint) once that much
    time has passed on ``clock``. With validation (``val`` and ``eval_every``) the best init is
    kept and returned. ``device``: auto | cpu | cuda[:i] (default: where the learner is).

    Under torchrun (a process group is up, see :mod:`metainr.train.distributed`) every process
    calls this with the same arguments: each computes the meta-gradient of its shard of every
    meta-batch, the shards' gradients are all-reduced, and rank 0 alone validates, logs, shows
    progress and writes ``run_dir`` (whose checkpoint it shares on resume, so the process count
    may change between runs).
    """
    if len(data) == 0:
        raise MetaINRError("no signals to meta-train on (the dataset is empty)")
    device = resolve_device(device) if device is not None else next(learner.parameters()).device
    learner.to(device)
    world = current_world()
    run = Path(run_dir) if run_dir is not None and world.main else None
    state = RunState(learner, task, torch.optim.Adam(learner.parameters(), lr=config.outer_lr), config, run, info,
                     world=world)
    with RunDirectory(run, resume=resume, overwrite=overwrite) if run else contextlib.nullcontext():
        if run is not None:
            _open_run(state, resume)
        if world.many:
            _share_start(state, device)
        _outer_loop(state, data, val, callbacks, device, progress, max_seconds, clock)
    state.restore_best()
    return {n: p.detach().clone() for n, p in learner.init_params().items()}


def _open_run(state: RunState, resume: bool) -> None:
    """Resume from the run's checkpoint, or start it: config.json and the step-0 checkpoint."""
    learner, task, config, run = state.learner, state.task, state.config, state.run
    assert run is not None
    ckpt = run / "checkpoint.safetensors"
    own(run, "config.json", "metrics.jsonl", ckpt.name, "best.safetensors")
    if resume:
        if not ckpt.is_file():
            raise MetaINRError(f"nothing to resume: no checkpoint in {run}")
        tensors, meta = load_tensors(ckpt)
        _check_same_setup(meta, learner, task, config, ckpt)
        restore(learner, state.optimizer, tensors, str(ckpt))
        state.step = int(meta["step"])
        best = meta.get("best_psnr")
        state.best = (-math.inf if best is None else float(best), int(meta.get("best_step") or 0))
        _truncate_log(run / "metrics.jsonl", state.step)
    atomic_write_json(run / "config.json", {"task": task.spec(), "field": learner.field.config.to_dict(),
                                            "learner": learner.spec(), "train": config.to_dict(), "data": state.info})
    if not resume:
        _save(state, ckpt, state.optimizer)


def _share_start(state: RunState, device: torch.device) -> None:
    """Rank 0's learner, optimiser state, step and best score on every process (a fresh run's
    init too, so no process depends on seeding alike)."""
    world, learner = state.world, state.learner
    tensors = broadcast_tensors(checkpoint_tensors(learner, state.optimizer) if world.main else None, world, device)
    step, best, best_step = broadcast_floats([state.step, state.best[0], state.best[1]], world, device)
    if not world.main:
        restore(learner, state.optimizer, tensors, "shared by rank 0")
        state.step, state.best = int(step), (best, int(best_step))


def _save(state: RunState, path: Path, optimizer: torch.optim.Optimizer | None, **extra: Any) -> None:
    """A checkpoint of the current step; non-finite parameters end training (:class:`TrainingDiverged`)."""
    best = state.best[0] if math.isfinite(state.best[0]) else None
    try:
        save_checkpoint(path, state.learner, optimizer, state.step, state.task, state.config, state.info,
                        {"best_psnr": best, "best_step": state.best[1], **extra})
    except NonFiniteTensors as exc:
        ckpt = path.parent / "checkpoint.safetensors"
        good = f"{ckpt} (step {_ckpt_step(ckpt)})" if ckpt.is_file() else "none written"
        raise TrainingDiverged(f"training diverged by outer step {state.step}: {exc}; last good checkpoint: "
                               f"{good}") from None


def _outer_loop(state: RunState, data: Any, val: Any, callbacks: Sequence[Callback], device: torch.device,
                progress: bool | None, max_seconds: float | None, clock: Callable[[], float]) -> None:
    learner, task, config, optimizer, run = state.learner, state.task, state.config, state.optimizer, state.run
    ckpt = run / "checkpoint.safetensors" if run else None
    world = state.world
    show = (sys.stderr.isatty() if progress is None else progress) and world.main
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=state.step, disable=not show, desc=f"meta-train {learner.name}",
               dynamic_ncols=True)
    t0, evals_without_gain = clock(), 0
    params = list(learner.parameters())
    for callback in callbacks:
        callback.on_start(state)
    try:
        for step in range(state.step, config.steps):
            tic = time.perf_counter()
            idx = batch_indices(len(data), config.batch_size, config.seed, step)
            # every process draws the whole meta-batch's contexts (as one process would), then keeps its shard
            batch = task.train_batch(data[idx], context_generator(config.seed, step))
            stats, grads = _shard_gradient(learner, task, batch, world, device)
            for p, (name, _) in zip(params, learner.named_parameters()):
                p.grad = grads[name]
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip if config.clip > 0 else math.inf))
            loss = float(stats["loss"])
            if not (math.isfinite(loss) and math.isfinite(norm)):
                good = f"{ckpt} (step {_ckpt_step(ckpt)})" if ckpt is not None and ckpt.is_file() else "none written"
                raise TrainingDiverged(f"training diverged at outer step {step + 1}: outer loss {loss}, gradient "
                                       f"norm {norm}; last good checkpoint: {good}")
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = state.step = step + 1
            record = {"step": done, "loss": loss, "grad_norm": norm, "lr": _lr_at(config, step),
                      "seconds": time.perf_counter() - tic}
            if val is not None and config.eval_every and done % config.eval_every == 0:
                score = validate(learner, task, val, config.eval_steps, device) if world.main else math.nan
                score = broadcast_floats([score], world, device)[0]
                record["val_psnr"] = score if math.isfinite(score) else None  # a diverged fit scores null
                if math.isfinite(score) and score > state.best[0]:
                    state.best, evals_without_gain = (score, done), 0
                    state.best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
                    if run is not None:
                        _save(state, run / "best.safetensors", None)
                else:
                    evals_without_gain += 1
                if world.main:
                    log.info("step %d/%d: loss %.3e, validation PSNR %.2f dB (best %.2f at step %d)", done,
                             config.steps, loss, score, state.best[0], state.best[1])
            state.records.append(record)
            if run is not None and (done % config.log_every == 0 or "val_psnr" in record or done == config.steps):
                _append_jsonl(run / "metrics.jsonl", record)
            for callback in callbacks:
                callback.on_step(state)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.2e}", **({"val": f"{record['val_psnr']:.2f}dB"} if record.get("val_psnr")
                                                  is not None else {}))
            out_of_time = max_seconds is not None and clock() - t0 > max_seconds
            if world.many:  # one process's time budget or signal stops them all, at the same step
                out_of_time, stopped = any_process([out_of_time, state.stop is not None], world, device)
                if stopped and state.stop is None:
                    state.stop = "another process stopped"
            patience_over = config.patience and evals_without_gain >= config.patience
            if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps or out_of_time
                                     or patience_over or state.stop):
                _save(state, ckpt, optimizer)
            if out_of_time or patience_over or state.stop:
                log.info("stopping at step %d (%s)", done, state.stop or ("time budget" if out_of_time
                                                                          else "no validation gain"))
                break
    finally:
        bar.close()


def _shard_gradient(learner: Learner, task: Task, batch: Any, world: World,
                    device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(stats, gradient) of the meta-batch: this process's shard of it, all-reduced over processes."""
    if not world.many:
        return learner.meta_gradient(task, batch.to(device))
    part = shard(len(batch), world)
    count = part.stop - part.start
    if count:
        stats, grads = learner.meta_gradient(task, batch.signals(part).to(device))
    else:  # fewer signals than processes: this one adds nothing
        stats, grads = {"loss": torch.zeros((), device=device)}, learner._zero_grads()
    return all_reduce_mean(stats, grads, count, len(batch), world)


def _ckpt_step(path: Path) -> int:
    return int(load_tensors(path)[1]["step"])


def _check_same_setup(meta: dict, learner: Learner, task: Task, config: TrainConfig, path: Path) -> None:
    # through JSON, as the checkpoint stored them (tuples become lists)
    mine_all = json.loads(json.dumps({"task": task.spec(), "field": learner.field.config.to_dict(),
                                      "learner": learner.spec()}))
    for key, mine in mine_all.items():
        theirs = meta.get(key) or {}
        if key == "learner":  # compare the nested configs field by field
            mine = {**mine["config"], **{f"context.{k}": v for k, v in mine["context"].items()}, "name": mine["name"]}
            theirs = {**theirs.get("config", {}), **{f"context.{k}": v for k, v in theirs.get("context", {}).items()},
                      "name": theirs.get("name")}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise CheckpointMismatch(
                f"cannot resume {path}: its {key} has {k}={theirs.get(k)!r} but this run has {k}={mine.get(k)!r}")
    theirs = meta.get("train") or {}
    for k in ("batch_size", "seed", "outer_lr", "schedule", "clip"):
        if theirs.get(k) != getattr(config, k):
            raise CheckpointMismatch(
                f"cannot resume {path}: it was trained with {k}={theirs.get(k)!r}, this run has {getattr(config, k)!r}")


def _append_jsonl(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
    except OSError as exc:
        raise MetaINRError(f"cannot write {path}: {exc.strerror or exc}") from None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (and a torn last line)."""
    if not path.is_file():
        return
    keep = [json.dumps(r) for r in read_metrics(path) if int(r["step"]) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file. Lines that are not a JSON record with a step (a torn
    last line, as a kill mid-write leaves) are skipped with a warning."""
    try:
        size = Path(path).stat().st_size
        if size > METRICS_CAP:
            raise MetaINRError(f"{path} is {size:,} bytes, over the {METRICS_CAP:,} a metrics log may hold: not a "
                               "metainr run's log")
        lines = Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MetaINRError(f"cannot read {path}: {exc.strerror or exc}") from None
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            int(record["step"])
        except (ValueError, KeyError, TypeError, RecursionError):
            skipped += 1
            continue
        records.append(record)
    if skipped:
        log.warning("%s: skipped %d unreadable line(s) (a torn write?)", path, skipped)
    return records
